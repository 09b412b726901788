//! Strict fields (issue 19): a misspelled field in a Gateway API route, a
//! RequestAuthentication or a Telemetry is refused with the field named, as
//! `kubectl --validate=strict` would, instead of being ignored.

use filters::source::SourceOptions;

fn load_with(extra: &str) -> Result<(), String> {
    let base = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/local-config/mesh.yaml"),
    )
    .unwrap();
    let text = format!("{base}\n---\n{extra}");
    kube_config::parse(&text)
        .and_then(|o| kube_config::translate(&o, &SourceOptions::default(), 1, "file:test".into()))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn the_base_configuration_loads() {
    load_with("apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n").unwrap();
}

#[test]
fn misspelled_route_fields_are_refused_by_name() {
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: demo}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 80}]\n  rules:\n  - backendRefs: [{name: echo, port: 80, wieght: 10}]\n";
    let e = load_with(route).unwrap_err();
    assert!(e.contains("wieght"), "{e}");
    let route = route.replace("wieght", "weight");
    load_with(&route).unwrap();
    let typo = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: demo}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 80}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /admin}, method: GET, header: []}]\n    backendRefs: [{name: echo, port: 80}]\n";
    let e = load_with(typo).unwrap_err();
    assert!(e.contains("header"), "{e}");
}

#[test]
fn misspelled_request_authentication_and_telemetry_fields_are_refused_by_name() {
    let ra = "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: demo}\nspec:\n  jwtRules:\n  - issuer: https://issuer\n    jwksUri: https://issuer/keys\n    forwardOrignalToken: true\n";
    let e = load_with(ra).unwrap_err();
    assert!(e.contains("forwardOrignalToken"), "{e}");
    let tel = "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: t, namespace: demo}\nspec:\n  tracing:\n  - randomSamplingPercentge: 10\n";
    let e = load_with(tel).unwrap_err();
    assert!(e.contains("randomSamplingPercentge"), "{e}");
}

#[test]
fn tcp_route_fields_are_strict() {
    let route = "apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: TCPRoute\nmetadata: {name: t, namespace: demo}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 80}]\n  rules:\n  - backendRefs: [{name: echo, port: 80, weight: 1}]\n";
    load_with(route).unwrap();
    // TCPRoute backendRefs have no filters (unlike HTTPRoute's).
    let e = load_with(&route.replace("weight: 1", "filters: []")).unwrap_err();
    assert!(
        e.contains("spec.rules[0].backendRefs[0]") && e.contains("filters"),
        "{e}"
    );
    let e = load_with(&route.replace("  - backendRefs", "  - matches: []\n    backendRefs"))
        .unwrap_err();
    assert!(e.contains("spec.rules[0]") && e.contains("matches"), "{e}");
}
