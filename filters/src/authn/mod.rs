//! Request authentication: Istio RequestAuthentication `jwtRules`.
//!
//! A request without a token passes unauthenticated (policies decide); a token that is
//! present but does not verify (unknown issuer, bad signature, expired, wrong audience)
//! gets 401. A verified token becomes [`JwtAuth`] (`requestPrincipals` = `iss/sub`, claims
//! for `request.auth.claims[...]`), can be copied into headers, and is removed from the
//! request unless `forwardOriginalToken` is set.

pub mod jwks;
mod layer;

pub use jwks::{JwksKeys, JwksRegistry, RemoteJwks};
pub use layer::{AuthnLayer, AuthnService};

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use http::{HeaderName, HeaderValue, Request};
use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};
use serde::Serialize;

use crate::authz::JwtAuth;
use crate::explain::{Stage, Step, Trace};

/// Where a token may be found.
#[derive(Debug, Clone, Serialize)]
pub enum Location {
    /// A header, with a value prefix to strip (`Bearer `).
    Header(#[serde(serialize_with = "ser_name")] HeaderName, String),
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

fn ser_name<S: serde::Serializer>(n: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(n.as_str())
}

/// One `jwtRules` entry.
#[derive(Debug, Serialize)]
pub struct JwtRule {
    /// `issuer`.
    pub issuer: String,
    /// `audiences` (any must match when set).
    pub audiences: Vec<String>,
    /// The issuer's keys (`jwks` inline, or fetched from `jwksUri`).
    pub keys: JwksKeys,
    /// `fromHeaders`, `fromParams`, `fromCookies` (default: `Authorization: Bearer`, and
    /// the `access_token` parameter).
    pub locations: Vec<Location>,
    /// `outputPayloadToHeader`.
    #[serde(serialize_with = "ser_opt_name")]
    pub payload_header: Option<HeaderName>,
    /// `outputClaimToHeaders`: header, claim.
    #[serde(skip)]
    pub claim_headers: Vec<(HeaderName, String)>,
    /// `forwardOriginalToken`.
    pub forward_original_token: bool,
}

fn ser_opt_name<S: serde::Serializer>(n: &Option<HeaderName>, s: S) -> Result<S::Ok, S::Error> {
    match n {
        Some(n) => s.serialize_some(n.as_str()),
        None => s.serialize_none(),
    }
}

impl JwtRule {
    /// Istio's default token locations.
    pub fn default_locations() -> Vec<Location> {
        vec![
            Location::Header(http::header::AUTHORIZATION, "Bearer ".into()),
            Location::Param("access_token".into()),
        ]
    }
}

/// The RequestAuthentication rules bound to this waypoint.
#[derive(Debug, Default, Serialize)]
pub struct JwtRules {
    /// Bound to the waypoint (or its GatewayClass).
    pub gateway: Vec<Arc<JwtRule>>,
    /// Bound to a Service (`namespace/name`).
    pub services: BTreeMap<String, Vec<Arc<JwtRule>>>,
}

impl JwtRules {
    /// The rules for traffic to `service`, or to a pod (`None`).
    pub fn for_service(
        &self,
        service: Option<&crate::model::NamespacedName>,
    ) -> std::borrow::Cow<'_, [Arc<JwtRule>]> {
        crate::model::with_service_key(service, |key| self.for_target(key))
    }

    /// The rules for traffic to `service` (`namespace/name`).
    pub fn for_target(&self, service: Option<&str>) -> std::borrow::Cow<'_, [Arc<JwtRule>]> {
        crate::model::bound(&self.gateway, service.and_then(|s| self.services.get(s)))
    }
}

/// Why a present token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// No rule has the token's issuer.
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    /// The token is malformed, badly signed, expired or for another audience.
    #[error("Jwt verification fails: {0}")]
    Invalid(String),
}

/// Where the token was found, so it can be removed.
enum Found {
    Header(HeaderName),
    /// Query parameters and cookies are left in place (as Envoy does).
    Elsewhere,
}

fn find_token<B>(req: &Request<B>, locations: &[Location]) -> Option<(String, Found)> {
    for loc in locations {
        match loc {
            Location::Header(name, prefix) => {
                if let Some(v) = req.headers().get(name).and_then(|v| v.to_str().ok()) {
                    if let Some(t) = v.strip_prefix(prefix.as_str()) {
                        return Some((t.trim().to_string(), Found::Header(name.clone())));
                    }
                }
            }
            Location::Param(p) => {
                if let Some(v) = crate::route::table::query_param(req.uri().query(), p) {
                    return Some((v.into_owned(), Found::Elsewhere));
                }
            }
            Location::Cookie(c) => {
                let cookies = req.headers().get_all(http::header::COOKIE);
                for v in cookies.iter().filter_map(|v| v.to_str().ok()) {
                    for pair in v.split(';') {
                        if let Some((k, val)) = pair.trim().split_once('=') {
                            if k == c {
                                return Some((val.to_string(), Found::Elsewhere));
                            }
                        }
                    }
                }
            }
        }
    }
    None
}

fn verify(token: &str, rule: &JwtRule) -> Result<serde_json::Value, JwtError> {
    let invalid = |e: &dyn std::fmt::Display| JwtError::Invalid(e.to_string());
    let header = decode_header(token).map_err(|e| invalid(&e))?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[rule.issuer.as_str()]);
    validation.leeway = 60;
    validation.required_spec_claims.clear();
    if rule.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&rule.audiences);
    }
    let keys = rule.keys.current().map_err(JwtError::Invalid)?;
    let candidates = keys
        .keys
        .iter()
        .filter(|k| header.kid.is_none() || k.common.key_id == header.kid);
    let mut last = JwtError::Invalid("no matching key".into());
    for jwk in candidates {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        match decode::<serde_json::Value>(token, &key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(e) => last = invalid(&e),
        }
    }
    Err(last)
}

fn issuer_of(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_string)
}

/// Authenticates `req` against `rules`: `Ok(None)` when no token is present, the
/// verified identity otherwise. Applies the rule's header outputs and token removal.
pub fn authenticate<B>(
    rules: &[Arc<JwtRule>],
    req: &mut Request<B>,
) -> Result<Option<JwtAuth>, JwtError> {
    authenticate_traced(rules, req, Trace::OFF)
}

/// [`authenticate`], recording which rule verified the token (and its claims) or why it
/// was refused into `trace`.
pub fn authenticate_traced<B>(
    rules: &[Arc<JwtRule>],
    req: &mut Request<B>,
    trace: Trace<'_>,
) -> Result<Option<JwtAuth>, JwtError> {
    // The detail is built only when the trace records it.
    let step = |outcome: &str, detail: &dyn Fn() -> String| {
        trace.step(|| Step::new(Stage::Authentication, "JWT", outcome).detail(detail()))
    };
    if rules.is_empty() {
        step("skipped", &|| {
            "no RequestAuthentication applies to the waypoint or this Service".into()
        });
        return Ok(None);
    }
    let result = authenticate_with(rules, req);
    match &result {
        Ok(None) => step("no token", &|| {
            format!(
                "no token in the locations of {} jwtRules (issuers {:?}): the request goes on unauthenticated",
                rules.len(),
                rules.iter().map(|r| r.issuer.as_str()).collect::<Vec<_>>()
            )
        }),
        Ok(Some(auth)) => step("verified", &|| {
            format!(
                "jwtRule issuer {:?}; requestPrincipal {:?}; claims {}",
                auth.claims
                    .get("iss")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default(),
                auth.principal,
                auth.claims
            )
        }),
        Err(e) => step("rejected", &|| format!("{e}: 401")),
    }
    result
}

fn authenticate_with<B>(
    rules: &[Arc<JwtRule>],
    req: &mut Request<B>,
) -> Result<Option<JwtAuth>, JwtError> {
    let mut found = None;
    for rule in rules {
        // Istio's defaults (built once) when the rule names no locations.
        static DEFAULT: std::sync::OnceLock<Vec<Location>> = std::sync::OnceLock::new();
        let locations = if rule.locations.is_empty() {
            DEFAULT.get_or_init(JwtRule::default_locations)
        } else {
            &rule.locations
        };
        if let Some(t) = find_token(req, locations) {
            found = Some(t);
            break;
        }
    }
    let Some((token, place)) = found else {
        return Ok(None);
    };
    let iss = issuer_of(&token).ok_or_else(|| JwtError::Invalid("malformed token".into()))?;
    let rule = rules
        .iter()
        .find(|r| r.issuer == iss)
        .ok_or(JwtError::UnknownIssuer)?;
    let claims = verify(&token, rule)?;
    let sub = claims
        .get("sub")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let audiences = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => vec![a.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    if let Some(h) = &rule.payload_header {
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
        if let Ok(v) = HeaderValue::from_str(&encoded) {
            req.headers_mut().insert(h.clone(), v);
        }
    }
    for (h, claim) in &rule.claim_headers {
        let value = match claims.get(claim) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            Some(serde_json::Value::Bool(b)) => Some(b.to_string()),
            _ => None,
        };
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            req.headers_mut().insert(h.clone(), v);
        }
    }
    if !rule.forward_original_token {
        match place {
            Found::Header(name) => {
                req.headers_mut().remove(name);
            }
            Found::Elsewhere => {}
        }
    }
    Ok(Some(JwtAuth {
        principal: format!("{iss}/{sub}"),
        audiences,
        presenter: claims
            .get("azp")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        claims,
    }))
}
