//! Telemetry end to end: Istio metrics on the metrics listener and access logs on stdout
//! (spans are in `tracing.rs`).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use testkit::mesh::Port;
use testkit::ztunnel::App;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BAGGAGE: &str = "k8s.cluster.name=c1,k8s.namespace.name=default,k8s.deployment.name=sleep,service.name=sleep,service.version=v1";

fn ports() -> Vec<Port> {
    vec![
        Port {
            name: "http",
            port: 80,
            target: 8080,
        },
        Port {
            name: "tcp-echo",
            port: 9000,
            target: 9000,
        },
    ]
}

#[tokio::test]
async fn istio_metrics_count_requests_by_source_destination_and_code() {
    let deny = format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-admin\n  namespace: {NS}\nspec:\n  targetRefs:\n  - {{group: \"\", kind: Service, name: echo}}\n  action: DENY\n  rules:\n  - to: [{{operation: {{paths: [\"/admin\"]}}}}]\n");
    let h = Harness::start(Spec {
        ports: ports(),
        apps: HashMap::from([(9000, App::TcpEcho)]),
        extra_yaml: vec![deny],
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let tunnel = conn
        .tunnel(authority(80), &[("baggage", BAGGAGE)])
        .await
        .unwrap();
    let mut http = testkit::client::http1_over(tunnel).await.unwrap();
    for i in 0..5 {
        // Distinct paths must not create series.
        let resp = http.send_request(get(&format!("/ok/{i}"))).await.unwrap();
        assert_eq!(resp.status(), 200);
        body_bytes(resp).await;
        http.ready().await.unwrap();
    }
    for _ in 0..3 {
        let resp = http.send_request(get("/admin")).await.unwrap();
        assert_eq!(resp.status(), 403);
        body_bytes(resp).await;
        http.ready().await.unwrap();
    }
    // A tunnel without baggage: source labels from the certificate and the snapshot.
    let mut plain = conn.http1(authority(80)).await.unwrap();
    let resp = plain.send_request(get("/status/503")).await.unwrap();
    assert_eq!(resp.status(), 503);
    body_bytes(resp).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let samples = loop {
        let s = h.prometheus().await;
        if metric(&s, "istio_requests_total", &[]) >= 9.0 {
            break s;
        }
        assert!(Instant::now() < deadline, "metrics did not arrive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ok = [
        ("reporter", "waypoint"),
        ("response_code", "200"),
        ("source_workload", "sleep"),
        ("source_cluster", "c1"),
        ("source_canonical_revision", "v1"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/default/sa/sleep",
        ),
        ("destination_service", "echo.default.svc.cluster.local"),
        ("destination_service_name", "echo"),
        ("destination_workload", "echo-0"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/default/sa/echo",
        ),
        ("request_protocol", "http"),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert_eq!(
        metric(&samples, "istio_requests_total", &ok),
        5.0,
        "{samples:#?}"
    );
    let ok_series = samples
        .iter()
        .filter(|s| s.name == "istio_requests_total" && s.label("response_code") == "200")
        .count();
    assert_eq!(ok_series, 1, "paths must not become labels");
    assert_eq!(
        metric(&samples, "istio_request_duration_milliseconds_count", &ok),
        5.0
    );
    assert_eq!(
        metric(
            &samples,
            "istio_request_duration_milliseconds_bucket",
            &[("response_code", "200"), ("le", "+Inf")]
        ),
        5.0
    );
    assert!(metric(&samples, "istio_response_bytes_sum", &ok) > 5.0 * 100.0);
    assert_eq!(
        metric(
            &samples,
            "istio_requests_total",
            &[("response_code", "403"), ("source_workload", "sleep")]
        ),
        3.0
    );
    // Without baggage the source pod is unknown to the snapshot: namespace and principal
    // still come from the certificate.
    assert_eq!(
        metric(
            &samples,
            "istio_requests_total",
            &[
                ("response_code", "503"),
                ("source_workload", "unknown"),
                ("source_workload_namespace", "default"),
                (
                    "source_principal",
                    "spiffe://cluster.local/ns/default/sa/sleep"
                )
            ]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &samples,
            "waypoint_authz_decisions_total",
            &[("decision", "deny")]
        ),
        3.0
    );
    assert!(metric(&samples, "waypoint_hbone_connections", &[]) >= 1.0);
    // The admin listener serves the same page.
    let (status, body) = h.admin("/stats/prometheus").await;
    assert_eq!(status, 200);
    assert!(!parse_prometheus(&body).is_empty());
}

#[tokio::test]
async fn tcp_metrics_count_connections_and_bytes() {
    let h = Harness::start(Spec {
        ports: ports(),
        apps: HashMap::from([(9000, App::TcpEcho)]),
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    // TCP: 1000 bytes each way.
    let mut tcp = conn.tunnel(authority(9000), &[]).await.unwrap();
    tcp.write_all(&[7u8; 1000]).await.unwrap();
    let mut buf = vec![0u8; 1000];
    tcp.read_exact(&mut buf).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    let samples = loop {
        let s = h.prometheus().await;
        if metric(&s, "istio_tcp_connections_closed_total", &[]) >= 1.0 {
            break s;
        }
        assert!(Instant::now() < deadline, "TCP metrics did not arrive");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let tcp_labels = [
        ("request_protocol", "tcp"),
        ("destination_workload", "echo-0"),
    ];
    assert_eq!(
        metric(&samples, "istio_tcp_connections_opened_total", &tcp_labels),
        1.0
    );
    assert_eq!(
        metric(&samples, "istio_tcp_connections_closed_total", &tcp_labels),
        1.0
    );
    assert_eq!(
        metric(&samples, "istio_tcp_sent_bytes_total", &tcp_labels),
        1000.0
    );
    assert_eq!(
        metric(&samples, "istio_tcp_received_bytes_total", &tcp_labels),
        1000.0
    );
}

#[tokio::test]
async fn metric_series_stay_bounded_whatever_peers_send() {
    let h = Harness::start(Spec {
        extra_args: vec!["--metrics-series-limit", "4"],
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    for i in 0..10 {
        let baggage = format!("k8s.namespace.name=default,k8s.deployment.name=peer-{i}");
        let tunnel = conn
            .tunnel(authority(80), &[("baggage", baggage.as_str())])
            .await
            .unwrap();
        let mut http = testkit::client::http1_over(tunnel).await.unwrap();
        let resp = http.send_request(get("/")).await.unwrap();
        assert_eq!(resp.status(), 200);
        body_bytes(resp).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = h.prometheus().await;
        let recorded = metric(&s, "istio_requests_total", &[]);
        let overflow = metric(&s, "waypoint_metrics_series_overflow_total", &[]);
        if recorded + overflow >= 10.0 {
            assert_eq!(recorded, 4.0);
            assert_eq!(overflow, 6.0);
            assert_eq!(metric(&s, "waypoint_metrics_series", &[]), 4.0);
            break;
        }
        assert!(Instant::now() < deadline, "samples missing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn access_log_lines_explain_each_response() {
    let empty = "apiVersion: v1\nkind: Service\nmetadata:\n  name: empty\n  namespace: default\n  labels: {istio.io/use-waypoint: waypoint}\nspec:\n  clusterIP: 127.96.0.11\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n".to_string();
    let h = Harness::start(Spec {
        extra_yaml: vec![mesh_config("accessLogFile: /dev/stdout\n"), empty],
        capture_stdout: true,
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let req = http::Request::get("/logged?x=1")
        .header("host", "echo.default.svc.cluster.local")
        .header("user-agent", "telemetry-test")
        .header("x-request-id", "req-1")
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = body_bytes(resp).await;
    let mut none = conn
        .http1(SocketAddr::new("127.96.0.11".parse().unwrap(), 80))
        .await
        .unwrap();
    let resp = none.send_request(get("/")).await.unwrap();
    assert_eq!(resp.status(), 503);
    body_bytes(resp).await;
    let pod = h.pods[0].ip;
    let lines = wait_for(|| {
        let out = h.stdout();
        (out.lines().count() >= 2).then_some(out)
    })
    .await;
    let ok = lines
        .lines()
        .find(|l| l.contains("/logged"))
        .expect("200 line");
    assert!(ok.starts_with('['), "{ok}");
    assert!(
        ok.contains(&format!(
            "\"GET /logged?x=1 HTTP/1.1\" 200 - via_upstream - \"-\" 0 {} ",
            body.len()
        )),
        "{ok}"
    );
    assert!(
        ok.contains("\"telemetry-test\" \"req-1\" \"echo.default.svc.cluster.local\""),
        "{ok}"
    );
    assert!(
        ok.contains(&format!(
            "\"{pod}:8080\" inbound-vip|80|http|echo.default.svc.cluster.local"
        )),
        "{ok}"
    );
    let failed = lines
        .lines()
        .find(|l| l.contains(" 503 "))
        .expect("503 line");
    assert!(failed.contains("503 UH no_healthy_upstream"), "{failed}");
    assert!(
        failed.contains("\"-\" inbound-vip|80|http|empty.default.svc.cluster.local"),
        "{failed}"
    );

    // JSON, switched on by a configuration change.
    let text = std::fs::read_to_string(&h.config).unwrap().replace(
        "accessLogFile: /dev/stdout",
        "accessLogFile: /dev/stdout\n    accessLogEncoding: JSON",
    );
    h.write_config(&text);
    let json = wait_for_json(&h, &conn).await;
    assert_eq!(json["response_code"], 200);
    assert_eq!(json["method"], "GET");
    assert_eq!(json["path"], "/json");
    assert_eq!(json["upstream_host"], format!("{pod}:8080"));
    assert_eq!(json["x_forwarded_for"], serde_json::Value::Null);
    assert_eq!(json["response_flags"], "-");
}

async fn wait_for_json(h: &Harness, conn: &testkit::client::HboneConnection) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut http = conn.http1(authority(80)).await.unwrap();
        let resp = http.send_request(get("/json")).await.unwrap();
        body_bytes(resp).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(line) = h.stdout().lines().rfind(|l| l.starts_with('{')) {
            return serde_json::from_str(line).unwrap();
        }
        assert!(Instant::now() < deadline, "no JSON access log line");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn request_abandoned_by_its_client_is_recorded_as_downstream_disconnect() {
    let h = Harness::start(Spec {
        extra_yaml: vec![mesh_config("accessLogFile: /dev/stdout\n")],
        capture_stdout: true,
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let pending =
        tokio::spawn(async move { http.send_request(get("/slow/abandoned?delay=3s")).await });
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.stat("downstream.requests_in_flight").await == 0 {
        assert!(Instant::now() < deadline, "the request never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The client gives up before the upstream answers.
    pending.abort();
    drop(conn);
    let line = wait_for(|| {
        h.stdout()
            .lines()
            .find(|l| l.contains("/slow/abandoned"))
            .map(str::to_string)
    })
    .await;
    assert!(
        line.contains(
            "\"GET /slow/abandoned?delay=3s HTTP/1.1\" 0 DC downstream_remote_disconnect"
        ),
        "{line}"
    );
    let samples = h.prometheus().await;
    assert_eq!(
        metric(
            &samples,
            "istio_requests_total",
            &[
                ("response_code", "0"),
                ("response_flags", "DC"),
                ("destination_service_name", "echo"),
            ]
        ),
        1.0,
        "{samples:#?}"
    );
    assert_eq!(h.stat("downstream.requests_in_flight").await, 0);
}

/// What ztunnel puts on the CONNECT (`forwarded: for="ip:port"`, baggage naming the
/// source's canonical service and revision) shows in the access log's downstream address,
/// with its port, and in `source_app` / `source_version`, as Envoy's waypoint reports them.
#[tokio::test]
async fn the_source_port_and_app_come_from_what_ztunnel_forwards() {
    let h = Harness::start(Spec {
        extra_yaml: vec![mesh_config(
            "accessLogFile: /dev/stdout\naccessLogFormat: \"REMOTE %DOWNSTREAM_REMOTE_ADDRESS% %REQ(:PATH)%\\n\"\n",
        )],
        capture_stdout: true,
        ..Spec::default()
    })
    .await;
    let mut source = testkit::source::SourceWorkload::deployment(
        "127.0.0.1:40123".parse().unwrap(),
        NS,
        "sleep",
    );
    source.canonical_revision = "v7".into();
    let conn = h.client().connect().await.unwrap();
    let tunnel = conn.tunnel_from(authority(80), &source).await.unwrap();
    let mut http = testkit::client::http1_over(tunnel).await.unwrap();
    let resp = http.send_request(get("/forwarded")).await.unwrap();
    assert_eq!(resp.status(), 200);
    body_bytes(resp).await;
    // Without `forwarded`, the HBONE peer's address, port included.
    let mut plain = conn.http1(authority(80)).await.unwrap();
    let resp = plain.send_request(get("/direct")).await.unwrap();
    assert_eq!(resp.status(), 200);
    body_bytes(resp).await;
    let log = wait_for(|| {
        let log = h.stdout();
        (log.contains("/forwarded\n") && log.contains("/direct\n")).then_some(log)
    })
    .await;
    assert!(
        log.contains("REMOTE 127.0.0.1:40123 /forwarded\n"),
        "the forwarded source port: {log}"
    );
    let direct = log
        .lines()
        .find(|l| l.ends_with(" /direct"))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no address for /direct: {log}"));
    assert_ne!(direct.port(), 0, "the HBONE peer's port: {log}");
    let samples = h.prometheus().await;
    let forwarded = [("source_workload", "sleep"), ("response_code", "200")];
    assert!(
        metric(&samples, "istio_requests_total", &forwarded) >= 1.0,
        "no sample for the source"
    );
    let labelled = [
        ("source_workload", "sleep"),
        ("source_app", "sleep"),
        ("source_version", "v7"),
        ("destination_app", "echo"),
    ];
    assert_eq!(
        metric(&samples, "istio_requests_total", &labelled),
        1.0,
        "{:?}",
        samples
            .iter()
            .filter(|s| s.name == "istio_requests_total")
            .collect::<Vec<_>>()
    );
}

/// The access log names the matched route (`%ROUTE_NAME%`, last in the istio text format)
/// and, for a denial, the policy (`rbac_access_denied_matched_policy[...]`), as `waypoint
/// explain` reports them.
#[tokio::test]
async fn access_log_names_the_matched_route_and_the_denying_policy() {
    let route = format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: echo-route\n  namespace: {NS}\nspec:\n  parentRefs:\n  - {{group: \"\", kind: Service, name: echo, port: 80}}\n  rules:\n  - backendRefs:\n    - {{name: echo, port: 80}}\n");
    let deny = format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: deny-admin\n  namespace: {NS}\nspec:\n  targetRefs:\n  - {{group: \"\", kind: Service, name: echo}}\n  action: DENY\n  rules:\n  - to: [{{operation: {{paths: [\"/admin\"]}}}}]\n");
    let h = Harness::start(Spec {
        extra_yaml: vec![mesh_config("accessLogFile: /dev/stdout\n"), route, deny],
        capture_stdout: true,
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    for (path, status) in [("/routed", 200), ("/admin", 403)] {
        let resp = http.send_request(get(path)).await.unwrap();
        assert_eq!(resp.status(), status, "{path}");
        body_bytes(resp).await;
    }
    let lines = wait_for(|| {
        let out = h.stdout();
        (out.lines().filter(|l| l.starts_with('[')).count() >= 2).then_some(out)
    })
    .await;
    let routed = lines
        .lines()
        .find(|l| l.contains("/routed"))
        .expect("200 line");
    assert!(routed.ends_with(&format!(" {NS}/echo-route")), "{routed}");
    let denied = lines
        .lines()
        .find(|l| l.contains("/admin"))
        .expect("403 line");
    assert!(
        denied.contains(&format!(
            " 403 - rbac_access_denied_matched_policy[{NS}/deny-admin] "
        )),
        "{denied}"
    );
    // The second request on the tunnel reuses the first one's request log, emptied: the
    // denied request never went upstream, so it names no upstream host.
    let pod = format!("{}:8080", h.pods[0].ip);
    assert!(!denied.contains(&pod), "{denied}");
    assert!(routed.contains(&pod), "{routed}");
}

#[tokio::test]
async fn local_telemetry_adds_dimensions_and_filters_a_file_log() {
    // Telemetry metrics.overrides tagOverrides with a value expression, and accessLogging
    // with a filter expression naming an envoyFileAccessLog provider with a path.
    let empty = "apiVersion: v1\nkind: Service\nmetadata:\n  name: empty\n  namespace: default\n  labels: {istio.io/use-waypoint: waypoint}\nspec:\n  clusterIP: 127.96.0.11\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n".to_string();
    let h = Harness::start(Spec::default()).await;
    let path = h.dir.path().join("access.log");
    let provider = format!(
        "extensionProviders:\n- name: errors\n  envoyFileAccessLog:\n    path: {}\n    logFormat: {{text: 'ERR %RESPONSE_CODE% %RESPONSE_FLAGS% %REQ(:PATH)%'}}\n",
        path.display()
    );
    let config = h
        .mesh
        .clone()
        .raw(&empty)
        .raw(&mesh_config(&provider))
        .raw(&telemetry(
            "  accessLogging:\n  - providers: [{name: errors}]\n    filter:\n      expression: response.code >= 500\n  metrics:\n  - overrides:\n    - match: {metric: REQUEST_COUNT}\n      tagOverrides:\n        user: {value: \"request.headers['x-user']\"}\n        destination_port: {value: string(destination.port)}\n",
        ))
        .render();
    h.write_config(&config);
    let deadline = Instant::now() + Duration::from_secs(10);
    let samples = loop {
        let conn = h.client().connect().await.unwrap();
        let mut http = conn.http1(authority(80)).await.unwrap();
        let req = http::Request::get("/ok")
            .header("host", "echo.default.svc.cluster.local")
            .header("x-user", "alice")
            .body(filters::body::empty())
            .unwrap();
        let resp = http.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        body_bytes(resp).await;
        // Refused until the new configuration (with the Service) is loaded.
        if let Ok(mut none) = conn
            .http1(SocketAddr::new("127.96.0.11".parse().unwrap(), 80))
            .await
        {
            let resp = none.send_request(get("/nothing")).await.unwrap();
            body_bytes(resp).await;
        }
        let s = h.prometheus().await;
        if metric(&s, "istio_requests_total", &[("user", "alice")]) >= 1.0
            && std::fs::read_to_string(&path).is_ok_and(|l| l.contains("ERR 503"))
        {
            break s;
        }
        assert!(Instant::now() < deadline, "no dimension or no error line");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        metric(
            &samples,
            "istio_requests_total",
            &[
                ("user", "alice"),
                ("destination_port", "80"),
                ("response_code", "200")
            ]
        ) >= 1.0,
        "{samples:#?}"
    );
    assert!(
        metric(
            &samples,
            "istio_requests_total",
            &[("user", "unknown"), ("response_code", "503")]
        ) >= 1.0,
        "{samples:#?}"
    );
    let log = std::fs::read_to_string(&path).unwrap();
    assert!(
        log.lines().all(|l| l == "ERR 503 UH /nothing"),
        "only 5xx lines:\n{log}"
    );
}

/// From local configuration, MeshConfig `accessLogFile` also gives the built-in listeners
/// their logs, as istiod does (accesslog.go): a request the HBONE listener refuses (status
/// >= 400) and a CONNECT to an address no chain serves (`NR`) each write one line.
#[tokio::test]
async fn refused_requests_and_unserved_addresses_are_logged_once() {
    let h = Harness::start(Spec {
        extra_yaml: vec![mesh_config(
            "accessLogFile: /dev/stdout\naccessLogFormat: \"LINE %REQ(:METHOD)% %RESPONSE_CODE% %RESPONSE_FLAGS% %DOWNSTREAM_LOCAL_ADDRESS%\\n\"\n",
        )],
        capture_stdout: true,
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let resp = http.send_request(get("/ok")).await.unwrap();
    assert_eq!(resp.status(), 200);
    body_bytes(resp).await;
    let refused = conn.tunnel(authority(9999), &[]).await;
    assert!(refused.is_err(), "{refused:?}");
    let status = conn
        .status_of(
            http::Request::get(format!("https://{}/", authority(80)))
                .body(())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(status, 405);
    let hbone = h.wp.hbone;
    // The request's own line (its connection manager's log) may be written after the
    // others: compared in any order.
    let mut want = vec![
        format!("LINE GET 200 - {}", authority(80)),
        format!("LINE - 0 NR {}", authority(9999)),
        format!("LINE GET 405 - {hbone}"),
    ];
    want.sort();
    let mut log = wait_for(|| {
        let log: Vec<String> = h
            .stdout()
            .lines()
            .filter(|l| l.starts_with("LINE "))
            .map(str::to_string)
            .collect();
        (log.len() >= want.len()).then_some(log)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    log.extend(
        h.stdout()
            .lines()
            .filter(|l| l.starts_with("LINE "))
            .skip(log.len())
            .map(str::to_string)
            .collect::<Vec<_>>(),
    );
    log.sort();
    assert_eq!(log, want);
}
