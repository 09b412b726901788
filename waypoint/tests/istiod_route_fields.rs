//! Route fields istiod writes besides matches, clusters and `timeout`, served over Delta
//! ADS to a real waypoint process, and route fields no translator reads (NACKed by name):
//! every route's `max_grpc_timeout` (the route's timeout, `0s` for
//! none: `setTimeout` in pilot/pkg/networking/core/route/route.go; the 1.21 dump's
//! routes carry the older `max_stream_duration.grpc_timeout_header_max: 0s`), under which
//! a gRPC request's `grpc-timeout` header sets its timeout, and the retry policy's
//! `per_try_timeout` (VirtualService `retries.perTryTimeout`, an HTTPRoute's
//! `timeouts.backendRequest`: route/retry/retry.go ConvertPolicy), and a weighted
//! cluster's header changes and host rewrite (VirtualService destination `headers`).

mod istiod;

use std::time::{Duration, Instant};

use istiod::*;
use serde_json::json;

#[tokio::test]
async fn a_grpc_timeout_header_ends_a_grpc_request_on_time() {
    let w = start(|_, _, _| {}).await;
    let grpc = [
        ("content-type", "application/grpc"),
        ("grpc-timeout", "300m"),
    ];
    let started = Instant::now();
    let a = tokio::time::timeout(
        Duration::from_secs(10),
        send(&w, 8100, "GET", "/get?delay=3s", &grpc),
    )
    .await
    .expect("answered");
    let took = started.elapsed();
    // A gRPC local reply: HTTP 200, 504 mapped to UNAVAILABLE.
    assert_eq!(a.header("grpc-status"), Some("14"), "{:?}", a.headers);
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "answered after {took:?}"
    );
    // Without the header the route has no timeout: the pod's answer comes.
    let a = send(
        &w,
        8100,
        "GET",
        "/get?delay=500ms",
        &[("content-type", "application/grpc")],
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("grpc-status"), None, "{:?}", a.headers);
}

#[tokio::test]
async fn per_try_timeout_ends_each_attempt() {
    let w = start(|ls, _, _| {
        fixture::prepend_routes(
            ls,
            8100,
            &[json!({"name": "default.0", "match": {"prefix": "/"},
                     "route": {"cluster": CLUSTER_8100, "timeout": "0s",
                         "max_grpc_timeout": "0s",
                         "retry_policy": {"retry_on": "connect-failure", "num_retries": 0,
                             "per_try_timeout": "0.300s"}}})],
        );
    })
    .await;
    let started = Instant::now();
    let a = tokio::time::timeout(Duration::from_secs(10), get(&w, 8100, "/get?delay=3s"))
        .await
        .expect("answered");
    let took = started.elapsed();
    assert_eq!(a.status, 504);
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "answered after {took:?}"
    );
}

#[tokio::test]
async fn a_route_field_no_translator_reads_is_nacked_by_name() {
    // istiod never writes a route's idle_timeout for a waypoint.
    let w = start(|ls, _, _| {
        fixture::prepend_routes(
            ls,
            8100,
            &[json!({"name": "default.0", "match": {"prefix": "/"},
                     "route": {"cluster": CLUSTER_8100, "idle_timeout": "5s"}})],
        );
    })
    .await;
    let e = nack(&w).await;
    assert!(e.contains("routes[0].route.idle_timeout"), "{e}");
}

#[tokio::test]
async fn per_backend_headers_and_host_rewrite_apply() {
    // VirtualService destination `headers` (route.go processWeightedDestination: the
    // `weighted_clusters` entry's header changes and `host_rewrite_literal`).
    let w = start(|ls, _, _| {
        fixture::prepend_routes(
            ls,
            8100,
            &[json!({"name": "default.0", "match": {"prefix": "/"},
                     "route": {"weighted_clusters": {"clusters": [{"name": CLUSTER_8100, "weight": 100,
                         "request_headers_to_add": [{"header": {"key": "x-backend", "value": "v1"},
                             "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
                         "request_headers_to_remove": ["x-drop"],
                         "response_headers_to_add": [{"header": {"key": "x-served-by", "value": "v1"},
                             "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}],
                         "host_rewrite_literal": "rewritten.example"}]}}})],
        );
    })
    .await;
    let a = send(&w, 8100, "GET", "/get", &[("x-drop", "1")]).await;
    assert_eq!(a.status, 200);
    let echo = a.echo();
    assert_eq!(echo["headers"]["X-Backend"], json!(["v1"]), "{echo}");
    assert!(echo["headers"].get("X-Drop").is_none(), "{echo}");
    assert_eq!(echo["host"], "rewritten.example", "{echo}");
    assert_eq!(a.header("x-served-by"), Some("v1"));
}

#[tokio::test]
async fn on_a_conflicting_set_the_outer_level_wins_as_in_envoy() {
    // Envoy applies a `weighted_clusters` entry's header changes first, then the route's,
    // then the virtual host's (`most_specific_header_mutations_wins` unset), so the outer
    // level's `set` is what the pod and the client see. The backend's changes are a
    // VirtualService destination's `headers` (route.go processWeightedDestination), the
    // route's the rule's `headers` (route.go translateRoute).
    let set = |key: &str, value: &str| {
        json!({"header": {"key": key, "value": value},
               "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"})
    };
    let backend = json!({"name": CLUSTER_8100, "weight": 100,
        "request_headers_to_add": [set("x-level", "backend"), set("x-backend-only", "backend")],
        "response_headers_to_add": [set("x-level", "backend")]});
    let route = json!({"name": "default.0", "match": {"prefix": "/"},
        "request_headers_to_add": [set("x-level", "route"), set("x-vh", "route")],
        "response_headers_to_add": [set("x-level", "route"), set("x-vh", "route")],
        "route": {"weighted_clusters": {"clusters": [backend]}}});
    let w = start(move |ls, _, _| {
        fixture::prepend_routes(ls, 8100, std::slice::from_ref(&route));
        fixture::edit_listener(ls, |json| {
            for chain in json["filter_chains"].as_array_mut().unwrap() {
                if chain["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("inbound-vip|8100|"))
                {
                    let vh = &mut chain["filters"][0]["typed_config"]["route_config"]
                        ["virtual_hosts"][0];
                    vh["request_headers_to_add"] = json!([set("x-vh", "virtual-host")]);
                    vh["response_headers_to_add"] = json!([set("x-vh", "virtual-host")]);
                }
            }
        });
    })
    .await;
    let a = send(&w, 8100, "GET", "/get", &[("x-level", "client")]).await;
    assert_eq!(a.status, 200);
    let echo = a.echo();
    assert_eq!(echo["headers"]["X-Level"], json!(["route"]), "{echo}");
    assert_eq!(echo["headers"]["X-Vh"], json!(["virtual-host"]), "{echo}");
    assert_eq!(
        echo["headers"]["X-Backend-Only"],
        json!(["backend"]),
        "{echo}"
    );
    assert_eq!(a.header("x-level"), Some("route"), "{:?}", a.headers);
    assert_eq!(a.header("x-vh"), Some("virtual-host"), "{:?}", a.headers);
}

#[tokio::test]
async fn other_per_backend_settings_are_nacked_by_name() {
    let w = start(|ls, _, _| {
        fixture::prepend_routes(
            ls,
            8100,
            &[json!({"name": "default.0", "match": {"prefix": "/"},
                     "route": {"weighted_clusters": {"clusters": [{"name": CLUSTER_8100, "weight": 100,
                         "metadata_match": {"filter_metadata": {"envoy.lb": {"v": "1"}}}}]}}})],
        );
    })
    .await;
    let e = nack(&w).await;
    assert!(
        e.contains("weighted_clusters.clusters[0].metadata_match"),
        "{e}"
    );
}
