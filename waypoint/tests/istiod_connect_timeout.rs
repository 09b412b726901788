//! The cluster's `connect_timeout` as istiod writes it for a waypoint: DestinationRule
//! `connectionPool.tcp.connectTimeout`, else MeshConfig `connectTimeout` (10 s by default)
//! (pilot/pkg/networking/core/cluster_traffic_policy.go applyConnectionPool, and
//! cluster_builder.go applyDefaultConnectionPool; cluster_waypoint.go
//! buildWaypointInboundVIPCluster applies them to the `inbound-vip` cluster), served over
//! Delta ADS to a real waypoint process. The pod's ztunnel accepts TCP and never answers
//! the TLS handshake, so the HBONE tunnel never opens.

mod istiod;

use std::time::{Duration, Instant};

use istiod::*;
use serde_json::json;
use testkit::silent::SilentListener;

/// A "pod" whose HBONE port accepts connections and stays silent.
async fn silent_pod() -> (IpAddr, SilentListener) {
    let ip = testkit::free_loopback_ip(15008);
    let l = SilentListener::bind(SocketAddr::new(ip, 15008))
        .await
        .unwrap();
    (ip, l)
}

#[tokio::test]
async fn a_pod_that_never_completes_the_handshake_fails_after_connect_timeout_and_is_retried() {
    let (ip, silent) = silent_pod().await;
    let w = start(|ls, cs, es| {
        set_only_endpoint(es, CLUSTER_8100, ip);
        edit_cluster(cs, CLUSTER_8100, |c| {
            c["connect_timeout"] = json!("0.300s");
        });
        // The retry policy istiod puts on waypoint routes (route/retry/retry.go).
        fixture::prepend_routes(
            ls,
            8100,
            &[json!({"name": "default.retry.0", "match": {"prefix": "/"},
                     "route": {"cluster": CLUSTER_8100, "retry_policy": {
                         "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                         "num_retries": 2,
                         "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
                         "host_selection_retry_max_attempts": "5",
                         "retriable_status_codes": [503]}}})],
        );
    })
    .await;
    let started = Instant::now();
    let a = tokio::time::timeout(Duration::from_secs(8), get(&w, 8100, "/get"))
        .await
        .expect("answered long before the default");
    let took = started.elapsed();
    assert_eq!(a.status, 503);
    let body = String::from_utf8_lossy(&a.body);
    assert!(body.contains("reset reason: connection timeout"), "{body}");
    // Three attempts (connect-failure is retried twice), each given up after 300 ms.
    assert_eq!(silent.accepted(), 3, "one connection per attempt");
    assert!(
        took >= Duration::from_millis(850) && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
}

#[tokio::test]
async fn a_zero_connect_timeout_is_nacked_by_field() {
    let w = start(|_, cs, _| {
        edit_cluster(cs, CLUSTER_8100, |c| c["connect_timeout"] = json!("0s"));
    })
    .await;
    let e = nack(&w).await;
    assert!(
        e.contains(CLUSTER_8100) && e.contains("connect_timeout"),
        "{e}"
    );
}

#[tokio::test]
async fn a_cluster_field_no_translator_reads_is_nacked_by_name() {
    // istiod never writes per_connection_buffer_limit_bytes for a waypoint cluster.
    let w = start(|_, cs, _| {
        edit_cluster(cs, CLUSTER_8100, |c| {
            c["per_connection_buffer_limit_bytes"] = json!(32768)
        });
    })
    .await;
    let e = nack(&w).await;
    assert!(
        e.contains(CLUSTER_8100) && e.contains("per_connection_buffer_limit_bytes"),
        "{e}"
    );
}
