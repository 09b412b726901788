//! The AuthorizationPolicy decision table: policies + requests with the expected outcome,
//! each citing where the expected behaviour is specified.
//!
//! Sources:
//! - REF: istio.io/latest/docs/reference/config/security/authorization-policy/ (fields,
//!   value forms, `notX`, `spec: {}` vs `rules: [{}]`, path templates)
//! - CONCEPTS: istio.io/latest/docs/concepts/security/#authorization-policies (CUSTOM, DENY,
//!   ALLOW order; AUDIT; HTTP-only fields on TCP)
//! - CONDITIONS: istio.io/latest/docs/reference/config/security/conditions/ (`when` keys)
//! - NORMALIZATION: istio.io/latest/docs/ops/best-practices/security/#understand-path-normalization-in-authorization-policy
//! - DRYRUN: istio.io/latest/docs/tasks/security/authorization/authz-dry-run/
//! - BUILDER: istio pilot/pkg/security/authz/builder testdata (allow-full-rule,
//!   deny-and-allow, dry-run-mix, allow-path, tcp/allow-only-http)

use std::net::IpAddr;
use std::sync::Arc;

use filters::authz::path::{normalize, Normalization};
use filters::authz::{evaluate, Attributes, HttpAttributes, JwtAuth};
use http::HeaderMap;
use kube_config::authz::{compile, AuthorizationPolicy};

#[derive(Clone)]
struct Req {
    principal: Option<&'static str>,
    ns: &'static str,
    sa: &'static str,
    source: &'static str,
    dst: &'static str,
    port: u16,
    tcp: bool,
    method: &'static str,
    host: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    jwt: Option<JwtAuth>,
}

fn req() -> Req {
    Req {
        principal: Some("cluster.local/ns/default/sa/sleep"),
        ns: "default",
        sa: "sleep",
        source: "192.0.2.10",
        dst: "198.51.100.20",
        port: 80,
        tcp: false,
        method: "GET",
        host: "httpbin.default",
        path: "/info",
        headers: vec![],
        jwt: None,
    }
}

fn jwt(iss_sub: &'static str, aud: &[&'static str], claims: serde_json::Value) -> Option<JwtAuth> {
    Some(JwtAuth {
        principal: iss_sub.to_string(),
        audiences: aud.iter().map(|a| a.to_string()).collect(),
        presenter: claims
            .get("azp")
            .and_then(|v| v.as_str())
            .map(str::to_string),
        claims,
    })
}

/// `Some(true)` allow, `Some(false)` deny; `None` means the request is rejected (400) by
/// path normalization before policies run.
fn decide(policies: &str, r: &Req) -> Option<bool> {
    let compiled: Vec<Arc<filters::authz::model::Policy>> =
        serde_yaml::Deserializer::from_str(policies)
            .filter(|_| !policies.trim().is_empty())
            .map(|d| {
                let p: AuthorizationPolicy =
                    serde::Deserialize::deserialize(d).expect("policy YAML");
                Arc::new(compile(&p).expect("policy compiles"))
            })
            .collect();
    let path = normalize(r.path.split('?').next().unwrap_or("/"), Normalization::Base).ok()?;
    let mut headers = HeaderMap::new();
    for (k, v) in &r.headers {
        headers.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let ip = |s: &str| s.parse::<IpAddr>().ok();
    let attrs = Attributes {
        principal_uri: None,
        principal: r.principal.map(Into::into),
        namespace: Some(r.ns.into()),
        service_account: Some(r.sa.into()),
        source_ip: ip(r.source),
        remote_ip: ip(r.source),
        destination_ip: ip(r.dst),
        destination_port: Some(r.port),
        sni: None,
        http: (!r.tcp).then(|| HttpAttributes {
            path_and_query: None,
            method: r.method,
            host: r.host,
            path: &path,
            query: None,
            headers: &headers,
            auth: r.jwt.as_ref(),
        }),
    };
    Some(evaluate(&compiled, &attrs, None).verdict.allowed())
}

fn allow(rule: &str) -> String {
    format!("metadata: {{name: p, namespace: default}}\nspec:\n  action: ALLOW\n  rules:\n{rule}")
}

fn deny(rule: &str) -> String {
    format!("metadata: {{name: d, namespace: default}}\nspec:\n  action: DENY\n  rules:\n{rule}")
}

struct Case {
    source: &'static str,
    what: String,
    policies: String,
    req: Req,
    want: Option<bool>,
}

/// A field given as `from.source`, `to.operation` or `when`, with the request tweak that
/// makes the attribute equal `value` (or absent when `None`).
struct FieldSpec {
    source: &'static str,
    /// How to write `values` for this field in a rule (`{v}` is the YAML list).
    positive: &'static str,
    negative: &'static str,
    /// The attribute value the request will carry.
    set: fn(&mut Req, Option<&'static str>),
    /// Whether the attribute can be absent.
    absent_ok: bool,
}

fn field_cases() -> Vec<Case> {
    let fields: Vec<(&str, FieldSpec)> = vec![
        (
            "principals",
            FieldSpec {
                source: "REF Source.principals",
                positive: "  - from: [{source: {principals: {v}}}]\n",
                negative: "  - from: [{source: {notPrincipals: {v}}}]\n",
                set: |r, v| r.principal = v,
                absent_ok: true,
            },
        ),
        (
            "namespaces",
            FieldSpec {
                source: "REF Source.namespaces",
                positive: "  - from: [{source: {namespaces: {v}}}]\n",
                negative: "  - from: [{source: {notNamespaces: {v}}}]\n",
                set: |r, v| r.ns = v.unwrap_or(""),
                absent_ok: false,
            },
        ),
        (
            "requestPrincipals",
            FieldSpec {
                source: "REF Source.requestPrincipals",
                positive: "  - from: [{source: {requestPrincipals: {v}}}]\n",
                negative: "  - from: [{source: {notRequestPrincipals: {v}}}]\n",
                set: |r, v| r.jwt = v.and_then(|p| jwt(p, &[], serde_json::json!({}))),
                absent_ok: true,
            },
        ),
        (
            "hosts",
            FieldSpec {
                source: "REF Operation.hosts",
                positive: "  - to: [{operation: {hosts: {v}}}]\n",
                negative: "  - to: [{operation: {notHosts: {v}}}]\n",
                set: |r, v| r.host = v.unwrap_or(""),
                absent_ok: false,
            },
        ),
        (
            "methods",
            FieldSpec {
                source: "REF Operation.methods",
                positive: "  - to: [{operation: {methods: {v}}}]\n",
                negative: "  - to: [{operation: {notMethods: {v}}}]\n",
                set: |r, v| r.method = v.unwrap_or(""),
                absent_ok: false,
            },
        ),
        (
            "paths",
            FieldSpec {
                source: "REF Operation.paths",
                positive: "  - to: [{operation: {paths: {v}}}]\n",
                negative: "  - to: [{operation: {notPaths: {v}}}]\n",
                set: |r, v| r.path = v.unwrap_or("/"),
                absent_ok: false,
            },
        ),
        (
            "request.headers",
            FieldSpec {
                source: "CONDITIONS request.headers",
                positive: "  - when: [{key: \"request.headers[x-token]\", values: {v}}]\n",
                negative: "  - when: [{key: \"request.headers[x-token]\", notValues: {v}}]\n",
                set: |r, v| r.headers = v.map(|v| vec![("x-token", v)]).unwrap_or_default(),
                absent_ok: true,
            },
        ),
        (
            "source.principal",
            FieldSpec {
                source: "CONDITIONS source.principal",
                positive: "  - when: [{key: source.principal, values: {v}}]\n",
                negative: "  - when: [{key: source.principal, notValues: {v}}]\n",
                set: |r, v| r.principal = v,
                absent_ok: true,
            },
        ),
        (
            "source.namespace",
            FieldSpec {
                source: "CONDITIONS source.namespace",
                positive: "  - when: [{key: source.namespace, values: {v}}]\n",
                negative: "  - when: [{key: source.namespace, notValues: {v}}]\n",
                set: |r, v| r.ns = v.unwrap_or(""),
                absent_ok: false,
            },
        ),
        (
            "request.auth.principal",
            FieldSpec {
                source: "CONDITIONS request.auth.principal",
                positive: "  - when: [{key: request.auth.principal, values: {v}}]\n",
                negative: "  - when: [{key: request.auth.principal, notValues: {v}}]\n",
                set: |r, v| r.jwt = v.and_then(|p| jwt(p, &[], serde_json::json!({}))),
                absent_ok: true,
            },
        ),
        (
            "request.auth.claims[group]",
            FieldSpec {
                source: "CONDITIONS request.auth.claims",
                positive: "  - when: [{key: \"request.auth.claims[group]\", values: {v}}]\n",
                negative: "  - when: [{key: \"request.auth.claims[group]\", notValues: {v}}]\n",
                set: |r, v| {
                    r.jwt = v.and_then(|g| jwt("iss/sub", &[], serde_json::json!({"group": g})))
                },
                absent_ok: true,
            },
        ),
        (
            "request.auth.presenter",
            FieldSpec {
                source: "CONDITIONS request.auth.presenter",
                positive: "  - when: [{key: request.auth.presenter, values: {v}}]\n",
                negative: "  - when: [{key: request.auth.presenter, notValues: {v}}]\n",
                set: |r, v| {
                    r.jwt = v.and_then(|g| jwt("iss/sub", &[], serde_json::json!({"azp": g})))
                },
                absent_ok: true,
            },
        ),
    ];
    // (form, policy value, matching attribute, non-matching attribute)
    let forms: [(&str, &str, &str, &str); 4] = [
        ("exact", "abc-value", "abc-value", "abc-value-x"),
        ("prefix", "abc-*", "abc-anything", "xabc-"),
        ("suffix", "*-value", "anything-value", "value-x"),
        ("presence", "*", "whatever", ""),
    ];
    let mut out = Vec::new();
    for (name, f) in &fields {
        for (form, pattern, hit, miss) in forms {
            let (hit, miss) = if *name == "paths" {
                // Paths are absolute: give the forms a leading slash.
                match form {
                    "exact" => ("/abc-value", "/abc-value-x"),
                    "prefix" => ("/abc-anything", "/xabc-"),
                    "suffix" => ("/anything-value", "/value-x"),
                    _ => ("/whatever", ""),
                }
            } else {
                (hit, miss)
            };
            let pattern = if *name == "paths" && form != "presence" && form != "suffix" {
                format!("/{pattern}")
            } else {
                pattern.to_string()
            };
            let list = format!("[\"{pattern}\"]");
            let pos = f.positive.replace("{v}", &list);
            let neg = f.negative.replace("{v}", &list);
            let with = |v: Option<&'static str>| {
                let mut r = req();
                (f.set)(&mut r, v);
                r
            };
            let hit: &'static str = Box::leak(hit.to_string().into_boxed_str());
            let miss_v: Option<&'static str> = if miss.is_empty() {
                None
            } else {
                Some(Box::leak(miss.to_string().into_boxed_str()))
            };
            out.push(Case {
                source: f.source,
                what: format!("{name} {form}: matching value allowed"),
                policies: allow(&pos),
                req: with(Some(hit)),
                want: Some(true),
            });
            if let Some(m) = miss_v {
                out.push(Case {
                    source: f.source,
                    what: format!("{name} {form}: other value denied"),
                    policies: allow(&pos),
                    req: with(Some(m)),
                    want: Some(false),
                });
                out.push(Case {
                    source: f.source,
                    what: format!("{name} {form}: not-form allows other value"),
                    policies: allow(&neg),
                    req: with(Some(m)),
                    want: Some(true),
                });
            }
            out.push(Case {
                source: f.source,
                what: format!("{name} {form}: not-form denies matching value"),
                policies: allow(&neg),
                req: with(Some(hit)),
                want: Some(false),
            });
            if f.absent_ok {
                out.push(Case {
                    source: "REF notX matches an absent attribute",
                    what: format!("{name} {form}: absent attribute fails the positive form"),
                    policies: allow(&pos),
                    req: with(None),
                    want: Some(false),
                });
                out.push(Case {
                    source: "REF notX matches an absent attribute",
                    what: format!("{name} {form}: absent attribute satisfies the not-form"),
                    policies: allow(&neg),
                    req: with(None),
                    want: Some(true),
                });
            }
        }
    }
    out
}

fn explicit_cases() -> Vec<Case> {
    let c = |source, what: &str, policies: String, req: Req, want| Case {
        source,
        what: what.to_string(),
        policies,
        req,
        want,
    };
    let mut r_admin = req();
    r_admin.path = "/admin";
    let mut tcp = req();
    tcp.tcp = true;
    let with_path = |p: &'static str| {
        let mut r = req();
        r.path = p;
        r
    };
    let with_ip = |ip: &'static str| {
        let mut r = req();
        r.source = ip;
        r
    };
    let with_port = |p: u16| {
        let mut r = req();
        r.port = p;
        r
    };
    let with_host = |h: &'static str| {
        let mut r = req();
        r.host = h;
        r
    };
    let deny_admin = deny("  - to: [{operation: {paths: [\"/admin*\"]}}]\n");
    vec![
        c("REF spec: {} allows nothing", "empty ALLOW spec denies", "metadata: {name: p, namespace: default}\nspec: {}\n".into(), req(), Some(false)),
        c("REF rules: [{}] allows everything", "empty rule allows", allow("  - {}\n"), req(), Some(true)),
        c("CONCEPTS no ALLOW policy means allow", "no policies allow", String::new(), req(), Some(true)),
        c("CONCEPTS DENY before ALLOW", "DENY wins over a matching ALLOW", format!("{}\n---\n{}", allow("  - {}\n"), deny_admin), r_admin.clone(), Some(false)),
        c("CONCEPTS DENY before ALLOW", "DENY not matching leaves ALLOW", format!("{}\n---\n{}", allow("  - {}\n"), deny_admin), req(), Some(true)),
        c("CONCEPTS ALLOW present means default deny", "ALLOW not matching denies", allow("  - to: [{operation: {paths: [\"/other\"]}}]\n"), req(), Some(false)),
        c("CONCEPTS AUDIT never changes the decision", "AUDIT alone allows", "metadata: {name: a, namespace: default}\nspec:\n  action: AUDIT\n  rules:\n  - {}\n".into(), req(), Some(true)),
        c("CONCEPTS AUDIT never changes the decision", "AUDIT with a non-matching ALLOW still denies", format!("metadata: {{name: a, namespace: default}}\nspec:\n  action: AUDIT\n  rules:\n  - {{}}\n---\n{}", allow("  - to: [{operation: {paths: [\"/other\"]}}]\n")), req(), Some(false)),
        c("DRYRUN dry-run is not enforced", "dry-run DENY does not deny", "metadata: {name: d, namespace: default, annotations: {istio.io/dry-run: \"true\"}}\nspec:\n  action: DENY\n  rules:\n  - {}\n".into(), req(), Some(true)),
        c("DRYRUN dry-run is not enforced", "dry-run ALLOW does not create default deny", "metadata: {name: p, namespace: default, annotations: {istio.io/dry-run: \"true\"}}\nspec:\n  rules:\n  - to: [{operation: {paths: [\"/other\"]}}]\n".into(), req(), Some(true)),
        c("BUILDER dry-run-mix", "dry-run false is enforced", "metadata: {name: p, namespace: default, annotations: {istio.io/dry-run: \"false\"}}\nspec:\n  rules:\n  - to: [{operation: {paths: [\"/another\"]}}]\n".into(), req(), Some(false)),
        c("CONCEPTS HTTP fields on TCP: ALLOW rule dropped", "ALLOW with paths on TCP denies", allow("  - to: [{operation: {paths: [\"/info\"]}}]\n"), tcp.clone(), Some(false)),
        c("CONCEPTS HTTP fields on TCP: ALLOW rule dropped", "ALLOW with methods on TCP denies", allow("  - to: [{operation: {methods: [\"GET\"]}}]\n"), tcp.clone(), Some(false)),
        c("CONCEPTS HTTP fields on TCP: only the field dropped in DENY", "DENY with paths+ports on TCP denies by port", deny("  - to: [{operation: {paths: [\"/x\"], ports: [\"80\"]}}]\n"), tcp.clone(), Some(false)),
        c("CONCEPTS HTTP fields on TCP: only the field dropped in DENY", "DENY with requestPrincipals + namespaces on TCP", deny("  - from: [{source: {requestPrincipals: [\"*\"], namespaces: [\"default\"]}}]\n"), tcp.clone(), Some(false)),
        c("BUILDER tcp/allow-only-http", "ALLOW with TCP-only fields on TCP allows", allow("  - from: [{source: {namespaces: [\"default\"]}}]\n"), tcp.clone(), Some(true)),
        c("CONCEPTS HTTP fields on TCP", "DENY with header condition on TCP denies", deny("  - when: [{key: \"request.headers[x]\", values: [\"y\"]}]\n"), tcp.clone(), Some(false)),
        c("NORMALIZATION BASE decodes unreserved escapes", "/%61dmin denied as /admin", deny_admin.clone(), with_path("/%61dmin"), Some(false)),
        c("NORMALIZATION BASE resolves dot segments", "/public/../admin denied", deny_admin.clone(), with_path("/public/../admin"), Some(false)),
        c("NORMALIZATION BASE resolves encoded dot segments", "/%2e%2e/admin denied", deny_admin.clone(), with_path("/%2e%2e/admin"), Some(false)),
        c("NORMALIZATION BASE backslash to slash", "\\admin denied", deny_admin.clone(), with_path("\\admin"), Some(false)),
        c("NORMALIZATION BASE rejects %00", "%00 is a 400", deny_admin.clone(), with_path("/adm%00in"), None),
        c("NORMALIZATION escaped slash kept under BASE", "/admin%2Fx matches /admin* prefix", deny_admin.clone(), with_path("/admin%2Fx"), Some(false)),
        c("REF paths match without the query", "query is not part of the path", allow("  - to: [{operation: {paths: [\"/info\"]}}]\n"), with_path("/info?x=1"), Some(true)),
        c("REF path template {*}", "one segment matches", allow("  - to: [{operation: {paths: [\"/api/{*}/item\"]}}]\n"), with_path("/api/v1/item"), Some(true)),
        c("REF path template {*}", "two segments do not", allow("  - to: [{operation: {paths: [\"/api/{*}/item\"]}}]\n"), with_path("/api/v1/v2/item"), Some(false)),
        c("REF path template {**}", "many segments match", allow("  - to: [{operation: {paths: [\"/api/{**}\"]}}]\n"), with_path("/api/a/b/c"), Some(true)),
        c("REF path template {**}", "prefix itself does not", allow("  - to: [{operation: {paths: [\"/api/{**}\"]}}]\n"), with_path("/api"), Some(false)),
        c("BUILDER allow-full-rule /{**}/path/template", "leading {**}", allow("  - to: [{operation: {paths: [\"/{**}/path/template\"]}}]\n"), with_path("/a/b/path/template"), Some(true)),
        c("REF hosts are case-insensitive", "uppercase host matches", allow("  - to: [{operation: {hosts: [\"httpbin.default\"]}}]\n"), with_host("HTTPBIN.default"), Some(true)),
        c("REF hosts are port-sensitive", "host with port does not match bare host", allow("  - to: [{operation: {hosts: [\"httpbin.default\"]}}]\n"), with_host("httpbin.default:8000"), Some(false)),
        c("REF hosts are port-sensitive", "host with port matches host:port", allow("  - to: [{operation: {hosts: [\"httpbin.default:8000\"]}}]\n"), with_host("httpbin.default:8000"), Some(true)),
        c("REF Operation.ports", "port matches", allow("  - to: [{operation: {ports: [\"80\"]}}]\n"), with_port(80), Some(true)),
        c("REF Operation.ports", "other port denied", allow("  - to: [{operation: {ports: [\"80\"]}}]\n"), with_port(8080), Some(false)),
        c("REF Operation.notPorts", "notPorts excludes", allow("  - to: [{operation: {notPorts: [\"8080\"]}}]\n"), with_port(8080), Some(false)),
        c("REF Operation.notPorts", "notPorts allows others", allow("  - to: [{operation: {notPorts: [\"8080\"]}}]\n"), with_port(80), Some(true)),
        c("REF Source.ipBlocks", "CIDR contains source", allow("  - from: [{source: {ipBlocks: [\"192.0.2.0/24\"]}}]\n"), req(), Some(true)),
        c("REF Source.ipBlocks", "single IP", allow("  - from: [{source: {ipBlocks: [\"192.0.2.10\"]}}]\n"), req(), Some(true)),
        c("REF Source.ipBlocks", "outside CIDR denied", allow("  - from: [{source: {ipBlocks: [\"203.0.113.0/24\"]}}]\n"), req(), Some(false)),
        c("REF Source.ipBlocks", "source outside the CIDR denied", allow("  - from: [{source: {ipBlocks: [\"192.0.2.0/28\"]}}]\n"), with_ip("192.0.2.200"), Some(false)),
        c("REF Source.notIpBlocks", "notIpBlocks excludes", allow("  - from: [{source: {notIpBlocks: [\"192.0.2.0/24\"]}}]\n"), req(), Some(false)),
        c("REF Source.notIpBlocks", "notIpBlocks allows others", allow("  - from: [{source: {notIpBlocks: [\"203.0.113.0/24\"]}}]\n"), req(), Some(true)),
        c("REF Source.remoteIpBlocks", "remote IP in CIDR", allow("  - from: [{source: {remoteIpBlocks: [\"192.0.2.0/28\"]}}]\n"), req(), Some(true)),
        c("REF Source.notRemoteIpBlocks", "remote IP excluded", allow("  - from: [{source: {notRemoteIpBlocks: [\"192.0.2.0/28\"]}}]\n"), req(), Some(false)),
        c("CONDITIONS source.ip", "source.ip CIDR", allow("  - when: [{key: source.ip, values: [\"192.0.2.0/24\"]}]\n"), req(), Some(true)),
        c("CONDITIONS source.ip", "source.ip notValues", allow("  - when: [{key: source.ip, notValues: [\"192.0.2.10\"]}]\n"), req(), Some(false)),
        c("CONDITIONS remote.ip", "remote.ip", allow("  - when: [{key: remote.ip, values: [\"192.0.2.10\"]}]\n"), req(), Some(true)),
        c("CONDITIONS destination.ip", "destination.ip matches the VIP", allow("  - when: [{key: destination.ip, values: [\"198.51.100.0/24\"]}]\n"), req(), Some(true)),
        c("CONDITIONS destination.ip", "destination.ip other", allow("  - when: [{key: destination.ip, values: [\"203.0.113.1\"]}]\n"), req(), Some(false)),
        c("CONDITIONS destination.port", "destination.port", allow("  - when: [{key: destination.port, values: [\"80\"]}]\n"), req(), Some(true)),
        c("CONDITIONS destination.port", "destination.port notValues", allow("  - when: [{key: destination.port, notValues: [\"80\"]}]\n"), req(), Some(false)),
        c("CONDITIONS connection.sni", "no SNI: values cannot match", allow("  - when: [{key: connection.sni, values: [\"*\"]}]\n"), req(), Some(false)),
        c("CONDITIONS connection.sni", "no SNI: notValues match", allow("  - when: [{key: connection.sni, notValues: [\"x.com\"]}]\n"), req(), Some(true)),
        c("CONDITIONS request.auth.audiences", "one of the audiences", allow("  - when: [{key: request.auth.audiences, values: [\"b\"]}]\n"), Req { jwt: jwt("iss/sub", &["a", "b"], serde_json::json!({})), ..req() }, Some(true)),
        c("CONDITIONS request.auth.audiences", "no matching audience", allow("  - when: [{key: request.auth.audiences, values: [\"c\"]}]\n"), Req { jwt: jwt("iss/sub", &["a", "b"], serde_json::json!({})), ..req() }, Some(false)),
        c("CONDITIONS request.auth.claims nested", "nested claim", allow("  - when: [{key: \"request.auth.claims[nested1][nested2]\", values: [\"deep\"]}]\n"), Req { jwt: jwt("iss/sub", &[], serde_json::json!({"nested1": {"nested2": "deep"}})), ..req() }, Some(true)),
        c("CONDITIONS request.auth.claims list", "list claim contains value", allow("  - when: [{key: \"request.auth.claims[groups]\", values: [\"admins\"]}]\n"), Req { jwt: jwt("iss/sub", &[], serde_json::json!({"groups": ["users", "admins"]})), ..req() }, Some(true)),
        c("CONDITIONS request.auth.claims list", "list claim without value", allow("  - when: [{key: \"request.auth.claims[groups]\", values: [\"root\"]}]\n"), Req { jwt: jwt("iss/sub", &[], serde_json::json!({"groups": ["users"]})), ..req() }, Some(false)),
        c("CONDITIONS source.serviceAccount", "ns/sa", allow("  - when: [{key: source.serviceAccount, values: [\"default/sleep\"]}]\n"), req(), Some(true)),
        c("BUILDER allow-full-rule serviceAccounts", "serviceAccounts ns/sa", allow("  - from: [{source: {serviceAccounts: [\"default/sleep\"]}}]\n"), req(), Some(true)),
        c("BUILDER allow-full-rule serviceAccounts", "serviceAccounts bare sa means policy namespace", allow("  - from: [{source: {serviceAccounts: [\"sleep\"]}}]\n"), req(), Some(true)),
        c("BUILDER allow-full-rule serviceAccounts", "serviceAccounts other sa", allow("  - from: [{source: {serviceAccounts: [\"other/sleep\"]}}]\n"), req(), Some(false)),
        c("BUILDER allow-full-rule notServiceAccounts", "notServiceAccounts excludes", allow("  - from: [{source: {notServiceAccounts: [\"default/sleep\"]}}]\n"), req(), Some(false)),
        c("REF experimental keys", "unsupported experimental key cannot match", allow("  - when: [{key: \"experimental.envoy.filters.a.b[c]\", values: [\"x\"]}]\n"), req(), Some(false)),
        c("REF fields are ANDed within a source", "namespace ok, principal wrong", allow("  - from: [{source: {namespaces: [\"default\"], principals: [\"cluster.local/ns/default/sa/other\"]}}]\n"), req(), Some(false)),
        c("REF sources are ORed", "second source matches", allow("  - from: [{source: {namespaces: [\"other\"]}}, {source: {namespaces: [\"default\"]}}]\n"), req(), Some(true)),
        c("REF from, to and when are ANDed", "from ok, to wrong", allow("  - from: [{source: {namespaces: [\"default\"]}}]\n    to: [{operation: {methods: [\"POST\"]}}]\n"), req(), Some(false)),
        c("REF conditions are ANDed", "one condition fails", allow("  - when: [{key: source.namespace, values: [\"default\"]}, {key: destination.port, values: [\"9\"]}]\n"), req(), Some(false)),
        c("REF rules are ORed", "second rule matches", allow("  - to: [{operation: {paths: [\"/x\"]}}]\n  - to: [{operation: {paths: [\"/info\"]}}]\n"), req(), Some(true)),
        c("REF values are ORed", "second value matches", allow("  - to: [{operation: {methods: [\"POST\", \"GET\"]}}]\n"), req(), Some(true)),
        c("REF header values joined", "repeated header joins with comma", allow("  - when: [{key: \"request.headers[x-a]\", values: [\"1,2\"]}]\n"), Req { headers: vec![("x-a", "1"), ("x-a", "2")], ..req() }, Some(true)),
        c("REF header names are case-insensitive", "key uses capitals", allow("  - when: [{key: \"request.headers[X-Token]\", values: [\"t\"]}]\n"), Req { headers: vec![("x-token", "t")], ..req() }, Some(true)),
        c("REF principals without spiffe://", "principal in Istio form", allow("  - from: [{source: {principals: [\"cluster.local/ns/default/sa/sleep\"]}}]\n"), req(), Some(true)),
        c("CONCEPTS CUSTOM fails closed without a provider", "CUSTOM with no reachable provider denies", "metadata: {name: c, namespace: default}\nspec:\n  action: CUSTOM\n  provider: {name: ext}\n  rules:\n  - {}\n".into(), req(), Some(false)),
        c("CONCEPTS CUSTOM only for matching requests", "CUSTOM not matching leaves the request allowed", "metadata: {name: c, namespace: default}\nspec:\n  action: CUSTOM\n  provider: {name: ext}\n  rules:\n  - to: [{operation: {paths: [\"/admin\"]}}]\n".into(), req(), Some(true)),
        c("REF spec: {} in DENY denies nothing", "empty DENY spec allows", "metadata: {name: d, namespace: default}\nspec:\n  action: DENY\n".into(), req(), Some(true)),
        c("REF rules: [{}] in DENY denies everything", "DENY with empty rule denies", deny("  - {}\n"), req(), Some(false)),
    ]
}

#[test]
fn decision_table() {
    let mut cases = field_cases();
    cases.extend(explicit_cases());
    assert!(cases.len() >= 150, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let got = decide(&c.policies, &c.req);
        if got != c.want {
            failures.push(format!(
                "#{i} [{}] {}: got {got:?}, want {:?}",
                c.source, c.what, c.want
            ));
        }
    }
    println!("{} authorization cases", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
