//! Cluster shapes istiod generates from DestinationRules (subsets, circuit breakers,
//! outlier detection, locality priorities, TLS origination, PROXY protocol, connection
//! limits), served over Delta ADS to a real waypoint process and checked over HBONE;
//! balancing policies are in `istiod_balancing.rs`.

mod istiod;

use std::time::Duration;

use istiod::*;
use serde_json::json;

#[tokio::test]
async fn destination_rule_subset_clusters_are_accepted_and_routable() {
    let w = start(|ls, cs, es| {
        // A DestinationRule with subset v2 on httpbin: istiod adds the subset cluster
        // whether or not a route names it; here a VirtualService-style route does.
        let canary_eps = "inbound-vip|8000|http|httpbin-v2.default.svc.cluster.local";
        let (c, e) = fixture::subset(cs, es, 8000, "v2", canary_eps);
        cs.push(c);
        es.push(e);
        fixture::prepend_routes(
            ls,
            8000,
            &[json!({"name": "vs.subset", "match": {"prefix": "/subset"},
                     "route": {"cluster": "inbound-vip|8000|http/v2|httpbin.default.svc.cluster.local"}})],
        );
    })
    .await;
    for _ in 0..8 {
        let a = get(&w, 8000, "/subset").await;
        assert_eq!(a.status, 200);
        assert_eq!(
            a.echo()["pod"],
            "httpbin-v2-1",
            "only the subset's endpoints"
        );
    }
    // The Service itself still balances over its own endpoints.
    assert_eq!(get(&w, 8000, "/get").await.echo()["pod"], "httpbin-1");
}

#[tokio::test]
async fn a_circuit_breaker_answers_503_uo_past_its_limit() {
    // DestinationRule connectionPool http.http2MaxRequests: 1 (cluster_traffic_policy.go
    // applyConnectionPool): circuit_breakers max_requests 1 on the cluster.
    let w = start(|_, cs, _| {
        edit_cluster(cs, CLUSTER_8100, |c| {
            c["circuit_breakers"] = json!({"thresholds": [{
                "max_connections": 4294967295u32, "max_pending_requests": 4294967295u32,
                "max_requests": 1, "max_retries": 4294967295u32, "track_remaining": true}]});
        })
    })
    .await;
    let slow = in_background(&w, "/slow?delay=1s");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let over = get(&w, 8100, "/get").await;
    assert_eq!(over.status, 503, "the second request in flight overflows");
    assert_eq!(slow.await.unwrap().0, 200);
    // With the first one done, requests go through again.
    assert_eq!(get(&w, 8100, "/get").await.status, 200);
}

/// A plain HTTP/1.1 server that answers every request with 503 and counts them: a pod
/// whose app is failing.
async fn failing_app() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let reply =
                            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 3\r\n\r\nbad";
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_pod_and_lets_it_back() {
    // DestinationRule outlierDetection {consecutiveGatewayErrors: 2, interval: 1s,
    // baseEjectionTime: 2s, maxEjectionPercent: 100} as cluster_traffic_policy.go
    // applyOutlierDetection writes it: success rate off, the detector enforced at 100, and
    // the panic threshold 0 (minHealthPercent).
    let (app, hits) = failing_app().await;
    let w = start_with_pod(Some(App::Forward(app)), |_, cs, es, extra| {
        add_endpoint(es, CLUSTER_8100, extra.unwrap());
        edit_cluster(cs, CLUSTER_8100, |c| {
            c["lb_policy"] = json!("ROUND_ROBIN");
            c["outlier_detection"] = json!({
                "enforcing_success_rate": 0,
                "consecutive_gateway_failure": 2,
                "enforcing_consecutive_gateway_failure": 100,
                "interval": "1s",
                "base_ejection_time": "2s",
                "max_ejection_percent": 100,
            });
            c["common_lb_config"] = json!({"healthy_panic_threshold": {}});
        });
    })
    .await;
    let count = || hits.load(std::sync::atomic::Ordering::SeqCst);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get(&w, 8100, "/get").await.status);
    }
    // Round robin alternates: the failing pod answers twice, is ejected, and the other
    // pod answers everything after.
    assert_eq!(count(), 2, "statuses {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 2);
    assert!(statuses[4..].iter().all(|s| *s == 200), "{statuses:?}");
    // Once the ejection time is up, the pod is tried again.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    for _ in 0..4 {
        get(&w, 8100, "/get").await;
    }
    assert!(
        count() > 2,
        "the pod is back in rotation after its ejection"
    );
}

/// A pod whose app speaks only TLS (mutual: it requires a client certificate of `ca`),
/// with a certificate for `spiffe://cluster.local/ns/default/sa/httpbin`, and the files the
/// waypoint originates TLS with: the CA, and a client certificate and key.
async fn tls_app(dir: &std::path::Path) -> (testkit::tls_echo::TlsEcho, String, String) {
    let ca = hbone::tls::DevCa::new("app-ca").unwrap();
    let server = ca
        .issue(&filters::model::Identity::new(
            "cluster.local",
            "default",
            "httpbin",
        ))
        .unwrap();
    let app = testkit::tls_echo::TlsEcho::start(
        &server.certs().unwrap(),
        testkit::echo::EchoIdentity {
            pod: "httpbin-tls".into(),
            namespace: "default".into(),
        },
    )
    .await
    .unwrap();
    ca.issue(&filters::model::Identity::new(
        "cluster.local",
        "default",
        "waypoint",
    ))
    .unwrap()
    .write(dir)
    .unwrap();
    let cert = format!(
        "file-cert:{}~{}",
        dir.join("cert-chain.pem").display(),
        dir.join("key.pem").display()
    );
    let root = format!("file-root:{}", dir.join("root-cert.pem").display());
    (app, cert, root)
}

/// DestinationRule `tls: {mode: MUTUAL, clientCertificate, privateKey, caCertificates,
/// subjectAltNames: [san], sni}` as cluster_waypoint.go buildWaypointTLSContext and
/// cluster_tls.go constructUpstreamTLS write it: an `UpstreamTlsContext` inside the
/// `internal_upstream` socket, with the files pilot-agent would serve as SDS secrets.
fn mutual_tls(cert: &str, root: &str, san: &str) -> serde_json::Value {
    let sds = json!({"api_config_source": {"api_type": "GRPC", "grpc_services": [
        {"envoy_grpc": {"cluster_name": "sds-grpc"}}], "set_node_on_first_message_only": true,
        "transport_api_version": "V3"}, "resource_api_version": "V3"});
    json!({
        "name": "internal_upstream",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
            "passthrough_metadata": [{"kind": {"host": {}}, "name": "envoy.filters.listener.original_dst"}],
            "transport_socket": {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "common_tls_context": {
                        "tls_certificate_sds_secret_configs": [{"name": cert, "sds_config": sds}],
                        "combined_validation_context": {
                            "default_validation_context": {"match_subject_alt_names": [{"exact": san}]},
                            "validation_context_sds_secret_config": {"name": root, "sds_config": sds},
                        },
                    },
                    "sni": HOST,
                },
            },
        },
    })
}

/// The world with port 8100's only endpoint a TLS-only pod, and `transport_socket` on its
/// cluster.
async fn tls_world(san: &str) -> (World, tempfile::TempDir, testkit::tls_echo::TlsEcho) {
    let dir = tempfile::tempdir().unwrap();
    let (app, cert, root) = tls_app(dir.path()).await;
    let socket = mutual_tls(&cert, &root, san);
    let w = start_with_pod(Some(App::Forward(app.addr)), |_, cs, es, extra| {
        set_only_endpoint(es, CLUSTER_8100, extra.unwrap());
        edit_cluster(cs, CLUSTER_8100, |c| c["transport_socket"] = socket);
    })
    .await;
    (w, dir, app)
}

#[tokio::test]
async fn destination_rule_tls_is_originated_inside_the_tunnel() {
    let (w, _dir, _app) = tls_world("spiffe://cluster.local/ns/default/sa/httpbin").await;
    let a = get(&w, 8100, "/get").await;
    assert_eq!(a.status, 200, "the TLS-only app answered");
    assert_eq!(a.echo()["pod"], "httpbin-tls");
    assert_eq!(a.echo()["proto"], "HTTP/1.1");
}

#[tokio::test]
async fn a_server_certificate_without_the_required_san_is_refused() {
    let (w, _dir, _app) = tls_world("spiffe://cluster.local/ns/default/sa/other").await;
    let a = get(&w, 8100, "/get").await;
    assert_eq!(
        a.status, 503,
        "no request over an unverified TLS connection"
    );
}

#[tokio::test]
async fn max_retries_caps_the_retries_in_flight() {
    // DestinationRule connectionPool.http.maxRetries: 1 (cluster_traffic_policy.go
    // applyConnectionPool: circuit_breakers max_retries), and a route that retries 503
    // (route/retry/retry.go's shape).
    let w = start(|ls, cs, _| {
        edit_cluster(cs, CLUSTER_8100, |c| {
            c["circuit_breakers"] = json!({"thresholds": [{
                "max_connections": 4294967295u32, "max_pending_requests": 4294967295u32,
                "max_requests": 4294967295u32, "max_retries": 1, "track_remaining": true}]});
        });
        fixture::prepend_routes(
            ls,
            8100,
            &[json!({"name": "default.retry.0", "match": {"prefix": "/retry/"},
                     "route": {"cluster": CLUSTER_8100, "retry_policy": {
                         "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                         "num_retries": 2,
                         "retriable_status_codes": [503]}}})],
        );
    })
    .await;
    // Each path answers 503 once (after 600 ms), then 200: a request needs one retry.
    let a = in_background(
        &w,
        "/retry/a?uuid=a&succeedAfter=1&responseCode=503&delay=600ms",
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // B's first answer comes while A's retry is in flight: its retry would be the second.
    let b = get(
        &w,
        8100,
        "/retry/b?uuid=b&succeedAfter=1&responseCode=503&delay=600ms",
    )
    .await;
    assert_eq!(a.await.unwrap().0, 200, "A was retried");
    assert_eq!(b.status, 503, "B's retry overflowed: its answer stands");
    // With no retry in flight, a retry is allowed again.
    let c = get(&w, 8100, "/retry/c?uuid=c&succeedAfter=1&responseCode=503").await;
    assert_eq!(c.status, 200);
}

/// Moves the last endpoint of `cluster` into a locality of its own with priority 0, and
/// the others to priority 1 (istiod's shape for `trafficDistribution: PreferClose` or
/// locality failover: the near locality first).
fn near_locality_first(es: &mut Named, cluster: &str) {
    use envoy_types::pb::envoy::config::core::v3::Locality;
    use envoy_types::pb::envoy::config::endpoint::v3::{
        ClusterLoadAssignment, LocalityLbEndpoints,
    };
    let (_, e) = es
        .iter_mut()
        .find(|(n, _)| n == cluster)
        .expect("endpoints");
    let mut cla = <ClusterLoadAssignment as prost::Message>::decode(e.value.as_slice()).unwrap();
    let near = cla.endpoints[0].lb_endpoints.pop().unwrap();
    cla.endpoints[0].priority = 1;
    cla.endpoints.push(LocalityLbEndpoints {
        locality: Some(Locality {
            region: "r1".into(),
            zone: "z1".into(),
            ..Default::default()
        }),
        lb_endpoints: vec![near],
        priority: 0,
        ..Default::default()
    });
    *e = fixture::any(ENDPOINT, &cla);
}

#[tokio::test]
async fn the_nearest_priority_takes_traffic_until_its_endpoints_are_ejected() {
    let (app, hits) = failing_app().await;
    let w = start_with_pod(Some(App::Forward(app)), |_, cs, es, extra| {
        add_endpoint(es, CLUSTER_8100, extra.unwrap());
        near_locality_first(es, CLUSTER_8100);
        edit_cluster(cs, CLUSTER_8100, |c| {
            c["lb_policy"] = json!("ROUND_ROBIN");
            c["outlier_detection"] = json!({
                "enforcing_success_rate": 0,
                "consecutive_gateway_failure": 3,
                "enforcing_consecutive_gateway_failure": 100,
                "base_ejection_time": "30s",
                "max_ejection_percent": 100,
            });
            c["common_lb_config"] = json!({"healthy_panic_threshold": {}});
        });
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(get(&w, 8100, "/get").await.status);
    }
    // Priority 0 (the failing pod) takes every request until it is ejected; then the
    // farther priority does. Round robin over one flat list would have alternated.
    assert_eq!(statuses[..3], [503, 503, 503], "{statuses:?}");
    assert!(statuses[3..].iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn max_requests_per_connection_one_turns_keep_alive_off() {
    // DestinationRule connectionPool.http.maxRequestsPerConnection: 1 (applyConnectionPool:
    // common_http_protocol_options.max_requests_per_connection).
    let w = start(|_, cs, _| {
        edit_cluster(cs, CLUSTER_8100, |c| {
            c["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "common_http_protocol_options": {"max_requests_per_connection": 1},
                    "explicit_http_config": {"http_protocol_options": {}}}});
        })
    })
    .await;
    let connects = || {
        w._pods
            .0
            .counters
            .connects
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    let before = connects();
    for _ in 0..3 {
        assert_eq!(get(&w, 8100, "/get").await.status, 200);
    }
    assert_eq!(
        connects() - before,
        3,
        "one upstream connection per request"
    );
}

/// DestinationRule `proxyProtocol: {version}` as istiod writes it
/// (pilot/pkg/networking/core/cluster_waypoint.go, buildWaypointInboundVIPCluster: the
/// socket inside `internal_upstream`, raw buffer or TLS, wrapped in a
/// `ProxyProtocolUpstreamTransport` named `envoy.transport_sockets.upstream_proxy_protocol`
/// with `config.version`).
fn proxy_protocol(version: &str, inner: serde_json::Value) -> serde_json::Value {
    json!({
        "name": "internal_upstream",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
            "passthrough_metadata": [{"kind": {"host": {}}, "name": "envoy.filters.listener.original_dst"}],
            "transport_socket": {
                "name": "envoy.transport_sockets.upstream_proxy_protocol",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport",
                    "config": {"version": version},
                    "transport_socket": inner,
                },
            },
        },
    })
}

fn raw_buffer() -> serde_json::Value {
    json!({"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}})
}

/// The world with port 8100's only endpoint a pod whose app reads a PROXY header first
/// (then serves the echo app), and the cluster sending `version`.
async fn proxy_world(version: &str) -> (World, testkit::proxy_front::ProxyFront) {
    use testkit::proxy_front::{Behind, ProxyFront};
    let front = ProxyFront::start(Behind::Echo(testkit::echo::EchoIdentity {
        pod: "httpbin-proxy".into(),
        namespace: "default".into(),
    }))
    .await
    .unwrap();
    let socket = proxy_protocol(version, raw_buffer());
    let w = start_with_pod(Some(App::Forward(front.addr)), |_, cs, es, extra| {
        set_only_endpoint(es, CLUSTER_8100, extra.unwrap());
        edit_cluster(cs, CLUSTER_8100, |c| c["transport_socket"] = socket);
    })
    .await;
    (w, front)
}

/// GET `/get` on the VIP's port 8100 through a tunnel whose CONNECT says the client is
/// `source` (`forwarded: for="ip:port"`, as ztunnel writes it).
async fn get_from(w: &World, source: &str) -> Answer {
    let source =
        testkit::source::SourceWorkload::deployment(source.parse().unwrap(), "default", "sleep");
    let conn = w.client.connect().await.unwrap();
    let tunnel = conn
        .tunnel_from(SocketAddr::new(VIP.parse().unwrap(), 8100), &source)
        .await
        .unwrap();
    let mut http = testkit::client::http1_over(tunnel).await.unwrap();
    let req = http::Request::get("/get")
        .header("host", HOST)
        .body(filters::body::empty())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), http.send_request(req))
        .await
        .expect("answered in time")
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type: None,
        headers,
        body,
    }
}

async fn proxy_protocol_carries_the_client_and_the_vip(version: &str, number: u8) {
    let (w, front) = proxy_world(version).await;
    let a = get_from(&w, "10.20.30.40:40001").await;
    assert_eq!(a.status, 200, "the app behind the PROXY header answered");
    assert_eq!(a.echo()["pod"], "httpbin-proxy");
    let received = front.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].version, number);
    assert_eq!(
        received[0].addresses,
        Some((
            "10.20.30.40:40001".parse().unwrap(),
            SocketAddr::new(VIP.parse().unwrap(), 8100)
        )),
        "source: the client of `forwarded`; destination: the VIP:port it connected to"
    );
}

#[tokio::test]
async fn destination_rule_proxy_protocol_v1_sends_the_text_header() {
    proxy_protocol_carries_the_client_and_the_vip("V1", 1).await;
}

#[tokio::test]
async fn destination_rule_proxy_protocol_v2_sends_the_binary_header() {
    proxy_protocol_carries_the_client_and_the_vip("V2", 2).await;
}

#[tokio::test]
async fn clients_with_different_sources_do_not_share_a_proxy_protocol_connection() {
    let (w, front) = proxy_world("V2").await;
    for source in ["10.20.30.40:40001", "10.20.30.40:40002"] {
        assert_eq!(get_from(&w, source).await.status, 200);
    }
    let ports: Vec<u16> = front
        .received()
        .iter()
        .map(|r| r.addresses.unwrap().0.port())
        .collect();
    assert_eq!(ports, [40001, 40002], "one connection per source");
}

#[tokio::test]
async fn proxy_protocol_goes_before_tls_origination() {
    // Both `proxyProtocol` and `tls` on the rule: istiod wraps the UpstreamTlsContext in
    // the PROXY socket, so the header is sent first, then the TLS handshake.
    use testkit::proxy_front::{Behind, ProxyFront};
    let dir = tempfile::tempdir().unwrap();
    let (app, cert, root) = tls_app(dir.path()).await;
    let tls = mutual_tls(&cert, &root, "spiffe://cluster.local/ns/default/sa/httpbin");
    let inner = tls["typed_config"]["transport_socket"].clone();
    let socket = proxy_protocol("V1", inner);
    let front = ProxyFront::start(Behind::Forward(app.addr)).await.unwrap();
    let w = start_with_pod(Some(App::Forward(front.addr)), |_, cs, es, extra| {
        set_only_endpoint(es, CLUSTER_8100, extra.unwrap());
        edit_cluster(cs, CLUSTER_8100, |c| c["transport_socket"] = socket);
    })
    .await;
    let a = get_from(&w, "10.20.30.40:40003").await;
    assert_eq!(
        a.status, 200,
        "TLS after the header reached the TLS-only app"
    );
    assert_eq!(a.echo()["pod"], "httpbin-tls");
    let received = front.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(
        received[0].addresses.unwrap().0,
        "10.20.30.40:40003".parse().unwrap()
    );
}
