//! Hand-built protos evaluate like the same configs loaded from proto-JSON YAML
//! ([`from_proto_yaml`]), and unsupported fields name the policy and the field.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{CidrRange, TypedExtensionConfig};
use envoy_types::pb::envoy::config::rbac::v3::permission::{Rule, Set as PermSet};
use envoy_types::pb::envoy::config::rbac::v3::principal::{
    Authenticated as PbAuth, Identifier, Set as IdSet,
};
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission as PbPermission, Policy as PbPolicy, Principal as PbPrincipal, Rbac as PbRbac,
};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::HeaderMatcher as PbHeader;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as PbHttpRbac;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as PbNetworkRbac;
use envoy_types::pb::envoy::extensions::path::r#match::uri_template::v3::UriTemplateMatchConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    filter_state_matcher, list_matcher, metadata_matcher, path_matcher, string_matcher,
    value_matcher, FilterStateMatcher, ListMatcher, MetadataMatcher, OrMatcher, PathMatcher,
    RegexMatcher, StringMatcher, ValueMatcher,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use filters::authz::{Attributes, HttpAttributes, JwtAuth};
use filters::rbac::{evaluate_chain, RbacInput};
use http::HeaderMap;
use prost::Message;

use super::*;

fn sm(p: string_matcher::MatchPattern, ignore_case: bool) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(p),
        ignore_case,
    }
}

fn exact(v: &str) -> StringMatcher {
    sm(string_matcher::MatchPattern::Exact(v.into()), false)
}

fn regex(v: &str) -> StringMatcher {
    sm(
        string_matcher::MatchPattern::SafeRegex(RegexMatcher {
            regex: v.into(),
            ..Default::default()
        }),
        false,
    )
}

fn perm(r: Rule) -> PbPermission {
    PbPermission { rule: Some(r) }
}

fn id(i: Identifier) -> PbPrincipal {
    PbPrincipal {
        identifier: Some(i),
    }
}

fn jwt_claim(claim: &str, m: StringMatcher) -> MetadataMatcher {
    let key = |k: &str| metadata_matcher::PathSegment {
        segment: Some(metadata_matcher::path_segment::Segment::Key(k.into())),
    };
    let s = ValueMatcher {
        match_pattern: Some(value_matcher::MatchPattern::StringMatch(m)),
    };
    MetadataMatcher {
        filter: "envoy.filters.http.jwt_authn".into(),
        path: vec![key("payload"), key(claim)],
        value: Some(ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::OrMatch(OrMatcher {
                value_matchers: vec![
                    ValueMatcher {
                        match_pattern: Some(value_matcher::MatchPattern::ListMatch(Box::new(
                            ListMatcher {
                                match_pattern: Some(list_matcher::MatchPattern::OneOf(Box::new(
                                    s.clone(),
                                ))),
                            },
                        ))),
                    },
                    s,
                ],
            })),
        }),
        invert: false,
    }
}

fn template(t: &str) -> Rule {
    Rule::UriTemplate(TypedExtensionConfig {
        name: "uri-template".into(),
        typed_config: Some(Any {
            type_url: model::URI_TEMPLATE_TYPE.into(),
            value: UriTemplateMatchConfig {
                path_template: t.into(),
            }
            .encode_to_vec(),
        }),
    })
}

/// A DENY filter and an ALLOW filter, as istiod emits for a DENY and an ALLOW policy.
fn protos() -> (PbHttpRbac, PbHttpRbac) {
    let deny_policy = PbPolicy {
        permissions: vec![perm(Rule::AndRules(PermSet {
            rules: vec![perm(Rule::OrRules(PermSet {
                rules: vec![
                    perm(Rule::Header(PbHeader {
                        name: ":method".into(),
                        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(exact(
                            "DELETE",
                        ))),
                        ..Default::default()
                    })),
                    perm(template("/admin/**")),
                ],
            }))],
        }))],
        principals: vec![id(Identifier::AndIds(IdSet {
            ids: vec![id(Identifier::NotId(Box::new(id(
                Identifier::FilterState(FilterStateMatcher {
                    key: "io.istio.peer_principal".into(),
                    matcher: Some(filter_state_matcher::Matcher::StringMatch(regex(
                        "spiffe://.*/ns/admin/.*",
                    ))),
                }),
            ))))],
        }))],
        ..Default::default()
    };
    let allow_policy = PbPolicy {
        permissions: vec![perm(Rule::AndRules(PermSet {
            rules: vec![
                perm(Rule::UrlPath(PathMatcher {
                    rule: Some(path_matcher::Rule::Path(sm(
                        string_matcher::MatchPattern::Prefix("/api/".into()),
                        false,
                    ))),
                })),
                perm(Rule::DestinationIp(CidrRange {
                    address_prefix: "10.96.0.0".into(),
                    prefix_len: Some(UInt32Value { value: 16 }),
                })),
            ],
        }))],
        principals: vec![
            id(Identifier::Authenticated(PbAuth {
                principal_name: Some(exact("spiffe://cluster.local/ns/foo/sa/sleep")),
            })),
            id(Identifier::AndIds(IdSet {
                ids: vec![
                    id(Identifier::Metadata(jwt_claim(
                        "iss",
                        exact("https://issuer"),
                    ))),
                    id(Identifier::DirectRemoteIp(CidrRange {
                        address_prefix: "192.168.0.0".into(),
                        prefix_len: Some(UInt32Value { value: 16 }),
                    })),
                ],
            })),
        ],
        ..Default::default()
    };
    let deny = PbHttpRbac {
        rules: Some(PbRbac {
            action: 1,
            policies: HashMap::from([("ns[foo]-policy[deny]-rule[0]".to_string(), deny_policy)]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let allow = PbHttpRbac {
        rules: Some(PbRbac {
            action: 0,
            policies: HashMap::from([("ns[foo]-policy[allow]-rule[0]".to_string(), allow_policy)]),
            ..Default::default()
        }),
        shadow_rules_stat_prefix: "istio_dry_run_allow_".into(),
        ..Default::default()
    };
    (deny, allow)
}

const DENY_YAML: &str = r#"
'@type': type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
rules:
  action: DENY
  policies:
    ns[foo]-policy[deny]-rule[0]:
      permissions:
      - andRules:
          rules:
          - orRules:
              rules:
              - header: {name: ':method', stringMatch: {exact: DELETE}}
              - uriTemplate:
                  name: uri-template
                  typedConfig:
                    '@type': type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig
                    pathTemplate: /admin/**
      principals:
      - andIds:
          ids:
          - notId:
              filterState:
                key: io.istio.peer_principal
                stringMatch: {safeRegex: {regex: 'spiffe://.*/ns/admin/.*'}}
"#;

const ALLOW_YAML: &str = r#"
'@type': type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
rules:
  policies:
    ns[foo]-policy[allow]-rule[0]:
      permissions:
      - andRules:
          rules:
          - urlPath: {path: {prefix: /api/}}
          - destinationIp: {addressPrefix: 10.96.0.0, prefixLen: 16}
      principals:
      - authenticated: {principalName: {exact: 'spiffe://cluster.local/ns/foo/sa/sleep'}}
      - andIds:
          ids:
          - metadata:
              filter: envoy.filters.http.jwt_authn
              path: [{key: payload}, {key: iss}]
              value:
                orMatch:
                  valueMatchers:
                  - listMatch: {oneOf: {stringMatch: {exact: 'https://issuer'}}}
                  - stringMatch: {exact: 'https://issuer'}
          - directRemoteIp: {addressPrefix: 192.168.0.0, prefixLen: 16}
shadowRulesStatPrefix: istio_dry_run_allow_
"#;

struct Case {
    principal: &'static str,
    method: &'static str,
    path: &'static str,
    dst: &'static str,
    src: &'static str,
    iss: Option<&'static str>,
}

#[test]
fn protos_evaluate_like_the_same_yaml() {
    let (deny, allow) = protos();
    let from_pb = [http_filter(&deny).unwrap(), http_filter(&allow).unwrap()];
    let from_yaml = [
        from_proto_yaml(DENY_YAML).unwrap(),
        from_proto_yaml(ALLOW_YAML).unwrap(),
    ];
    let sleep = "cluster.local/ns/foo/sa/sleep";
    let cases = [
        (
            Case {
                principal: sleep,
                method: "GET",
                path: "/api/x",
                dst: "10.96.1.1",
                src: "10.0.0.1",
                iss: None,
            },
            true,
        ),
        (
            Case {
                principal: sleep,
                method: "DELETE",
                path: "/api/x",
                dst: "10.96.1.1",
                src: "10.0.0.1",
                iss: None,
            },
            false,
        ),
        (
            Case {
                principal: "cluster.local/ns/admin/sa/a",
                method: "DELETE",
                path: "/api/x",
                dst: "10.96.1.1",
                src: "10.0.0.1",
                iss: None,
            },
            false,
        ),
        (
            Case {
                principal: sleep,
                method: "GET",
                path: "/admin/a/b",
                dst: "10.96.1.1",
                src: "10.0.0.1",
                iss: None,
            },
            false,
        ),
        (
            Case {
                principal: sleep,
                method: "GET",
                path: "/api/x",
                dst: "10.97.0.1",
                src: "10.0.0.1",
                iss: None,
            },
            false,
        ),
        (
            Case {
                principal: "cluster.local/ns/bar/sa/b",
                method: "GET",
                path: "/api/x",
                dst: "10.96.1.1",
                src: "10.0.0.1",
                iss: None,
            },
            false,
        ),
        (
            Case {
                principal: "cluster.local/ns/bar/sa/b",
                method: "GET",
                path: "/api/x",
                dst: "10.96.1.1",
                src: "192.168.3.4",
                iss: Some("https://issuer"),
            },
            true,
        ),
        (
            Case {
                principal: "cluster.local/ns/bar/sa/b",
                method: "GET",
                path: "/api/x",
                dst: "10.96.1.1",
                src: "192.168.3.4",
                iss: Some("https://other"),
            },
            false,
        ),
    ];
    let headers = HeaderMap::new();
    for (c, want) in cases {
        let jwt = c.iss.map(|iss| JwtAuth {
            principal: format!("{iss}/sub"),
            claims: serde_json::json!({"iss": iss, "sub": "sub"}),
            ..Default::default()
        });
        let attrs = Attributes {
            principal: Some(c.principal.into()),
            source_ip: Some(c.src.parse().unwrap()),
            remote_ip: Some(c.src.parse().unwrap()),
            destination_ip: Some(c.dst.parse().unwrap()),
            destination_port: Some(8000),
            http: Some(HttpAttributes {
                path_and_query: None,
                method: c.method,
                host: "httpbin.foo",
                path: c.path,
                query: None,
                headers: &headers,
                auth: jwt.as_ref(),
            }),
            ..Default::default()
        };
        let input = RbacInput::new(&attrs);
        let a = evaluate_chain(&from_pb, &input);
        let b = evaluate_chain(&from_yaml, &input);
        assert_eq!(a, b, "{} {} {}", c.principal, c.method, c.path);
        assert_eq!(a.allowed, want, "{} {} {}", c.principal, c.method, c.path);
    }
}

#[test]
fn typed_config_any_decodes_http_and_network() {
    let (deny, _) = protos();
    let any = Any {
        type_url: model::HTTP_RBAC_TYPE.into(),
        value: deny.encode_to_vec(),
    };
    let c = from_any(&any).unwrap();
    assert_eq!(c.kind, FilterKind::Http);
    assert_eq!(c.rules.unwrap().action, Action::Deny);
    let net = PbNetworkRbac {
        rules: deny.rules.clone(),
        stat_prefix: "tcp.".into(),
        ..Default::default()
    };
    let any = Any {
        type_url: model::NETWORK_RBAC_TYPE.into(),
        value: net.encode_to_vec(),
    };
    let c = from_any(&any).unwrap();
    assert_eq!(c.kind, FilterKind::Network);
    assert_eq!(c.stat_prefix, "tcp.");
    let e = from_any(&Any {
        type_url: "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz".into(),
        value: vec![],
    })
    .unwrap_err();
    assert_eq!(e.field, "typed_config.type_url");
}

#[test]
fn unsupported_fields_name_the_policy_and_field() {
    let (mut deny, _) = protos();
    let rules = deny.rules.as_mut().unwrap();
    let p = rules
        .policies
        .get_mut("ns[foo]-policy[deny]-rule[0]")
        .unwrap();
    let Some(Rule::AndRules(set)) = p.permissions[0].rule.as_mut() else {
        unreachable!()
    };
    set.rules.push(perm(Rule::Matcher(TypedExtensionConfig {
        name: "envoy.rbac.matchers.upstream_ip_port".into(),
        typed_config: None,
    })));
    let e = http_filter(&deny).unwrap_err();
    assert_eq!(e.policy, "ns[foo]-policy[deny]-rule[0]");
    assert_eq!(e.field, "permissions[0].and_rules.rules[1].matcher");
    assert!(e.to_string().contains("not supported"), "{e}");

    let (mut deny, _) = protos();
    let p = deny
        .rules
        .as_mut()
        .unwrap()
        .policies
        .get_mut("ns[foo]-policy[deny]-rule[0]")
        .unwrap();
    p.principals.push(id(Identifier::Header(PbHeader {
        name: "x".into(),
        header_match_specifier: Some(HeaderMatchSpecifier::SafeRegexMatch(RegexMatcher {
            regex: "(".into(),
            ..Default::default()
        })),
        ..Default::default()
    })));
    let e = http_filter(&deny).unwrap_err();
    assert_eq!(e.field, "principals[1].header.safe_regex_match.regex");

    let (mut deny, _) = protos();
    deny.rules.as_mut().unwrap().action = 7;
    assert_eq!(http_filter(&deny).unwrap_err().field, "rules.action");

    let mut shadow_cel = protos().1;
    shadow_cel.shadow_rules = Some(PbRbac {
        policies: HashMap::from([(
            "p".to_string(),
            PbPolicy {
                permissions: vec![perm(Rule::Any(false))],
                principals: vec![id(Identifier::Any(true))],
                ..Default::default()
            },
        )]),
        ..Default::default()
    });
    let e = http_filter(&shadow_cel).unwrap_err();
    assert_eq!(
        (e.policy.as_str(), e.field.as_str()),
        ("p", "permissions[0].any")
    );
}
