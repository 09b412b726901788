//! Dual-stack endpoints as istiod writes them with `ISTIO_DUAL_STACK` on
//! (pilot/pkg/xds/endpoints/endpoint_builder.go, buildEnvoyLbEndpoint): a pod reached
//! without a tunnel gets its first IP as the endpoint's `address` and each further IP as
//! an `additional_addresses` socket address on the same port (a pod in the mesh, reached
//! over HBONE, gets its first IP only). Served over Delta ADS to a real waypoint process,
//! which tries the addresses in turn as Envoy's Happy Eyeballs does.
//!
//! A real dual-stack pod has an IPv4 and an IPv6 address; these tests use two IPv4
//! loopback addresses (127.0.0.0/8 only, as every test here) for the pod's two IPs: the
//! order of attempts, the move to the next address and the 300 ms delay do not depend on
//! the family.

mod istiod;

use std::time::{Duration, Instant};

use istiod::*;
use serde_json::json;

/// httpbin's port 8100 served by one pod outside the mesh whose address is `primary` and
/// whose additional address is `additional`, both on 8080, in istiod's shape: no tunnel
/// (the pod does not support HBONE), `Addresses[0]` as the address and `Addresses[1:]` as
/// `additional_addresses` (buildEnvoyLbEndpoint), the `istio.workload` metadata and no
/// `envoy.transport_socket_match` for a pod without Istio mTLS (AppendLbEndpointMetadata,
/// pilot/pkg/networking/util/util.go).
fn dual_stack_endpoint(es: &mut Named, primary: IpAddr, additional: IpAddr) {
    let cla = json!({"cluster_name": CLUSTER_8100, "endpoints": [{
        "locality": {},
        "lb_endpoints": [{
            "endpoint": {
                "address": {"socket_address": {"address": primary.to_string(), "port_value": 8080}},
                "additional_addresses": [{"address": {"socket_address": {
                    "address": additional.to_string(), "port_value": 8080}}}]
            },
            "health_status": "HEALTHY",
            "metadata": {"filter_metadata": {"istio": {
                "workload": "httpbin-ds;default;httpbin;v1;Kubernetes"}}},
            "load_balancing_weight": 1
        }],
        "load_balancing_weight": 1
    }]});
    let cla: envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment =
        xds::envoy::from_json("envoy.config.endpoint.v3.ClusterLoadAssignment", &cla).unwrap();
    let (_, e) = es.iter_mut().find(|(n, _)| n == CLUSTER_8100).unwrap();
    *e = fixture::any(ENDPOINT, &cla);
}

/// The pod's second IP, serving the echo app over plain TCP on 8080.
async fn pod_at_second_ip() -> (IpAddr, tokio::task::JoinHandle<()>) {
    let ip = testkit::free_loopback_ip(8080);
    let server = testkit::echo::serve_plain(
        SocketAddr::new(ip, 8080),
        testkit::echo::EchoIdentity {
            pod: "httpbin-ds".into(),
            namespace: "default".into(),
        },
    )
    .await
    .unwrap();
    (ip, server)
}

#[tokio::test]
async fn a_refused_address_moves_on_to_the_additional_address() {
    let (second, _pod) = pod_at_second_ip().await;
    // Nothing listens on the first IP: connecting there is refused.
    let first = testkit::free_loopback_ip(8080);
    let w = start(|_, _, es| dual_stack_endpoint(es, first, second)).await;
    let a = get(&w, 8100, "/get").await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.echo()["pod"], "httpbin-ds");
    // Again, on the pooled connection or a new one: the same pod answers.
    let b = get(&w, 8100, "/get").await;
    assert_eq!(b.status, 200);
}

#[tokio::test]
async fn a_connect_that_hangs_gets_the_additional_address_tried_beside_it_after_300ms() {
    let (second, _pod) = pod_at_second_ip().await;
    // The first IP drops SYNs (a full accept queue): its connect neither succeeds nor
    // fails within the cluster's 10 s connect timeout.
    let first = testkit::free_loopback_ip(8080);
    let hanging = testkit::full_backlog::FullBacklog::bind(SocketAddr::new(first, 8080))
        .await
        .unwrap();
    assert!(hanging.hangs(Duration::from_millis(200)).await);
    let w = start(|_, _, es| dual_stack_endpoint(es, first, second)).await;
    let started = Instant::now();
    let a = tokio::time::timeout(Duration::from_secs(5), get(&w, 8100, "/get"))
        .await
        .expect("answered well before the 10 s connect timeout");
    let took = started.elapsed();
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.echo()["pod"], "httpbin-ds");
    assert!(
        took >= Duration::from_millis(300),
        "the second address is tried 300 ms after the first, not before: {took:?}"
    );
}

#[tokio::test]
async fn an_endpoint_whose_every_address_refuses_answers_503_uf() {
    let first = testkit::free_loopback_ip(8080);
    let second = testkit::free_loopback_ip(8080);
    let w = start(|_, _, es| dual_stack_endpoint(es, first, second)).await;
    let a = get(&w, 8100, "/get").await;
    assert_eq!(a.status, 503);
    let body = String::from_utf8_lossy(&a.body);
    assert!(body.contains("reset reason: connection failure"), "{body}");
}

#[tokio::test]
async fn an_additional_address_on_another_port_is_nacked_by_field() {
    let first = testkit::free_loopback_ip(8080);
    let w = start(|_, _, es| {
        dual_stack_endpoint(es, first, first);
        let (_, e) = es.iter_mut().find(|(n, _)| n == CLUSTER_8100).unwrap();
        let mut cla = <envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as prost::Message>::decode(e.value.as_slice()).unwrap();
        let mut json =
            xds::envoy::to_json("envoy.config.endpoint.v3.ClusterLoadAssignment", &cla).unwrap();
        json["endpoints"][0]["lb_endpoints"][0]["endpoint"]["additional_addresses"][0]["address"]
            ["socket_address"]["port_value"] = json!(8081);
        cla = xds::envoy::from_json("envoy.config.endpoint.v3.ClusterLoadAssignment", &json)
            .unwrap();
        *e = fixture::any(ENDPOINT, &cla);
    })
    .await;
    let e = nack(&w).await;
    assert!(
        e.contains(CLUSTER_8100)
            && e.contains("endpoints[0].lb_endpoints[0].endpoint.additional_addresses[0].address.socket_address.port_value"),
        "{e}"
    );
}
