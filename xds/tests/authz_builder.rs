//! Istio's own AuthorizationPolicy inputs (pilot/pkg/security/authz/builder testdata, in
//! `../shared/testdata/istio/authz-builder/`): every one loads and compiles, and a sample of
//! them decides as the Envoy RBAC Istio generates from them does (the `*-out.yaml` files).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use filters::authz::{evaluate, Attributes, HttpAttributes};
use kube_config::authz::{compile, AuthorizationPolicy};

fn testdata() -> PathBuf {
    std::env::var("WAYPOINT_ISTIO_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/istio/authz-builder")
        })
}

fn load(path: &Path) -> Vec<AuthorizationPolicy> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .map(|v| serde_yaml::from_value(v).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

fn compiled(name: &str) -> Vec<Arc<filters::authz::model::Policy>> {
    load(&testdata().join(name))
        .iter()
        .map(|p| Arc::new(compile(p).unwrap()))
        .collect()
}

#[test]
fn every_input_compiles() {
    let mut count = 0;
    for dir in ["http", "tcp"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(testdata().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with("-in.yaml"))
            .collect();
        files.sort();
        assert!(!files.is_empty());
        for f in files {
            for p in load(&f) {
                compile(&p)
                    .unwrap_or_else(|(field, msg)| panic!("{}: {field}: {msg}", f.display()));
                count += 1;
            }
        }
    }
    println!("{count} policies compiled");
    assert!(count >= 40, "{count}");
}

fn http_request(principal: &str, path: &'static str) -> (Attributes<'static>, http::HeaderMap) {
    let attrs = Attributes {
        principal: Some(principal.to_string().into()),
        namespace: Some("foo".into()),
        service_account: Some("sa".into()),
        destination_port: Some(80),
        ..Default::default()
    };
    let _ = path;
    (attrs, http::HeaderMap::new())
}

fn decide(
    policies: &[Arc<filters::authz::model::Policy>],
    principal: &str,
    path: &'static str,
) -> bool {
    let (mut attrs, headers) = http_request(principal, path);
    attrs.http = Some(HttpAttributes {
        path_and_query: None,
        method: "GET",
        host: "httpbin.foo",
        path,
        query: None,
        headers: &headers,
        auth: None,
    });
    evaluate(policies, &attrs, None).verdict.allowed()
}

#[test]
fn deny_and_allow_decides_like_the_generated_rbac() {
    // deny-and-allow-out1: DENY principal "deny"; out2: ALLOW principal "allow".
    let p = compiled("http/deny-and-allow-in.yaml");
    assert!(!decide(&p, "deny", "/"));
    assert!(decide(&p, "allow", "/"));
    assert!(!decide(&p, "someone", "/"));
}

#[test]
fn allow_path_decides_like_the_generated_rbac() {
    // allow-path-out: paths OR-ed (exact, prefix, suffix, presence, templates) AND NOT the
    // notPaths list, which includes "*": every non-empty path is excluded.
    let p = compiled("http/allow-path-in.yaml");
    assert!(!decide(&p, "x", "/exact"));
    assert!(!decide(&p, "x", "/prefix/a"));
}

#[test]
fn dry_run_mix_enforces_only_the_non_dry_run_policy() {
    // dry-run-mix-out: only httpbin-2 (dry-run false, paths /another) is in the enforced
    // RBAC; httpbin-1 (dry-run true) is in the shadow rules.
    let p = compiled("http/dry-run-mix-in.yaml");
    assert!(decide(&p, "x", "/another"));
    assert!(!decide(&p, "x", "/allow"));
}
