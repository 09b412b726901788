//! The `envoy.filters.http.jwt_authn` filter istiod generates from RequestAuthentication
//! into the same JWT rules the local configuration produces: one rule per provider, and
//! Istio's requirement shape (any provider, or no token at all: a present but invalid token
//! is 401, a missing one passes to authorization).

use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    jwt_provider::JwksSourceSpecifier, jwt_requirement::RequiresType,
    requirement_rule::RequirementType, JwtAuthentication, JwtRequirement,
};
use filters::authn::{JwksKeys, JwtRule, Location};
use http::HeaderName;

use super::Bad;

fn header(name: &str, at: &str) -> Result<HeaderName, Bad> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| (at.to_string(), format!("bad header name {name:?}")))
}

/// Whether a requirement is Istio's: providers (any of), optionally allowing a missing token.
fn istio_shaped(r: &JwtRequirement) -> bool {
    match &r.requires_type {
        Some(RequiresType::ProviderName(_))
        | Some(RequiresType::AllowMissing(_))
        | Some(RequiresType::AllowMissingOrFailed(_)) => true,
        Some(RequiresType::RequiresAny(any)) => any.requirements.iter().all(istio_shaped),
        _ => false,
    }
}

/// The providers as JWT rules.
pub fn convert(j: &JwtAuthentication, at: &str) -> Result<Vec<Arc<JwtRule>>, Bad> {
    for (i, rule) in j.rules.iter().enumerate() {
        let ok = match &rule.requirement_type {
            Some(RequirementType::Requires(r)) => istio_shaped(r),
            None => true,
            Some(RequirementType::RequirementName(_)) => false,
        };
        if !ok {
            return Err((
                format!("{at}.rules[{i}]"),
                "only Istio's requirement shape (any provider, allow missing) is supported".into(),
            ));
        }
    }
    if !j.requirement_map.is_empty() || j.filter_state_rules.is_some() {
        return Err((
            at.to_string(),
            "requirement_map and filter_state_rules are not supported".into(),
        ));
    }
    let mut names: Vec<&String> = j.providers.keys().collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let p = &j.providers[name];
        let pat = format!("{at}.providers[{name}]");
        let keys =
            match &p.jwks_source_specifier {
                Some(JwksSourceSpecifier::LocalJwks(ds)) => {
                    let text = match &ds.specifier {
                        Some(Specifier::InlineString(s)) => s.clone(),
                        Some(Specifier::InlineBytes(b)) => String::from_utf8_lossy(b).into_owned(),
                        _ => {
                            return Err((
                                format!("{pat}.local_jwks"),
                                "inline JWKS is required".into(),
                            ))
                        }
                    };
                    JwksKeys::Inline(Arc::new(serde_json::from_str(&text).map_err(|e| {
                        (format!("{pat}.local_jwks"), format!("not a JWKS: {e}"))
                    })?))
                }
                _ => return Err((
                    format!("{pat}.remote_jwks"),
                    "remote JWKS over xDS is not supported (istiod inlines the keys by default)"
                        .into(),
                )),
            };
        let mut locations = Vec::new();
        for (i, h) in p.from_headers.iter().enumerate() {
            locations.push(Location::Header(
                header(&h.name, &format!("{pat}.from_headers[{i}]"))?,
                h.value_prefix.clone(),
            ));
        }
        locations.extend(p.from_params.iter().cloned().map(Location::Param));
        locations.extend(p.from_cookies.iter().cloned().map(Location::Cookie));
        if locations.is_empty() {
            locations = JwtRule::default_locations();
        }
        let claim_headers = p
            .claim_to_headers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Ok((
                    header(&c.header_name, &format!("{pat}.claim_to_headers[{i}]"))?,
                    c.claim_name.clone(),
                ))
            })
            .collect::<Result<Vec<_>, Bad>>()?;
        out.push(Arc::new(JwtRule {
            issuer: p.issuer.clone(),
            audiences: p.audiences.clone(),
            keys,
            locations,
            payload_header: (!p.forward_payload_header.is_empty())
                .then(|| {
                    header(
                        &p.forward_payload_header,
                        &format!("{pat}.forward_payload_header"),
                    )
                })
                .transpose()?,
            claim_headers,
            forward_original_token: p.forward,
        }));
    }
    Ok(out)
}
