//! The xDS chain as Envoy runs it: shadow RBAC results gate ext_authz filters, the
//! provider's answer and failures apply, and later filters see what it changed.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode};

use super::*;
use crate::authz::attributes::{Attributes, HttpAttributes};
use crate::authz::decide::CustomOutcome;
use crate::authz::ext::{CheckError, ProviderKind};
use crate::rbac::model::{
    Action, AnyTrue, HeaderMatch, HeaderMatcher, PathMatcher, PathSegment, Permission, Policy,
    Principal, Rbac, ValueMatcher,
};
use crate::rbac::string_match::{StringMatch, StringMatcher};

/// What the mock provider answers.
#[derive(Clone, Copy)]
enum Answer {
    Allow,
    Deny,
    Fail,
}

struct Mock {
    path: &'static str,
    headers: HeaderMap,
    answer: Answer,
    asked: Vec<(String, Vec<String>)>,
}

impl Mock {
    fn new(path: &'static str, answer: Answer) -> Self {
        Self {
            path,
            headers: HeaderMap::new(),
            answer,
            asked: Vec::new(),
        }
    }
}

impl Subject for Mock {
    type Reply = u16;

    fn attributes(&self) -> Attributes<'_> {
        Attributes {
            http: Some(HttpAttributes {
                path_and_query: None,
                method: "GET",
                host: "echo",
                path: self.path,
                query: None,
                headers: &self.headers,
                auth: None,
            }),
            ..Default::default()
        }
    }

    async fn check_custom(
        &mut self,
        provider: &Provider,
        policies: &[String],
    ) -> Result<CustomOutcome<u16>, CheckError> {
        self.asked.push((provider.name.clone(), policies.to_vec()));
        match self.answer {
            Answer::Allow => {
                self.headers
                    .insert("x-authz", HeaderValue::from_static("ok"));
                Ok(CustomOutcome::Allowed)
            }
            Answer::Deny => Ok(CustomOutcome::Denied(401)),
            Answer::Fail => Err(CheckError::Failed {
                provider: provider.name.clone(),
                reason: "boom".into(),
            }),
        }
    }

    fn check_failed(&self, provider: &Provider, _error: CheckError) -> u16 {
        provider.status_on_error.as_u16()
    }
}

fn prefix(p: &str) -> StringMatcher {
    StringMatcher::new(StringMatch::Prefix(p.into()), false)
}

/// istiod's CUSTOM RBAC filter: shadow DENY rules named `istio-ext-authz-<provider>-...`
/// on a path prefix, stat prefix `istio_ext_authz_`.
fn custom_rbac(provider: &str, path: &str) -> AuthzFilter {
    let policy = Policy {
        permissions: vec![Permission::UrlPath(PathMatcher { path: prefix(path) })],
        principals: vec![Principal::Any(AnyTrue)],
    };
    let name = format!("istio-ext-authz-{provider}-ns[foo]-policy[p]-rule[0]");
    AuthzFilter::Rbac(RbacConfig {
        kind: FilterKind::Http,
        rules: None,
        shadow_rules: Some(Rbac {
            action: Action::Deny,
            policies: BTreeMap::from([(name, policy)]),
        }),
        shadow_rules_stat_prefix: "istio_ext_authz_".into(),
        rules_stat_prefix: String::new(),
        stat_prefix: String::new(),
        track_per_rule_stats: false,
        enforcement_type: None,
    })
}

/// istiod's ext_authz filter for `provider`, gated on the CUSTOM filter's shadow result.
fn ext_authz(provider: &str, fail_open: bool) -> AuthzFilter {
    AuthzFilter::ExtAuthz(ExtAuthzFilter {
        provider: Arc::new(Provider {
            name: provider.into(),
            service: "ext-authz.foo.svc.cluster.local".into(),
            port: 9000,
            timeout: Duration::from_secs(1),
            fail_open,
            status_on_error: StatusCode::SERVICE_UNAVAILABLE,
            body: None,
            kind: ProviderKind::Grpc,
            cluster: Some("outbound|9000||ext-authz.foo.svc.cluster.local".into()),
        }),
        enabled_metadata: Some(MetadataMatcher {
            filter: HTTP_RBAC_NAMESPACE.into(),
            path: vec![PathSegment {
                key: "istio_ext_authz_shadow_effective_policy_id".into(),
            }],
            value: ValueMatcher::StringMatch(prefix(&format!("istio-ext-authz-{provider}"))),
            invert: false,
        }),
    })
}

/// An enforcing ALLOW filter that needs the header the provider sets.
fn allow_if_authorized() -> AuthzFilter {
    let policy = Policy {
        permissions: vec![Permission::Header(
            HeaderMatcher::new("x-authz", HeaderMatch::Exact("ok".into()), false, false).unwrap(),
        )],
        principals: vec![Principal::Any(AnyTrue)],
    };
    AuthzFilter::Rbac(RbacConfig {
        kind: FilterKind::Http,
        rules: Some(Rbac {
            action: Action::Allow,
            policies: BTreeMap::from([("ns[foo]-policy[allow]-rule[0]".to_string(), policy)]),
        }),
        shadow_rules: None,
        shadow_rules_stat_prefix: String::new(),
        rules_stat_prefix: String::new(),
        stat_prefix: String::new(),
        track_per_rule_stats: false,
        enforcement_type: None,
    })
}

async fn run(chain: &[AuthzFilter], subject: &mut Mock) -> Result<(), Denied<u16>> {
    enforce(chain, subject, crate::explain::Trace::OFF).await
}

#[tokio::test]
async fn ext_authz_runs_only_when_the_custom_shadow_rules_matched() {
    let chain = [custom_rbac("grpc", "/secure"), ext_authz("grpc", false)];
    let mut public = Mock::new("/public", Answer::Deny);
    assert!(run(&chain, &mut public).await.is_ok());
    assert!(public.asked.is_empty(), "not asked: no CUSTOM rule matched");

    let mut secure = Mock::new("/secure/x", Answer::Deny);
    assert!(matches!(
        run(&chain, &mut secure).await,
        Err(Denied::Custom(401))
    ));
    assert_eq!(
        secure.asked,
        vec![(
            "grpc".to_string(),
            vec!["istio-ext-authz-grpc-ns[foo]-policy[p]-rule[0]".to_string()]
        )]
    );
}

#[tokio::test]
async fn failures_fail_closed_with_status_on_error_or_open() {
    let closed = [custom_rbac("grpc", "/"), ext_authz("grpc", false)];
    let mut m = Mock::new("/x", Answer::Fail);
    assert!(matches!(
        run(&closed, &mut m).await,
        Err(Denied::Custom(503))
    ));
    let open = [custom_rbac("grpc", "/"), ext_authz("grpc", true)];
    let mut m = Mock::new("/x", Answer::Fail);
    assert!(run(&open, &mut m).await.is_ok());
    assert_eq!(m.asked.len(), 1);
}

#[tokio::test]
async fn each_provider_is_gated_on_its_own_policies() {
    // Two providers (PILOT_ENABLE_MULTIPLE_CUSTOM_AUTHZ_PROVIDERS): a's rules match, b's
    // do not; b's filter still sees a's policy id in the merged metadata, and its prefix
    // does not match it.
    let chain = [
        custom_rbac("a", "/a"),
        ext_authz("a", false),
        custom_rbac("b", "/b"),
        ext_authz("b", false),
    ];
    let mut m = Mock::new("/a/x", Answer::Allow);
    assert!(run(&chain, &mut m).await.is_ok());
    let asked: Vec<&str> = m.asked.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(asked, ["a"]);
}

#[tokio::test]
async fn later_filters_see_what_the_provider_set() {
    let chain = [
        custom_rbac("grpc", "/secure"),
        ext_authz("grpc", false),
        allow_if_authorized(),
    ];
    let mut allowed = Mock::new("/secure", Answer::Allow);
    assert!(
        run(&chain, &mut allowed).await.is_ok(),
        "the header it set lets ALLOW match"
    );
    let mut unchecked = Mock::new("/public", Answer::Allow);
    assert!(matches!(
        run(&chain, &mut unchecked).await,
        Err(Denied::Policy(p)) if p == "no ALLOW policy matched"
    ));
}

#[tokio::test]
async fn without_enabled_metadata_every_request_is_checked() {
    let AuthzFilter::ExtAuthz(mut f) = ext_authz("grpc", false) else {
        unreachable!()
    };
    f.enabled_metadata = None;
    let mut m = Mock::new("/anything", Answer::Deny);
    assert!(matches!(
        run(&[AuthzFilter::ExtAuthz(f)], &mut m).await,
        Err(Denied::Custom(401))
    ));
    assert_eq!(m.asked[0].1, ["grpc"], "logged under the provider's name");
}
