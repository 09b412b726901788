//! RequestAuthentication (`security.istio.io/v1`): `jwtRules` bound through `targetRefs`,
//! as AuthorizationPolicy is. `jwks` is inline JSON (it wins when both are set, as in
//! Istio); `jwksUri` (http or https) is registered in the [`JwksRegistry`] the binary
//! fetches and refreshes.

use std::collections::BTreeMap;
use std::sync::Arc;

use filters::authn::{JwksKeys, JwksRegistry, JwtRule, JwtRules, Location};
use filters::model::NamespacedName;
use http::HeaderName;
use serde::Deserialize;

use super::authz::{binding, Binding, TargetRef};
use super::objects::ObjectMeta;
use super::LocalConfigError;

#[derive(Debug, Deserialize)]
pub struct RequestAuthentication {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Spec,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    #[serde(default)]
    pub selector: Option<serde_yaml::Value>,
    #[serde(default)]
    pub target_ref: Option<TargetRef>,
    #[serde(default)]
    pub target_refs: Vec<TargetRef>,
    #[serde(default)]
    pub jwt_rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default)]
    pub jwks: Option<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub from_headers: Vec<HeaderSpec>,
    #[serde(default)]
    pub from_params: Vec<String>,
    #[serde(default)]
    pub from_cookies: Vec<String>,
    #[serde(default)]
    pub output_payload_to_header: Option<String>,
    #[serde(default)]
    pub output_claim_to_headers: Vec<ClaimHeader>,
    #[serde(default)]
    pub forward_original_token: bool,
    /// The JWKS fetch timeout: refused by name (the fetch has its own bound).
    #[serde(default)]
    pub timeout: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSpec {
    pub name: String,
    #[serde(default)]
    pub prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimHeader {
    pub header: String,
    pub claim: String,
}

fn header(name: &str, field: &str) -> Result<HeaderName, (String, String)> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| (field.to_string(), format!("invalid header name {name:?}")))
}

fn jwks_uri(uri: &str, at: &str) -> Result<(), (String, String)> {
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e| (format!("{at}.jwksUri"), format!("invalid URI {uri:?}: {e}")))?;
    match (parsed.scheme_str(), parsed.host()) {
        (Some("http" | "https"), Some(h)) if !h.is_empty() => Ok(()),
        _ => Err((
            format!("{at}.jwksUri"),
            format!("{uri:?} must be an http:// or https:// URL with a host"),
        )),
    }
}

fn rule(r: &RuleSpec, at: &str, registry: &JwksRegistry) -> Result<JwtRule, (String, String)> {
    if r.timeout.is_some() {
        return Err((
            format!("{at}.timeout"),
            "not supported: jwksUri fetches have their own bound".into(),
        ));
    }
    let keys = match (&r.jwks, &r.jwks_uri) {
        (Some(j), _) => JwksKeys::Inline(std::sync::Arc::new(
            serde_json::from_str(j)
                .map_err(|e| (format!("{at}.jwks"), format!("not a JWKS: {e}")))?,
        )),
        (None, Some(uri)) => {
            jwks_uri(uri, at)?;
            JwksKeys::Remote(registry.get(uri))
        }
        (None, None) => return Err((format!("{at}.jwks"), "jwks or jwksUri is required".into())),
    };
    let mut locations = Vec::new();
    for (i, h) in r.from_headers.iter().enumerate() {
        locations.push(Location::Header(
            header(&h.name, &format!("{at}.fromHeaders[{i}].name"))?,
            h.prefix.clone().unwrap_or_default(),
        ));
    }
    locations.extend(r.from_params.iter().cloned().map(Location::Param));
    locations.extend(r.from_cookies.iter().cloned().map(Location::Cookie));
    Ok(JwtRule {
        issuer: r.issuer.clone(),
        audiences: r.audiences.clone(),
        keys,
        locations,
        payload_header: r
            .output_payload_to_header
            .as_deref()
            .map(|h| header(h, &format!("{at}.outputPayloadToHeader")))
            .transpose()?,
        claim_headers: r
            .output_claim_to_headers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Ok((
                    header(&c.header, &format!("{at}.outputClaimToHeaders[{i}].header"))?,
                    c.claim.clone(),
                ))
            })
            .collect::<Result<_, (String, String)>>()?,
        forward_original_token: r.forward_original_token,
    })
}

/// Binds the RequestAuthentications that apply to the waypoint `gateway`; `entries` maps
/// each ServiceEntry (`namespace/name`) to the key of the Service it became.
pub fn bind(
    items: &[(String, RequestAuthentication)],
    gateway: &NamespacedName,
    root_namespace: &str,
    registry: &JwksRegistry,
    entries: &BTreeMap<String, Vec<String>>,
) -> Result<JwtRules, LocalConfigError> {
    let mut out = JwtRules::default();
    let mut services: BTreeMap<String, Vec<Arc<JwtRule>>> = BTreeMap::new();
    for (label, ra) in items {
        let ns = ra.metadata.namespace.as_deref().unwrap_or("default");
        let rules: Vec<Arc<JwtRule>> = ra
            .spec
            .jwt_rules
            .iter()
            .enumerate()
            .map(|(i, r)| rule(r, &format!("spec.jwtRules[{i}]"), registry).map(Arc::new))
            .collect::<Result<_, _>>()
            .map_err(|(field, message)| LocalConfigError::Invalid {
                object: label.clone(),
                field,
                message,
            })?;
        let refs: Vec<&TargetRef> = ra
            .spec
            .target_ref
            .iter()
            .chain(&ra.spec.target_refs)
            .collect();
        if refs.is_empty() {
            tracing::info!(policy = %label, "RequestAuthentication without targetRefs applies to sidecars/ztunnel, not this waypoint");
            continue;
        }
        for r in refs {
            match binding(r, ns, gateway, root_namespace) {
                Binding::Waypoint => out.gateway.extend(rules.iter().cloned()),
                Binding::Service(key) => services
                    .entry(key)
                    .or_default()
                    .extend(rules.iter().cloned()),
                Binding::ServiceEntry(entry) => {
                    for key in entries.get(&entry).into_iter().flatten() {
                        services
                            .entry(key.clone())
                            .or_default()
                            .extend(rules.iter().cloned());
                    }
                }
                Binding::Elsewhere => {}
            }
        }
    }
    out.services = services;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(jwks_uri: &str) -> RuleSpec {
        RuleSpec {
            issuer: "https://issuer.example".into(),
            jwks_uri: Some(jwks_uri.into()),
            ..Default::default()
        }
    }

    #[test]
    fn jwks_uri_is_registered_once_per_uri() {
        let registry = JwksRegistry::default();
        let a = rule(&spec("https://issuer.example/keys"), "r", &registry).unwrap();
        let b = rule(&spec("https://issuer.example/keys"), "r", &registry).unwrap();
        let (JwksKeys::Remote(a), JwksKeys::Remote(b)) = (&a.keys, &b.keys) else {
            panic!("remote keys")
        };
        assert!(Arc::ptr_eq(a, b));
        assert_eq!(registry.active().len(), 1);
    }

    #[test]
    fn jwks_uri_must_be_http_or_https() {
        let registry = JwksRegistry::default();
        let (field, message) = rule(
            &spec("ftp://issuer.example/keys"),
            "spec.jwtRules[0]",
            &registry,
        )
        .err()
        .unwrap();
        assert_eq!(field, "spec.jwtRules[0].jwksUri");
        assert!(message.contains("http:// or https://"), "{message}");
        assert!(registry.active().is_empty());
    }
}
