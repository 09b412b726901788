//! Access log service loggers as istiod writes them for `envoyHttpAls` / `envoyTcpAls`
//! MeshConfig providers named by a Telemetry `accessLogging`
//! (pilot/pkg/model/telemetry_logging.go `httpGrpcAccessLogFromTelemetry`,
//! `tcpGrpcAccessLogFromTelemetry`; put on the connection manager and the TCP proxy by
//! pilot/pkg/networking/core/accesslog.go `setHTTPAccessLog`, `setTCPAccessLog`), served
//! over Delta ADS to a real waypoint process that streams entries to a fake access log
//! service.

mod istiod;

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::RequestMethod;
use envoy_types::pb::envoy::data::accesslog::v3::HttpAccessLogEntry;
use istiod::*;
use serde_json::json;
use testkit::als::AccessLogServer;

const ALS_HOST: &str = "als.observability.svc.cluster.local";
const ALS_PORT: u16 = 9001;

fn als_cluster() -> String {
    format!("outbound|{ALS_PORT}||{ALS_HOST}")
}

/// The service's outbound cluster (EDS, HTTP/2 as istiod writes it for a `grpc` port)
/// and its endpoints: `mesh_pod` (reached over HBONE), else a plain address.
fn with_als_cluster(cs: &mut Named, es: &mut Named, mesh_pod: Option<IpAddr>, plain: SocketAddr) {
    let cluster = als_cluster();
    let c = json!({
        "name": cluster, "type": "EDS",
        "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"},
                               "service_name": cluster},
        "connect_timeout": "10s", "lb_policy": "LEAST_REQUEST",
        "metadata": {"filter_metadata": {"istio": {"services": [
            {"host": ALS_HOST, "name": "als", "namespace": "observability"}]}}},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}
    });
    let c: envoy_types::pb::envoy::config::cluster::v3::Cluster =
        xds::envoy::from_json("envoy.config.cluster.v3.Cluster", &c).unwrap();
    cs.push((cluster.clone(), fixture::any(CLUSTER, &c)));
    let e = match mesh_pod {
        Some(pod) => mesh_endpoints(es, &cluster, pod),
        None => {
            let e = json!({"cluster_name": cluster, "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": plain.ip().to_string(), "port_value": plain.port()}}}}]}]});
            let e: envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment =
                xds::envoy::from_json("envoy.config.endpoint.v3.ClusterLoadAssignment", &e)
                    .unwrap();
            fixture::any(ENDPOINT, &e)
        }
    };
    es.push((cluster, e));
}

/// istiod's `CommonGrpcAccessLogConfig`: the provider's cluster and hostname, V3, and the
/// default filter state objects (`envoyStateToLog`).
fn common_config(log_name: &str) -> serde_json::Value {
    json!({
        "log_name": log_name,
        "grpc_service": {"envoy_grpc": {"cluster_name": als_cluster(), "authority": ALS_HOST}},
        "transport_api_version": "V3",
        "filter_state_objects_to_log": ["upstream_peer", "downstream_peer"]})
}

/// The `envoy.access_loggers.http_grpc` logger of an `envoyHttpAls` provider with
/// `additionalRequestHeadersToLog` / `additionalResponseHeadersToLog`.
fn http_grpc_log() -> serde_json::Value {
    json!({"name": "envoy.access_loggers.http_grpc", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
        "common_config": common_config("http_envoy_accesslog"),
        "additional_request_headers_to_log": ["X-Tenant"],
        "additional_response_headers_to_log": ["content-type"]}})
}

/// Every HTTP chain's connection manager gets `logs` as its `access_log`.
fn with_access_logs(ls: &mut Named, logs: serde_json::Value) {
    fixture::edit_listener(ls, |json| {
        for chain in json["filter_chains"].as_array_mut().unwrap() {
            let filters = chain["filters"].as_array_mut().unwrap();
            let hcm = &mut filters.last_mut().unwrap()["typed_config"];
            if hcm.get("http_filters").is_some() {
                hcm["access_log"] = logs.clone();
            }
        }
    });
}

/// Sends `GET path` with `headers` on httpbin's port 8100 until an entry for it comes.
async fn entry_for(
    w: &World,
    als: &AccessLogServer,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpAccessLogEntry {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = send(w, 8100, "GET", path, headers).await.status;
        let found = als.http_entries().into_iter().find(|(_, e)| {
            e.request.as_ref().is_some_and(|r| r.path == path)
                && e.response
                    .as_ref()
                    .is_some_and(|r| r.response_code.is_some())
        });
        if let Some((_, e)) = found {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no entry for {path} (last status {status}, streams {:?})",
            als.streams().len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn http_entries_stream_to_the_access_log_service() {
    let als = AccessLogServer::start().await.unwrap();
    let w = start_with_pod(Some(App::Forward(als.addr)), |ls, cs, es, pod| {
        with_als_cluster(cs, es, pod, als.addr);
        with_access_logs(ls, json!([http_grpc_log()]));
        // A fault abort, for a response flag (route.go translateFault).
        fixture::prepend_routes(
            ls,
            8100,
            &[json!({"name": "vs.abort", "match": {"prefix": "/abort"}, "route": {"cluster": CLUSTER_8100},
                     "typed_per_filter_config": {"envoy.filters.http.fault": {
                         "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                         "abort": {"http_status": 418, "percentage": {"numerator": 100, "denominator": "HUNDRED"}}}}})],
        );
    })
    .await;
    let ok = entry_for(
        &w,
        &als,
        "/logged?q=1",
        &[("x-tenant", "acme"), ("user-agent", "als-test")],
    )
    .await;
    let req = ok.request.as_ref().unwrap();
    assert_eq!(req.request_method, RequestMethod::Get as i32);
    assert_eq!(req.scheme, "http");
    assert_eq!(req.authority, HOST);
    assert_eq!(req.user_agent, "als-test");
    assert_eq!(
        req.request_headers.get("x-tenant").map(String::as_str),
        Some("acme")
    );
    assert!(req.request_headers_bytes > 0);
    let resp = ok.response.as_ref().unwrap();
    assert_eq!(resp.response_code.unwrap().value, 200);
    assert_eq!(resp.response_code_details, "via_upstream");
    assert!(resp.response_body_bytes > 0);
    assert!(resp.response_headers.contains_key("content-type"));
    let common = ok.common_properties.as_ref().unwrap();
    assert_eq!(common.upstream_cluster, CLUSTER_8100);
    assert!(common.start_time.is_some() && common.duration.is_some());
    let flags = common.response_flags.as_ref().unwrap();
    assert!(!flags.fault_injected && !flags.upstream_connection_failure);
    match common
        .downstream_local_address
        .as_ref()
        .and_then(|a| a.address.as_ref())
    {
        Some(AddressKind::SocketAddress(s)) => assert_eq!(s.address, VIP),
        other => panic!("downstream_local_address {other:?}"),
    }
    assert!(
        common.upstream_remote_address.is_some(),
        "the pod's address is logged"
    );
    // The downstream peer's workload metadata, as the peer metadata filter's object.
    let peer = common
        .filter_state_objects
        .get("downstream_peer")
        .expect("downstream_peer logged");
    assert_eq!(peer.type_url, "type.googleapis.com/google.protobuf.Struct");

    let aborted = entry_for(&w, &als, "/abort", &[]).await;
    assert_eq!(
        aborted
            .response
            .as_ref()
            .unwrap()
            .response_code
            .unwrap()
            .value,
        418
    );
    assert_eq!(
        aborted.response.as_ref().unwrap().response_code_details,
        "fault_filter_abort"
    );
    let common = aborted.common_properties.as_ref().unwrap();
    assert!(common.response_flags.as_ref().unwrap().fault_injected);

    // One stream carried both (the identifier once, first): node and log name.
    let streams = als.streams();
    let with_entries: Vec<_> = streams.iter().filter(|s| !s.http.is_empty()).collect();
    let id = with_entries[0]
        .identifier
        .as_ref()
        .expect("identifier first");
    assert_eq!(id.log_name, "http_envoy_accesslog");
    let node = id.node.as_ref().unwrap();
    assert_eq!(
        node.id,
        "waypoint~0.0.0.0~waypoint.default~default.svc.cluster.local"
    );
    assert_eq!(node.cluster, "waypoint.default");
    assert!(streams.iter().all(|s| s.repeated_identifiers == 0));

    // The service ends streams after one message: the next entries open a new stream,
    // which starts with the identifier again.
    als.end_streams_after(1);
    let before = als.streams().len();
    let _ = entry_for(&w, &als, "/after-end", &[]).await;
    let _ = entry_for(&w, &als, "/reopened", &[]).await;
    let streams = als.streams();
    assert!(streams.len() > before, "a new stream was opened");
    let last = streams.iter().rev().find(|s| !s.http.is_empty()).unwrap();
    assert_eq!(
        last.identifier.as_ref().map(|i| i.log_name.as_str()),
        Some("http_envoy_accesslog")
    );
    let pod = w._pods.2.as_ref().unwrap();
    assert!(
        pod.counters
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "the stream went through the service pod's ztunnel"
    );
}

#[tokio::test]
async fn tcp_entries_stream_to_the_access_log_service() {
    // `envoyTcpAls`: istiod gives TCP chains' tcp_proxy the logger (setTCPAccessLog).
    let als = AccessLogServer::start().await.unwrap();
    let w = start_with_pod(Some(App::TcpEcho), |ls, cs, es, extra| {
        tcp_port(ls, cs, es, extra.unwrap(), vec![]);
        with_als_cluster(cs, es, None, als.addr);
        let log = json!([{"name": "envoy.tcp_grpc_access_log", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.TcpGrpcAccessLogConfig",
            "common_config": common_config("tcp_envoy_accesslog")}}]);
        fixture::edit_listener(ls, |json| {
            for chain in json["filter_chains"].as_array_mut().unwrap() {
                if chain["name"] == TCP_CHAIN {
                    let tcp = &mut chain["filters"].as_array_mut().unwrap().last_mut().unwrap()
                        ["typed_config"];
                    tcp["access_log"] = log.clone();
                }
            }
        });
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let back = tcp_round_trip(&w).await;
        let echoed = als.tcp_entries().into_iter().find(|(_, e)| {
            e.connection_properties
                .as_ref()
                .is_some_and(|c| c.received_bytes == 5 && c.sent_bytes == 5)
        });
        if let Some((id, e)) = echoed {
            assert_eq!(back, b"hello");
            assert_eq!(id.unwrap().log_name, "tcp_envoy_accesslog");
            let common = e.common_properties.unwrap();
            assert_eq!(common.upstream_cluster, TCP_CLUSTER);
            break;
        }
        assert!(Instant::now() < deadline, "no TCP entry ({back:?})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn entries_for_an_unreachable_service_are_dropped_and_counted() {
    // The service's only endpoint refuses connections: requests are served as usual and
    // the entries are counted dropped (each batch tries a new stream).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let w = start(|ls, cs, es| {
        with_als_cluster(cs, es, None, addr);
        with_access_logs(ls, json!([http_grpc_log()]));
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert_eq!(get(&w, 8100, "/lost").await.status, 200);
        let metrics = testkit::process::http_get(w._wp.metrics, "/stats/prometheus")
            .await
            .unwrap()
            .1;
        let dropped = metrics
            .lines()
            .find_map(|l| l.strip_prefix("waypoint_access_log_dropped_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if dropped > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nothing counted dropped:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
