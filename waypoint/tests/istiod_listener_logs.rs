//! The access logs istiod puts on the waypoint's built-in listeners, served over Delta ADS
//! to a real waypoint process: `connect_terminate`'s connection manager log (status >= 400),
//! `connect_originate`'s TCP proxy log (`UF`) and `main_internal`'s listener log (`NR`)
//! (pilot/pkg/networking/core/accesslog.go `setHboneTerminationAccessLog`,
//! `setHboneOriginationAccessLog`, `setListenerAccessLog`; the listeners from
//! listener_waypoint.go `buildConnectTerminateListener`, `buildConnectForwarder`,
//! `buildWaypointInternal`). Each event writes exactly its line; requests that go well
//! write none.

mod istiod;

use std::time::{Duration, Instant};

use istiod::*;
use serde_json::{json, Value};

/// MeshConfig `accessLogFile` with an `accessLogFormat`: istiod's file access log
/// (telemetry_logging.go `FileAccessLogFromMeshConfig`) with the filter `filter`.
fn file_log(path: &str, filter: Value) -> Value {
    json!({"name": "envoy.access_loggers.file", "filter": filter, "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": path,
        "log_format": {"text_format_source": {"inline_string": FORMAT}}}})
}

const FORMAT: &str = "%REQ(:METHOD)% %REQ(:AUTHORITY)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %UPSTREAM_HOST% %UPSTREAM_CLUSTER% %DOWNSTREAM_LOCAL_ADDRESS%\n";

/// accesslog.go `listenerAccessLogFilter`.
fn nr() -> Value {
    json!({"response_flag_filter": {"flags": ["NR"]}})
}

/// accesslog.go `hboneOriginationAccessLogFilter`.
fn uf() -> Value {
    json!({"response_flag_filter": {"flags": ["UF"]}})
}

/// accesslog.go `hboneTerminationAccessLogFilter`.
fn status_400() -> Value {
    json!({"status_code_filter": {"comparison": {"op": "GE",
        "value": {"default_value": 400, "runtime_key": "istio.io/unset"}}}})
}

/// Telemetry `accessLogging.filter.expression` under istiod's own filter
/// (accesslog.go `buildAccessLogFromTelemetry`: `and` of both).
fn and_cel(filter: Value, expression: &str) -> Value {
    json!({"and_filter": {"filters": [filter, {"extension_filter": {
        "name": "envoy.access_loggers.extension_filters.cel", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
        "expression": expression}}}]}})
}

/// `connect_terminate` as listener_waypoint.go `buildConnectTerminateListener` and
/// `buildHCMConnectTerminateChain` write it (as in the bookinfo waypoint's config dump),
/// with `hcm_log` on its connection manager and `listener_log` on the listener.
fn connect_terminate(hcm_log: Value, listener_log: Value) -> Value {
    json!({"name": "connect_terminate",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": 15008}},
        "access_log": [listener_log],
        "filter_chains": [{"name": "default", "filters": [{
            "name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "connect_terminate",
            "route_config": {"name": "default", "virtual_hosts": [{"name": "default", "domains": ["*"],
                "routes": [{"match": {"connect_matcher": {}}, "route": {"cluster": "main_internal",
                    "upgrade_configs": [{"upgrade_type": "CONNECT", "connect_config": {}}]}}]}]},
            "access_log": [hcm_log],
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            "http2_protocol_options": {"max_concurrent_streams": 100, "allow_connect": true},
            "server_name": "istio-envoy", "use_remote_address": false,
            "forward_client_cert_details": "APPEND_FORWARD",
            "set_current_client_cert_details": {"subject": true, "dns": true, "uri": true},
            "upgrade_configs": [{"upgrade_type": "CONNECT"}], "stream_idle_timeout": "0s"}}]}],
        "connection_balance_config": {"exact_balance": {}}})
}

/// `connect_originate` as listener_waypoint.go `buildConnectForwarder` writes it, with
/// `tcp_log` on its TCP proxy and `listener_log` on the listener.
fn connect_originate(tcp_log: Value, listener_log: Value) -> Value {
    json!({"name": "connect_originate", "use_original_dst": false, "internal_listener": {},
        "access_log": [listener_log],
        "listener_filters": [{"name": "envoy.filters.listener.original_dst", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"}}],
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "connect_originate", "cluster": "connect_originate",
            "tunneling_config": {"hostname": "%DOWNSTREAM_LOCAL_ADDRESS%"},
            "access_log": [tcp_log]}}]}]})
}

fn listener(json: &Value) -> (String, envoy_types::pb::google::protobuf::Any) {
    let l: envoy_types::pb::envoy::config::listener::v3::Listener =
        xds::envoy::from_json("envoy.config.listener.v3.Listener", json).unwrap();
    (l.name.clone(), fixture::any(LISTENER, &l))
}

/// A pod address where nothing listens: HBONE tunnels to it fail.
const DEAD_POD: &str = "127.0.9.9";
const CLUSTER_8000: &str = "inbound-vip|8000|http|httpbin.default.svc.cluster.local";

/// The three built-in listeners with istiod's logs (each `and` the Telemetry filter `cel`,
/// when given) to `path`; port 8000's only endpoint is a pod nobody answers for.
async fn world(path: &str, cel: Option<&str>) -> World {
    let filter = |f: Value| match cel {
        Some(e) => and_cel(f, e),
        None => f,
    };
    let terminate = connect_terminate(
        file_log(path, filter(status_400())),
        file_log(path, filter(nr())),
    );
    let originate = connect_originate(file_log(path, filter(uf())), file_log(path, filter(nr())));
    let main_log = file_log(path, filter(nr()));
    start(move |ls, _, es| {
        ls.push(listener(&terminate));
        ls.push(listener(&originate));
        fixture::edit_listener(ls, |json| json["access_log"] = json!([main_log.clone()]));
        set_only_endpoint(es, CLUSTER_8000, DEAD_POD.parse().unwrap());
    })
    .await
}

/// Waits until the log at `path` holds `want` lines (ten seconds at most).
async fn lines(path: &std::path::Path, want: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = log.lines().map(str::to_string).collect();
        if lines.len() >= want || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn request(method: &str, uri: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(uri)
        .body(())
        .unwrap()
}

#[tokio::test]
async fn each_built_in_listener_logs_its_event_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let w = world(path.to_str().unwrap(), None).await;
    let hbone = w._wp.hbone;
    let vip: IpAddr = VIP.parse().unwrap();

    // Requests that go well: an HTTP request and a TCP-level tunnel; nothing is logged.
    assert_eq!(get(&w, 8100, "/get").await.status, 200);
    let conn = w.client.connect().await.unwrap();
    drop(conn.tunnel(SocketAddr::new(vip, 8100), &[]).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lines(&path, 0).await, Vec::<String>::new());

    // connect_terminate: requests the HBONE listener refuses, with their status.
    let status = conn
        .status_of(request("GET", &format!("https://{VIP}:8100/get")))
        .await
        .unwrap();
    assert_eq!(status, 405);
    let status = conn
        .status_of(request("CONNECT", "httpbin.default:8100"))
        .await
        .unwrap();
    assert_eq!(status, 400);
    let mut want = vec![
        format!("GET {VIP}:8100 HTTP/2 405 - only_connect_accepted \"-\" - - {hbone}"),
        format!(
            "CONNECT httpbin.default:8100 HTTP/2 400 - authority_not_ip_port \"-\" - - {hbone}"
        ),
    ];
    assert_eq!(lines(&path, want.len()).await, want);

    // main_internal: a CONNECT to a port of the VIP no chain serves.
    let refused = conn.tunnel(SocketAddr::new(vip, 9999), &[]).await;
    assert!(
        matches!(refused, Err(testkit::client::ClientError::Refused(s)) if s == 404),
        "{refused:?}"
    );
    want.push(format!(
        "- - - 0 NR filter_chain_not_found \"-\" - - {VIP}:9999"
    ));
    assert_eq!(lines(&path, want.len()).await, want);

    // connect_originate: the HBONE tunnel to port 8000's pod cannot be opened.
    assert_eq!(get(&w, 8000, "/get").await.status, 503);
    let got = lines(&path, want.len() + 1).await;
    assert_eq!(got.len(), want.len() + 1, "{got:#?}");
    assert_eq!(got[..want.len()], want[..]);
    let uf = &got[want.len()];
    let (head, tail) = (
        "- - - 0 UF - \"",
        format!("\" {DEAD_POD}:15008 connect_originate {DEAD_POD}:8080"),
    );
    assert!(
        uf.starts_with(head) && uf.ends_with(&tail) && uf.len() > head.len() + tail.len(),
        "{uf}"
    );

    // And a good request again adds nothing.
    assert_eq!(get(&w, 8100, "/get").await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lines(&path, 0).await.len(), want.len() + 1);
}

#[tokio::test]
async fn a_telemetry_filter_narrows_the_built_in_listener_logs() {
    // A Telemetry `accessLogging.filter.expression` is and-ed with istiod's own filters.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let w = world(
        path.to_str().unwrap(),
        Some("response.code == 405 || destination.port == 9998"),
    )
    .await;
    let hbone = w._wp.hbone;
    let vip: IpAddr = VIP.parse().unwrap();
    let conn = w.client.connect().await.unwrap();
    // Kept: 405; refused by the expression: 400 and the NR to 9999; kept: the NR to 9998.
    let status = conn
        .status_of(request("CONNECT", "httpbin.default:8100"))
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(conn.tunnel(SocketAddr::new(vip, 9999), &[]).await.is_err());
    let status = conn
        .status_of(request("GET", &format!("https://{VIP}:8100/get")))
        .await
        .unwrap();
    assert_eq!(status, 405);
    assert!(conn.tunnel(SocketAddr::new(vip, 9998), &[]).await.is_err());
    let want = vec![
        format!("GET {VIP}:8100 HTTP/2 405 - only_connect_accepted \"-\" - - {hbone}"),
        format!("- - - 0 NR filter_chain_not_found \"-\" - - {VIP}:9998"),
    ];
    assert_eq!(lines(&path, want.len()).await, want);
    // The UF line of port 8000 does not pass the expression either.
    assert_eq!(get(&w, 8000, "/get").await.status, 503);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lines(&path, 0).await, want);
}

#[tokio::test]
async fn a_bad_built_in_listener_log_is_nacked_by_field() {
    // Built-in listeners' logs are validated like any other: an unsupported logger is a
    // NACK naming the listener and the field.
    let bad = json!({"name": "envoy.access_loggers.http_grpc", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
        "common_config": {"log_name": "http_envoy_accesslog", "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": "envoy_accesslog_service"}}}}});
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.log");
    let terminate = connect_terminate(bad, file_log(p.to_str().unwrap(), nr()));
    let w = start(move |ls, _, _| ls.push(listener(&terminate))).await;
    let e = nack(&w).await;
    assert!(
        e.contains("connect_terminate")
            && e.contains("filter_chains[0].filters[0].access_log[0].typed_config"),
        "{e}"
    );
}

#[tokio::test]
async fn a_tunnel_cut_by_the_connect_timeout_is_logged_by_connect_originate() {
    // Port 8000's only pod accepts TCP on its HBONE port and never answers the TLS
    // handshake; its cluster's connect_timeout (DestinationRule
    // `connectionPool.tcp.connectTimeout`, cluster_traffic_policy.go applyConnectionPool)
    // is 300 ms. The tunnel is given up at the timeout, and connect_originate's `UF` log
    // (accesslog.go `setHboneOriginationAccessLog`) records it as any other failed open.
    let ip = testkit::free_loopback_ip(15008);
    let silent = testkit::silent::SilentListener::bind(SocketAddr::new(ip, 15008))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let p = path.to_str().unwrap().to_string();
    let originate = connect_originate(file_log(&p, uf()), file_log(&p, nr()));
    let w = start(move |ls, cs, es| {
        ls.push(listener(&originate));
        set_only_endpoint(es, CLUSTER_8000, ip);
        edit_cluster(cs, CLUSTER_8000, |c| c["connect_timeout"] = json!("0.300s"));
    })
    .await;
    let started = Instant::now();
    let a = tokio::time::timeout(Duration::from_secs(8), get(&w, 8000, "/get"))
        .await
        .expect("answered long before the default");
    let took = started.elapsed();
    assert_eq!(a.status, 503);
    assert!(
        String::from_utf8_lossy(&a.body).contains("reset reason: connection timeout"),
        "{:?}",
        a.body
    );
    assert!(took < Duration::from_secs(4), "answered after {took:?}");
    assert!(silent.accepted() >= 1, "the pod's HBONE port was reached");
    let got = lines(&path, 1).await;
    assert_eq!(
        got,
        vec![format!(
            "- - - 0 UF - \"connection timeout\" {ip}:15008 connect_originate {ip}:8080"
        )]
    );
}
