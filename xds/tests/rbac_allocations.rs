//! RBAC evaluation runs for every request on the istiod path, so its matchers must borrow
//! from the request instead of copying it. Counts the heap allocations of one evaluation
//! of Istio-shaped policies (a DENY and an ALLOW filter, as istiod emits them) with a
//! counting allocator; the count is deterministic. The configs are loaded through the
//! protobuf converter istiod's configs go through (`xds::translate::rbac`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use filters::authz::{Attributes, HttpAttributes, JwtAuth};
use filters::rbac::{evaluate_chain, RbacConfig, RbacInput};
use http::HeaderMap;
use xds::translate::rbac::from_proto_yaml;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    (out, ALLOCATIONS.with(Cell::get) - before)
}

fn config(action: &str, name: &str, permissions: &str, principals: &str) -> RbacConfig {
    from_proto_yaml(&format!(
        "'@type': type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC\nrules:\n  action: {action}\n  policies:\n    {name}:\n      permissions: [{permissions}]\n      principals: [{principals}]\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A GET from `foo/sleep` to `/API/items` with `headers` and a validated JWT.
fn request<'a>(headers: &'a HeaderMap, jwt: &'a JwtAuth) -> Attributes<'a> {
    Attributes {
        principal_uri: None,
        principal: Some("cluster.local/ns/foo/sa/sleep".into()),
        namespace: Some("foo".into()),
        service_account: Some("sleep".into()),
        source_ip: Some("10.0.0.1".parse().unwrap()),
        remote_ip: Some("10.0.0.1".parse().unwrap()),
        destination_ip: Some("10.96.0.10".parse().unwrap()),
        destination_port: Some(8080),
        sni: None,
        http: Some(HttpAttributes {
            path_and_query: None,
            method: "GET",
            host: "echo.foo:80",
            path: "/API/items",
            query: None,
            headers,
            auth: Some(jwt),
        }),
    }
}

const PEER: &str = "{andIds: {ids: [{orIds: {ids: [{filterState: {key: io.istio.peer_principal, stringMatch: {exact: 'spiffe://cluster.local/ns/foo/sa/sleep'}}}]}}]}}";

#[test]
fn evaluating_istio_shaped_policies_copies_nothing_from_the_request() {
    let deny = config(
        "DENY",
        "ns[foo]-policy[deny-admin]-rule[0]",
        "{andRules: {rules: [{orRules: {rules: [{urlPath: {path: {prefix: /admin}}}]}}]}}",
        "{any: true}",
    );
    let allow = config(
        "ALLOW",
        "ns[foo]-policy[allow-get]-rule[0]",
        "{andRules: {rules: [{orRules: {rules: [{header: {name: ':method', stringMatch: {exact: GET}}}]}}, {orRules: {rules: [{urlPath: {path: {prefix: /api/, ignoreCase: true}}}]}}, {orRules: {rules: [{header: {name: x-tenant, stringMatch: {suffix: -A, ignoreCase: true}}}]}}, {orRules: {rules: [{metadata: {filter: envoy.filters.http.jwt_authn, path: [{key: payload}, {key: group}], value: {stringMatch: {exact: dev}}}}]}}]}}",
        PEER,
    );
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", "team-a".parse().unwrap());
    let jwt = JwtAuth {
        principal: "https://issuer/alice".into(),
        audiences: vec!["api".into()],
        presenter: None,
        claims: serde_json::json!({"group": "dev", "sub": "alice", "extra": {"big": [1, 2, 3]}}),
    };
    let attrs = request(&headers, &jwt);
    let (decision, n) = allocations(|| evaluate_chain([&deny, &allow], &RbacInput::new(&attrs)));
    assert!(decision.allowed, "{decision:?}");
    assert_eq!(
        decision.matched,
        vec![(1, "ns[foo]-policy[allow-get]-rule[0]".to_string())]
    );
    // What remains is the decision itself: the `spiffe://` principal, the matched
    // policy's name (in the filter's result and in the chain's list) and that list.
    assert_eq!(n, 4, "allocations for one evaluation");

    // A header sent twice is joined, as Envoy joins it: that one is built.
    headers.append("x-tenant", "other-a".parse().unwrap());
    let attrs = request(&headers, &jwt);
    let (decision, n) = allocations(|| evaluate_chain([&deny, &allow], &RbacInput::new(&attrs)));
    assert!(
        decision.allowed,
        "team-a,other-a ends with -a: {decision:?}"
    );
    assert_eq!(n, 5, "allocations with a repeated header");
}
