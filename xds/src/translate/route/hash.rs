//! A route's `hash_policy`: the inputs of a request's hash for consistent-hash balancing.

use http::HeaderName;

use super::Bad;

/// A route's `hash_policy` (istiod's, from a DestinationRule `consistentHash`: header,
/// cookie, source IP or query parameter).
pub(super) fn hash_policy(
    policies: &[envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy],
    at: &str,
) -> Result<Vec<filters::route::model::HashPolicy>, Bad> {
    use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
    use filters::route::model::{HashPolicy, HashSource};
    let mut out = Vec::with_capacity(policies.len());
    for (i, p) in policies.iter().enumerate() {
        let pat = format!("{at}[{i}]");
        let source = match &p.policy_specifier {
            Some(PolicySpecifier::Header(h)) => {
                if h.regex_rewrite.is_some() {
                    return Err((
                        format!("{pat}.header.regex_rewrite"),
                        "not supported".into(),
                    ));
                }
                HashSource::Header(HeaderName::from_bytes(h.header_name.as_bytes()).map_err(
                    |_| {
                        (
                            format!("{pat}.header.header_name"),
                            format!("bad header name {:?}", h.header_name),
                        )
                    },
                )?)
            }
            Some(PolicySpecifier::Cookie(c)) => {
                let mut attributes = Vec::with_capacity(c.attributes.len());
                for (j, a) in c.attributes.iter().enumerate() {
                    let at = format!("{pat}.cookie.attributes[{j}]");
                    if let Err(reason) =
                        filters::route::model::check_cookie_attribute(&a.name, &a.value)
                    {
                        return Err((at, reason.into()));
                    }
                    attributes.push((a.name.clone(), a.value.clone()));
                }
                HashSource::Cookie {
                    name: c.name.clone(),
                    ttl: crate::translate::duration(c.ttl.as_ref()),
                    path: (!c.path.is_empty()).then(|| c.path.clone()),
                    attributes,
                }
            }
            Some(PolicySpecifier::ConnectionProperties(c)) if c.source_ip => HashSource::SourceIp,
            Some(PolicySpecifier::QueryParameter(q)) => HashSource::QueryParameter(q.name.clone()),
            _ => {
                return Err((
                    pat,
                    "only header, cookie, source IP and query parameter hashing are supported"
                        .into(),
                ))
            }
        };
        out.push(HashPolicy {
            source,
            terminal: p.terminal,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::{
        Cookie, CookieAttribute, PolicySpecifier,
    };
    use envoy_types::pb::envoy::config::route::v3::route_action::HashPolicy;
    use filters::route::model::HashSource;

    fn cookie(attributes: &[(&str, &str)]) -> Vec<HashPolicy> {
        // ConsistentHashToHashPolicy (route/route.go): name, ttl, path, attributes.
        vec![HashPolicy {
            policy_specifier: Some(PolicySpecifier::Cookie(Cookie {
                name: "sticky".into(),
                ttl: Some(envoy_types::pb::google::protobuf::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                path: String::new(),
                attributes: attributes
                    .iter()
                    .map(|(n, v)| CookieAttribute {
                        name: n.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
            })),
            terminal: false,
        }]
    }

    #[test]
    fn cookie_attributes_are_kept_or_refused_by_field() {
        let got =
            super::hash_policy(&cookie(&[("SameSite", "Strict"), ("Secure", "")]), "hp").unwrap();
        match &got[0].source {
            HashSource::Cookie {
                attributes, path, ..
            } => {
                assert_eq!(
                    attributes,
                    &[
                        ("SameSite".to_string(), "Strict".to_string()),
                        ("Secure".to_string(), String::new())
                    ]
                );
                assert_eq!(path, &None, "an empty path is none");
            }
            other => panic!("{other:?}"),
        }
        let (field, _) = super::hash_policy(&cookie(&[("", "x")]), "hp").unwrap_err();
        assert_eq!(field, "hp[0].cookie.attributes[0]");
        let (field, _) =
            super::hash_policy(&cookie(&[("Secure", ""), ("a", "b\r\nc")]), "hp").unwrap_err();
        assert_eq!(field, "hp[0].cookie.attributes[1]");
    }
}
