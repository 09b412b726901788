//! Evaluation of hand-written RBAC configs, loaded from proto-JSON/YAML through the
//! protobuf converter istiod's configs go through (`xds::translate::rbac`).

use std::net::IpAddr;

use filters::authz::{Attributes, HttpAttributes, JwtAuth};
use filters::rbac::{evaluate_chain, RbacConfig, RbacInput};
use http::HeaderMap;
use xds::translate::rbac::{from_proto_json, from_proto_yaml, InvalidRbac};

fn http_attrs<'a>(
    headers: &'a HeaderMap,
    path: &'a str,
    query: Option<&'a str>,
    auth: Option<&'a JwtAuth>,
) -> Attributes<'a> {
    Attributes {
        principal_uri: None,
        principal: Some("cluster.local/ns/foo/sa/sleep".into()),
        namespace: Some("foo".into()),
        service_account: Some("sleep".into()),
        source_ip: Some("10.0.0.1".parse().unwrap()),
        remote_ip: Some("192.168.1.1".parse().unwrap()),
        destination_ip: Some("10.96.0.10".parse().unwrap()),
        destination_port: Some(8080),
        sni: None,
        http: Some(HttpAttributes {
            path_and_query: None,
            method: "GET",
            host: "httpbin.foo:8000",
            path,
            query,
            headers,
            auth,
        }),
    }
}

const HTTP_TYPE: &str = "'@type': type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

fn try_config(rules: &str) -> Result<RbacConfig, InvalidRbac> {
    from_proto_yaml(&format!("{HTTP_TYPE}\nrules:\n{rules}"))
}

fn config(rules: &str) -> RbacConfig {
    try_config(rules).unwrap_or_else(|e| panic!("{e}\n{rules}"))
}

/// The `typedConfig` of a `{name, typedConfig}` filter document, which must be RBAC's.
fn filter_document(text: &str) -> RbacConfig {
    let doc: serde_json::Value = serde_yaml::from_str(text).unwrap();
    let typed = &doc["typedConfig"];
    assert_eq!(
        typed["@type"].as_str(),
        Some("type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC")
    );
    from_proto_json(typed).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn allowed(c: &RbacConfig, attrs: &Attributes<'_>) -> bool {
    c.evaluate(&RbacInput::new(attrs)).allowed()
}

fn policy(permission: &str, principal: &str) -> String {
    format!(
        "  policies:\n    p:\n      permissions:\n      - {permission}\n      principals:\n      - {principal}\n"
    )
}

#[test]
fn allow_needs_a_match_deny_forbids_one_log_never_denies() {
    let h = HeaderMap::new();
    let a = http_attrs(&h, "/x", None, None);
    let p = policy("{urlPath: {path: {exact: /x}}}", "{any: true}");
    assert!(allowed(&config(&p), &a));
    assert!(!allowed(&config(&format!("  action: DENY\n{p}")), &a));
    assert!(allowed(&config(&format!("  action: LOG\n{p}")), &a));
    let other = http_attrs(&h, "/y", None, None);
    assert!(!allowed(&config(&p), &other));
    assert!(allowed(&config(&format!("  action: DENY\n{p}")), &other));
    // No policies: ALLOW denies everything, DENY nothing.
    assert!(!allowed(&config("  policies: {}\n"), &a));
}

#[test]
fn principals_and_pseudo_headers() {
    let mut h = HeaderMap::new();
    h.append("x-a", "one".parse().unwrap());
    h.append("x-a", "two".parse().unwrap());
    let a = http_attrs(&h, "/p", Some("q=1"), None);
    let yes = [
        "{authenticated: {principalName: {exact: 'spiffe://cluster.local/ns/foo/sa/sleep'}}}",
        "{authenticated: {}}",
        "{filterState: {key: io.istio.peer_principal, stringMatch: {prefix: 'spiffe://cluster.local/'}}}",
        "{directRemoteIp: {addressPrefix: 10.0.0.0, prefixLen: 8}}",
        "{sourceIp: {addressPrefix: 10.0.0.1, prefixLen: 32}}",
        "{remoteIp: {addressPrefix: 192.168.0.0, prefixLen: 16}}",
        "{header: {name: ':authority', stringMatch: {exact: HTTPBIN.foo:8000, ignoreCase: true}}}",
        "{header: {name: ':method', exactMatch: GET}}",
        "{header: {name: ':path', exactMatch: '/p?q=1'}}",
        "{urlPath: {path: {exact: /p}}}",
        "{header: {name: X-A, exactMatch: 'one,two'}}",
        "{header: {name: x-missing, presentMatch: false}}",
        "{header: {name: x-missing, presentMatch: true, invertMatch: true}}",
        "{header: {name: x-missing, treatMissingHeaderAsEmpty: true, stringMatch: {exact: ''}}}",
        "{notId: {header: {name: x-missing, exactMatch: v}}}",
        "{orIds: {ids: [{notId: {any: true}}, {any: true}]}}",
        "{andIds: {ids: [{any: true}, {header: {name: x-a, containsMatch: 'e,t'}}]}}",
    ];
    for p in yes {
        assert!(allowed(&config(&policy("{any: true}", p)), &a), "{p}");
    }
    let no = [
        "{authenticated: {principalName: {exact: 'cluster.local/ns/foo/sa/sleep'}}}",
        "{filterState: {key: io.istio.other, stringMatch: {safeRegex: {regex: '.*'}}}}",
        "{directRemoteIp: {addressPrefix: 192.168.1.1, prefixLen: 32}}",
        "{header: {name: x-missing, exactMatch: v, invertMatch: true}}",
        "{header: {name: x-a, presentMatch: true, invertMatch: true}}",
        "{header: {name: ':path', exactMatch: /p}}",
        "{urlPath: {path: {exact: '/p?q=1'}}}",
    ];
    for p in no {
        assert!(!allowed(&config(&policy("{any: true}", p)), &a), "{p}");
    }
}

#[test]
fn permissions() {
    let h = HeaderMap::new();
    let mut a = http_attrs(&h, "/api/v1/items", None, None);
    a.sni = Some("httpbin.foo".into());
    let tpl = |t: &str| {
        format!("{{uriTemplate: {{name: uri-template, typedConfig: {{'@type': type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig, pathTemplate: '{t}'}}}}}}")
    };
    let yes = [
        "{destinationPort: 8080}".to_string(),
        "{destinationPortRange: {start: 8000, end: 8081}}".into(),
        "{destinationIp: {addressPrefix: 10.96.0.0, prefixLen: 16}}".into(),
        "{requestedServerName: {suffix: .foo}}".into(),
        tpl("/api/*/items"),
        tpl("/**/items"),
        "{notRule: {destinationPort: 80}}".into(),
        "{andRules: {rules: [{any: true}, {urlPath: {path: {prefix: /api/}}}]}}".into(),
    ];
    for p in &yes {
        assert!(allowed(&config(&policy(p, "{any: true}")), &a), "{p}");
    }
    let no = [
        "{destinationPortRange: {start: 8000, end: 8080}}".to_string(),
        tpl("/api/*"),
        "{requestedServerName: {exact: ''}}".into(),
    ];
    for p in &no {
        assert!(!allowed(&config(&policy(p, "{any: true}")), &a), "{p}");
    }
    a.sni = None;
    let empty_sni = "{requestedServerName: {exact: ''}}";
    assert!(allowed(&config(&policy(empty_sni, "{any: true}")), &a));
}

#[test]
fn jwt_metadata() {
    let h = HeaderMap::new();
    let jwt = JwtAuth {
        principal: "https://issuer/sub".into(),
        audiences: vec!["a1".into(), "a2".into()],
        presenter: None,
        claims: serde_json::json!({"iss": "https://issuer", "sub": "sub", "aud": ["a1", "a2"],
            "nested": {"k": "v"}, "admin": true, "level": 3}),
    };
    let a = http_attrs(&h, "/", None, Some(&jwt));
    let md = |filter: &str, path: &[&str], value: &str| {
        let path: Vec<String> = path.iter().map(|k| format!("{{key: '{k}'}}")).collect();
        format!(
            "{{metadata: {{filter: {filter}, path: [{}], value: {value}}}}}",
            path.join(", ")
        )
    };
    let jwt_f = "envoy.filters.http.jwt_authn";
    let yes = [
        md(
            jwt_f,
            &["payload", "iss"],
            "{stringMatch: {exact: 'https://issuer'}}",
        ),
        md(
            jwt_f,
            &["payload", "aud"],
            "{listMatch: {oneOf: {stringMatch: {exact: a2}}}}",
        ),
        md(
            jwt_f,
            &["payload", "nested", "k"],
            "{orMatch: {valueMatchers: [{stringMatch: {exact: x}}, {stringMatch: {exact: v}}]}}",
        ),
        md(jwt_f, &["payload", "admin"], "{boolMatch: true}"),
        md(jwt_f, &["payload", "level"], "{doubleMatch: {exact: 3}}"),
        md(jwt_f, &["payload", "azp"], "{presentMatch: false}"),
        md(jwt_f, &["payload", "azp"], "{nullMatch: {}}"),
        md(
            "istio_authn",
            &["request.auth.principal"],
            "{stringMatch: {exact: 'https://issuer/sub'}}",
        ),
        md(
            "istio_authn",
            &["request.auth.audiences"],
            "{listMatch: {oneOf: {stringMatch: {prefix: a}}}}",
        ),
        md(
            "istio_authn",
            &["request.auth.claims", "nested", "k"],
            "{stringMatch: {exact: v}}",
        ),
    ];
    for p in &yes {
        assert!(allowed(&config(&policy("{any: true}", p)), &a), "{p}");
    }
    let no = [
        md(jwt_f, &["payload", "level"], "{stringMatch: {exact: '3'}}"),
        md(
            jwt_f,
            &["payload", "admin"],
            "{stringMatch: {exact: 'true'}}",
        ),
        md(jwt_f, &["payload", "aud"], "{stringMatch: {exact: a1}}"),
        md("envoy.filters.a.b", &["c"], "{presentMatch: true}"),
    ];
    for p in &no {
        assert!(!allowed(&config(&policy("{any: true}", p)), &a), "{p}");
    }
    let inverted = format!(
        "{{metadata: {{filter: {jwt_f}, path: [{{key: payload}}, {{key: sub}}], value: {{stringMatch: {{exact: sub}}}}, invert: true}}}}"
    );
    assert!(!allowed(&config(&policy("{any: true}", &inverted)), &a));
}

#[test]
fn tcp_has_no_http_inputs() {
    let a = Attributes {
        principal: Some("cluster.local/ns/foo/sa/sleep".into()),
        destination_port: Some(9000),
        source_ip: Some(IpAddr::from([1, 2, 3, 4])),
        ..Default::default()
    };
    let c = config(&policy("{urlPath: {path: {prefix: /}}}", "{any: true}"));
    assert!(!allowed(&c, &a));
    let c = config(&policy(
        "{header: {name: ':method', presentMatch: true}}",
        "{any: true}",
    ));
    assert!(!allowed(&c, &a));
    let c = config(&policy(
        "{destinationPort: 9000}",
        "{directRemoteIp: {addressPrefix: 1.2.3.4, prefixLen: 32}}",
    ));
    assert!(allowed(&c, &a));
}

#[test]
fn network_filter_config() {
    let c = from_proto_yaml(
        "'@type': type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC\nstatPrefix: tcp.\nrules:\n  policies:\n    p: {permissions: [{destinationPort: 9000}], principals: [{any: true}]}\n",
    )
    .unwrap();
    assert_eq!(c.kind, filters::rbac::FilterKind::Network);
    assert_eq!(c.stat_prefix, "tcp.");
    let a = Attributes {
        destination_port: Some(9000),
        ..Default::default()
    };
    assert!(allowed(&c, &a));
}

#[test]
fn chain_shadow_and_policy_names() {
    let deny = filter_document(
        "name: envoy.filters.http.rbac\ntypedConfig:\n  '@type': type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC\n  rules:\n    action: DENY\n    policies:\n      b-deny: {permissions: [{urlPath: {path: {exact: /deny}}}], principals: [{any: true}]}\n  shadowRules:\n    policies:\n      s: {permissions: [{any: true}], principals: [{any: true}]}\n  shadowRulesStatPrefix: istio_dry_run_allow_\n",
    );
    let allow = config(&format!(
        "{}    a-allow: {{permissions: [{{any: true}}], principals: [{{any: true}}]}}\n",
        policy("{urlPath: {path: {exact: /allow}}}", "{any: true}")
    ));
    let h = HeaderMap::new();
    let a = http_attrs(&h, "/deny", None, None);
    let d = evaluate_chain([&deny, &allow], &RbacInput::new(&a));
    assert!(!d.allowed);
    assert_eq!(d.denied_by, Some((0, Some("b-deny".into()))));
    assert_eq!(d.shadow.len(), 1);
    assert_eq!(d.shadow[0].1, "istio_dry_run_allow_");
    assert!(d.shadow[0].2.allowed);
    assert_eq!(
        d.shadow_metadata(),
        vec![
            (
                "istio_dry_run_allow_shadow_effective_policy_id".to_string(),
                "s".to_string()
            ),
            (
                "istio_dry_run_allow_shadow_engine_result".to_string(),
                "allowed".to_string()
            ),
        ]
    );
    assert!(d.shadow_matched("s"));
    assert!(!d.shadow_matched("istio-ext-authz"));
    let a = http_attrs(&h, "/allow", None, None);
    let d = evaluate_chain([&deny, &allow], &RbacInput::new(&a));
    assert!(d.allowed);
    // Policies are evaluated in name order: "a-allow" before "p".
    assert_eq!(d.matched, vec![(1, "a-allow".to_string())]);
}

/// Inputs the converter rejects name the policy and the field (proto names).
#[test]
fn invalid_matchers_are_errors_naming_the_policy_and_field() {
    let bad = [
        ("{matcher: {name: m}}", "matcher", "not supported"),
        (
            "{urlPath: {path: {safeRegex: {regex: '('}}}}",
            "url_path.path.safe_regex.regex",
            "invalid regex",
        ),
        ("{any: false}", "any", "must be true"),
        (
            "{destinationIp: {addressPrefix: 1.2.3.4, prefixLen: 33}}",
            "destination_ip",
            "too long",
        ),
        (
            "{urlPath: {path: {prefix: ''}}}",
            "url_path.path.prefix",
            "must not be empty",
        ),
        (
            "{requestedServerName: {custom: {name: c}}}",
            "requested_server_name.custom",
            "not supported",
        ),
        ("{header: {name: ''}}", "header.name", "must not be empty"),
        (
            "{uriTemplate: {name: u, typedConfig: {'@type': type.googleapis.com/envoy.extensions.path.match.uri_template.v3.UriTemplateMatchConfig, pathTemplate: x}}}",
            "uri_template.typed_config.path_template",
            "must start with '/'",
        ),
    ];
    for (p, field, want) in bad {
        let e = try_config(&format!(
            "  policies:\n    ns[foo]-policy[x]-rule[0]:\n      permissions:\n      - andRules: {{rules: [{{any: true}}, {p}]}}\n      principals: [{{any: true}}]\n"
        ))
        .unwrap_err();
        assert_eq!(e.policy, "ns[foo]-policy[x]-rule[0]", "{p}: {e}");
        assert_eq!(
            e.field,
            format!("permissions[0].and_rules.rules[1].{field}"),
            "{p}: {e}"
        );
        assert!(e.to_string().contains(want), "{p}: {e}");
    }
    let e = try_config(
        "  policies:\n    p: {permissions: [{any: true}], principals: [{any: true}], condition: {}}\n",
    )
    .unwrap_err();
    assert_eq!((e.policy.as_str(), e.field.as_str()), ("p", "condition"));
}

/// Inputs that are not the protobuf message: decoding rejects them, naming what is wrong.
#[test]
fn malformed_documents_are_decode_errors() {
    let bad = [
        // An unknown field.
        (
            "{header: {name: x, fooMatch: y}}",
            "unrecognized field name 'fooMatch'",
        ),
        // Two members of one oneof.
        (
            "{header: {name: x, exactMatch: a, prefixMatch: b}}",
            "multiple fields provided for oneof 'header_match_specifier'",
        ),
        (
            "{urlPath: {path: {prefix: x, exact: y}}}",
            "multiple fields provided for oneof 'match_pattern'",
        ),
    ];
    for (p, want) in bad {
        let e = try_config(&policy(p, "{any: true}")).unwrap_err();
        assert_eq!(e.field, "typed_config", "{p}: {e}");
        assert!(e.to_string().contains(want), "{p}: {e}");
    }
    let e = from_proto_yaml(
        "'@type': type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz\n",
    )
    .unwrap_err();
    assert_eq!(e.field, "typed_config.@type", "{e}");
    assert!(e.to_string().contains("ExtAuthz"), "{e}");
    let e = from_proto_yaml("rules: {}\n").unwrap_err();
    assert_eq!(e.field, "typed_config.@type", "{e}");
}
