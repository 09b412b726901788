//! Which provider, if any, a request must be checked by, following istiod's rules:
//!
//! - only enforced CUSTOM policies count (dry-run is not supported for CUSTOM);
//! - every CUSTOM policy of one target must name the same provider, and that provider
//!   must be a usable ext_authz provider; otherwise every request to the target is denied
//!   (istiod's "deny all config" for a CUSTOM action it cannot build);
//! - the server is asked only when a CUSTOM policy's rules match the request; on TCP a
//!   rule's HTTP-only fields are ignored (istiod builds CUSTOM rules like DENY ones);
//! - on TCP only a gRPC provider applies (an HTTP provider is ignored there).

use std::sync::Arc;

use super::provider::{Provider, ProviderEntry, ProviderKind, Providers};
use crate::authz::attributes::Attributes;
use crate::authz::engine::policy_matches;
use crate::authz::model::{Action, Policy};

/// What the CUSTOM policies ask for this request.
#[derive(Debug, Clone)]
pub enum CustomPlan {
    /// No CUSTOM policy applies, or none matches: go on with DENY and ALLOW.
    Skip,
    /// Ask `provider`; `policies` are the matching CUSTOM policies (for logs).
    Check {
        /// The provider to ask.
        provider: Arc<Provider>,
        /// `namespace/name` of the matching CUSTOM policies.
        policies: Vec<String>,
    },
    /// The CUSTOM configuration is unusable: deny every request (the reason names the
    /// policy and the provider).
    DenyAll(String),
}

/// The provider the enforced CUSTOM policies among `policies` use: `Ok(None)` when there
/// are none, `Err` (naming the policy and provider) when the configuration is unusable.
pub fn custom_provider(
    policies: &[Arc<Policy>],
    providers: &Providers,
) -> Result<Option<Arc<Provider>>, String> {
    let custom: Vec<(&Arc<Policy>, &str)> = policies
        .iter()
        .filter(|p| !p.dry_run)
        .filter_map(|p| match &p.action {
            Action::Custom(name) => Some((p, name.as_str())),
            _ => None,
        })
        .collect();
    let Some((first, name)) = custom.first() else {
        return Ok(None);
    };
    if let Some((other, other_name)) = custom.iter().find(|(_, n)| n != name) {
        return Err(format!(
            "only one ext_authz provider can be used per destination: {} uses {name:?}, {} uses {other_name:?}",
            first.name, other.name
        ));
    }
    match providers.get(*name) {
        Some(ProviderEntry::Ready(p)) => Ok(Some(p.clone())),
        Some(ProviderEntry::Invalid(why)) => Err(format!(
            "CUSTOM policy {} names provider {name:?}, which is unusable: {why}",
            first.name
        )),
        None => {
            let known: Vec<&String> = providers.keys().collect();
            Err(format!(
                "CUSTOM policy {} names provider {name:?}, but the extension providers are {known:?}",
                first.name
            ))
        }
    }
}

/// Plans the CUSTOM step for `policies` (all policies of the request's target).
pub fn custom_plan(
    policies: &[Arc<Policy>],
    providers: &Providers,
    attrs: &Attributes<'_>,
) -> CustomPlan {
    let provider = match custom_provider(policies, providers) {
        Ok(Some(p)) => p,
        Ok(None) => return CustomPlan::Skip,
        Err(why) => return CustomPlan::DenyAll(why),
    };
    if attrs.http.is_none() && matches!(provider.kind, ProviderKind::Http(_)) {
        return CustomPlan::Skip;
    }
    let matching: Vec<String> = policies
        .iter()
        .filter(|p| !p.dry_run && matches!(p.action, Action::Custom(_)))
        .filter(|p| policy_matches(p, attrs))
        .map(|p| p.name.to_string())
        .collect();
    if matching.is_empty() {
        CustomPlan::Skip
    } else {
        CustomPlan::Check {
            provider,
            policies: matching,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    use http::StatusCode;

    use super::*;
    use crate::authz::matcher::PathPattern;
    use crate::authz::model::{Field, Operation, Rule};
    use crate::authz::HttpAttributes;
    use crate::model::NamespacedName;

    fn custom(name: &str, provider: &str, path: Option<&str>) -> Arc<Policy> {
        let rule = match path {
            Some(p) => Rule {
                to: vec![Operation {
                    paths: Field {
                        values: vec![PathPattern::parse(p).unwrap()],
                        not_values: vec![],
                    },
                    ..Default::default()
                }],
                ..Default::default()
            },
            None => Rule::default(),
        };
        Arc::new(Policy {
            name: NamespacedName::new("default", name),
            action: Action::Custom(provider.into()),
            dry_run: false,
            rules: vec![rule],
            matched: AtomicU64::new(0),
        })
    }

    fn provider(name: &str, kind: ProviderKind) -> (String, ProviderEntry) {
        (
            name.into(),
            ProviderEntry::Ready(Arc::new(Provider {
                name: name.into(),
                service: "ext-authz.default.svc.cluster.local".into(),
                port: 9000,
                timeout: Duration::from_secs(1),
                fail_open: false,
                status_on_error: StatusCode::FORBIDDEN,
                body: None,
                kind,
                cluster: None,
            })),
        )
    }

    fn http_attrs<'a>(path: &'a str, headers: &'a http::HeaderMap) -> Attributes<'a> {
        Attributes {
            http: Some(HttpAttributes {
                path_and_query: None,
                method: "GET",
                host: "echo",
                path,
                query: None,
                headers,
                auth: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn checks_only_matching_requests() {
        let providers: Providers = [provider("grpc", ProviderKind::Grpc)].into();
        let policies = vec![custom("ext", "grpc", Some("/secure*"))];
        let h = http::HeaderMap::new();
        assert!(matches!(
            custom_plan(&policies, &providers, &http_attrs("/secure/x", &h)),
            CustomPlan::Check { .. }
        ));
        assert!(matches!(
            custom_plan(&policies, &providers, &http_attrs("/public", &h)),
            CustomPlan::Skip
        ));
    }

    #[test]
    fn unusable_configurations_deny_everything() {
        let providers: Providers = [
            provider("grpc", ProviderKind::Grpc),
            ("broken".into(), ProviderEntry::Invalid("bad port".into())),
        ]
        .into();
        let h = http::HeaderMap::new();
        let a = http_attrs("/public", &h);
        let plan = custom_plan(&[custom("x", "nope", Some("/secure"))], &providers, &a);
        let CustomPlan::DenyAll(why) = plan else {
            panic!("unknown provider")
        };
        assert!(
            why.contains("default/x") && why.contains("\"nope\""),
            "{why}"
        );
        let plan = custom_plan(&[custom("y", "broken", None)], &providers, &a);
        assert!(matches!(plan, CustomPlan::DenyAll(w) if w.contains("bad port")));
        let two = vec![custom("a", "grpc", None), custom("b", "other", None)];
        assert!(matches!(
            custom_plan(&two, &providers, &a),
            CustomPlan::DenyAll(_)
        ));
    }

    #[test]
    fn http_providers_do_not_apply_to_tcp() {
        let providers: Providers = [
            provider("http", ProviderKind::Http(Default::default())),
            provider("grpc", ProviderKind::Grpc),
        ]
        .into();
        let tcp = Attributes::default();
        assert!(matches!(
            custom_plan(&[custom("h", "http", None)], &providers, &tcp),
            CustomPlan::Skip
        ));
        assert!(matches!(
            custom_plan(&[custom("g", "grpc", None)], &providers, &tcp),
            CustomPlan::Check { .. }
        ));
    }

    #[test]
    fn tcp_ignores_http_fields_of_custom_rules() {
        // istiod's tcp/custom-both-http-tcp-out1.yaml: a CUSTOM rule with only an HTTP field
        // becomes `any: true` in the network RBAC shadow rules: every connection is checked.
        let providers: Providers = [provider("grpc", ProviderKind::Grpc)].into();
        let tcp = Attributes::default();
        assert!(matches!(
            custom_plan(&[custom("g", "grpc", Some("/secure"))], &providers, &tcp),
            CustomPlan::Check { .. }
        ));
    }
}
