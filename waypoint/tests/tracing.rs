//! Tracing end to end: SERVER and CLIENT spans at real OTLP receivers (gRPC and HTTP),
//! trace context continued and propagated, and a dead collector that never slows requests.

mod common;

use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::trace::v1::Span;
use testkit::otlp::Collector;

fn attr(span: &Span, key: &str) -> Option<String> {
    testkit::otlp::attr(&span.attributes, key)
}

fn tracing_config(provider: &str, extra_tag: bool) -> Vec<String> {
    tracing_config_sampled(provider, extra_tag, 100)
}

fn tracing_config_sampled(provider: &str, extra_tag: bool, percent: u32) -> Vec<String> {
    let tags = if extra_tag {
        "    customTags:\n      team: {literal: {value: payments}}\n      tenant: {header: {name: x-tenant, defaultValue: none}}\n"
    } else {
        ""
    };
    vec![
        mesh_config(provider),
        telemetry(&format!(
            "  tracing:\n  - providers: [{{name: otel}}]\n    randomSamplingPercentage: {percent}\n{tags}"
        )),
    ]
}

async fn wait_spans(c: &Collector, n: usize) -> Vec<Span> {
    wait_for(|| {
        let s = c.spans();
        (s.len() >= n).then(|| s.into_iter().map(|r| r.span).collect())
    })
    .await
}

const PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const CONNECT_PARENT: &str = "00-11111111111111111111111111111111-2222222222222222-01";

#[tokio::test]
async fn spans_continue_the_client_trace_over_otlp_grpc() {
    let receiver = Collector::grpc().await.unwrap();
    let addr = receiver.addr;
    let provider = format!(
        "extensionProviders:\n- name: otel\n  opentelemetry:\n    service: {}\n    port: {}\n",
        addr.ip(),
        addr.port()
    );
    let route = format!("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: echo-route\n  namespace: {NS}\nspec:\n  parentRefs:\n  - {{group: \"\", kind: Service, name: echo, port: 80}}\n  rules:\n  - matches:\n    - path: {{type: PathPrefix, value: /retry}}\n    retry:\n      attempts: 3\n      codes: [500]\n      backoff: 10ms\n    backendRefs:\n    - {{name: echo, port: 80}}\n  - backendRefs:\n    - {{name: echo, port: 80}}\n");
    let mut yaml = tracing_config(&provider, true);
    yaml.push(route);
    let h = Harness::start(Spec {
        extra_yaml: yaml,
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let tunnel = conn
        .tunnel(authority(80), &[("traceparent", CONNECT_PARENT)])
        .await
        .unwrap();
    let mut http = testkit::client::http1_over(tunnel).await.unwrap();
    let req = http::Request::get("/traced?q=1")
        .header("host", "echo.default.svc.cluster.local")
        .header("traceparent", PARENT)
        .header("x-tenant", "acme")
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let echoed = json(resp).await;
    http.ready().await.unwrap();
    // No traceparent on the request: the CONNECT's is the parent.
    let resp = http.send_request(get("/second")).await.unwrap();
    assert_eq!(resp.status(), 200);
    body_bytes(resp).await;
    http.ready().await.unwrap();
    // Two failed attempts then success: three CLIENT spans under one SERVER span.
    let resp = http
        .send_request(get(
            "/retry/t?uuid=trace-retry&succeedAfter=2&responseCode=500",
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    body_bytes(resp).await;

    let spans = wait_spans(&receiver, 8).await;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let server = spans
        .iter()
        .find(|s| s.kind == 2 && attr(s, "url.path").as_deref() == Some("/traced"))
        .expect("server span");
    assert_eq!(hex(&server.trace_id), "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(hex(&server.parent_span_id), "b7ad6b7169203331");
    assert_eq!(server.name, "echo.default.svc.cluster.local:80/*");
    assert_eq!(attr(server, "http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr(server, "url.query").as_deref(), Some("q=1"));
    assert_eq!(
        attr(server, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr(server, "http.route").as_deref(),
        Some("default/echo-route")
    );
    assert_eq!(
        attr(server, "server.address").as_deref(),
        Some("echo.default.svc.cluster.local")
    );
    assert_eq!(
        attr(server, "istio.canonical_service").as_deref(),
        Some("waypoint")
    );
    assert_eq!(attr(server, "istio.namespace").as_deref(), Some("default"));
    assert_eq!(
        attr(server, "istio.destination_workload").as_deref(),
        Some("echo-0")
    );
    assert_eq!(attr(server, "team").as_deref(), Some("payments"));
    assert_eq!(attr(server, "tenant").as_deref(), Some("acme"));
    // What Envoy and istiod stamp on every SERVER span, and the resource's service name.
    assert_eq!(
        attr(server, "node_id").as_deref(),
        Some("waypoint~0.0.0.0~waypoint.default~default.svc.cluster.local")
    );
    assert_eq!(
        attr(server, "istio.cluster_id").as_deref(),
        Some("Kubernetes")
    );
    let resource = receiver
        .spans()
        .into_iter()
        .find(|r| r.span.span_id == server.span_id)
        .expect("the server span with its resource");
    assert_eq!(
        resource.resource_attr("service.name").as_deref(),
        Some("waypoint.default")
    );
    let client = spans
        .iter()
        .find(|s| s.kind == 3 && s.parent_span_id == server.span_id)
        .expect("client span under the server span");
    assert_eq!(client.trace_id, server.trace_id);
    assert!(
        client.name.starts_with("router inbound-vip|80|http|echo"),
        "{}",
        client.name
    );
    // The upstream saw the CLIENT span as its parent.
    let upstream_tp = echoed["headers"]["Traceparent"]
        .get(0)
        .or_else(|| echoed["headers"]["traceparent"].get(0))
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("no traceparent upstream: {echoed}"))
        .to_string();
    assert_eq!(
        upstream_tp,
        format!(
            "00-0af7651916cd43dd8448eb211c80319c-{}-01",
            hex(&client.span_id)
        )
    );

    let second = spans
        .iter()
        .find(|s| s.kind == 2 && attr(s, "url.path").as_deref() == Some("/second"))
        .expect("second server span");
    assert_eq!(hex(&second.trace_id), "11111111111111111111111111111111");
    assert_eq!(hex(&second.parent_span_id), "2222222222222222");
    assert_eq!(attr(second, "tenant").as_deref(), Some("none"));

    let retried = spans
        .iter()
        .find(|s| s.kind == 2 && attr(s, "url.path").as_deref() == Some("/retry/t"))
        .expect("retried server span");
    let attempts: Vec<_> = spans
        .iter()
        .filter(|s| s.kind == 3 && s.parent_span_id == retried.span_id)
        .collect();
    assert_eq!(attempts.len(), 3, "one CLIENT span per attempt");
    let codes: Vec<_> = attempts
        .iter()
        .filter_map(|s| attr(s, "http.response.status_code"))
        .collect();
    assert_eq!(codes.iter().filter(|c| *c == "500").count(), 2, "{codes:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = h.prometheus().await;
        if metric(&samples, "waypoint_spans_exported_total", &[]) >= 8.0 {
            assert_eq!(metric(&samples, "waypoint_spans_dropped_total", &[]), 0.0);
            break;
        }
        assert!(Instant::now() < deadline, "exports not counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn spans_reach_an_otlp_http_collector() {
    let receiver = Collector::http().await.unwrap();
    let addr = receiver.addr;
    let provider = format!(
        "extensionProviders:\n- name: otel\n  opentelemetry:\n    service: {}\n    port: {}\n    http:\n      path: /v1/traces\n      timeout: 2s\n",
        addr.ip(),
        addr.port()
    );
    // 0% sampling: requests without a decision are not traced; a sampled parent is.
    let h = Harness::start(Spec {
        extra_yaml: tracing_config_sampled(&provider, false, 0),
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    for _ in 0..5 {
        let resp = http.send_request(get("/unsampled")).await.unwrap();
        assert_eq!(resp.status(), 200);
        body_bytes(resp).await;
        http.ready().await.unwrap();
    }
    let req = http::Request::get("/b3")
        .header("host", "echo.default.svc.cluster.local")
        .header("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let echoed = json(resp).await;
    wait_spans(&receiver, 2).await;
    // Let any stray batch arrive before counting.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let spans: Vec<Span> = receiver.spans().into_iter().map(|r| r.span).collect();
    assert_eq!(
        spans.len(),
        2,
        "only the sampled request is traced: {spans:#?}"
    );
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let server = spans.iter().find(|s| s.kind == 2).expect("server span");
    assert_eq!(hex(&server.trace_id), "80f198ee56343ba864fe8b2a57d3eff7");
    assert_eq!(hex(&server.parent_span_id), "e457b5a2e4d86bd1");
    // B3 in, B3 (and W3C) out, pointing at the CLIENT span.
    let client = spans.iter().find(|s| s.kind == 3).expect("client span");
    let b3 = echoed["headers"]["B3"]
        .get(0)
        .or_else(|| echoed["headers"]["b3"].get(0))
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("no b3 upstream: {echoed}"))
        .to_string();
    assert_eq!(
        b3,
        format!(
            "80f198ee56343ba864fe8b2a57d3eff7-{}-1",
            hex(&client.span_id)
        )
    );
}

#[tokio::test]
async fn a_dead_collector_never_slows_requests() {
    // Accepts connections and never answers.
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = blackhole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = blackhole.accept().await {
            held.push(s);
        }
    });
    let provider = format!(
        "extensionProviders:\n- name: otel\n  opentelemetry:\n    service: {}\n    port: {}\n    grpc:\n      timeout: 1s\n",
        addr.ip(),
        addr.port()
    );
    let h = Harness::start(Spec {
        extra_yaml: tracing_config(&provider, false),
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let mut slowest = Duration::ZERO;
    for i in 0..200 {
        let started = Instant::now();
        let resp = http.send_request(get(&format!("/n/{i}"))).await.unwrap();
        assert_eq!(resp.status(), 200);
        body_bytes(resp).await;
        http.ready().await.unwrap();
        slowest = slowest.max(started.elapsed());
    }
    // An export waits up to 1 s for the collector; no request waited for an export.
    assert!(
        slowest < Duration::from_millis(900),
        "slowest request took {slowest:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = h.prometheus().await;
        if metric(&s, "waypoint_spans_dropped_total", &[]) >= 1.0 {
            assert!(metric(&s, "waypoint_span_export_failures_total", &[]) >= 1.0);
            assert_eq!(metric(&s, "waypoint_spans_exported_total", &[]), 0.0);
            break;
        }
        assert!(Instant::now() < deadline, "dropped spans were not counted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
