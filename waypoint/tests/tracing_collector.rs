//! The collector as istiod requires it: a MeshConfig `opentelemetry` provider naming a
//! registry Service, whose pod is in the ambient mesh. The Service's name resolves nowhere
//! but in the configuration, so spans arrive only if the waypoint reaches the collector
//! through the Service's endpoints (over HBONE, through the pod's ztunnel), over OTLP/gRPC
//! and OTLP/HTTP. The spans carry what Envoy and istiod stamp on them: `node_id`,
//! `istio.cluster_id`, and the resource's `service.name`.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use testkit::echo::EchoIdentity;
use testkit::mesh::{MeshYaml, Port};
use testkit::otlp::{Collector, Received};
use testkit::ztunnel::{App, FakeZtunnel, ZtunnelOptions};

const COLLECTOR_NS: &str = "observability";
const COLLECTOR_HOST: &str = "otel-collector.observability.svc.cluster.local";

/// The node id a waypoint `default/waypoint` presents to istiod.
const NODE_ID: &str = "waypoint~0.0.0.0~waypoint.default~default.svc.cluster.local";

/// A collector Service `otel-collector` (port `port`, named `port_name`) whose only pod is
/// in the mesh and forwards to `collector`: the pod and the Service's YAML.
async fn collector_service(
    h: &Harness,
    collector: &Collector,
    port_name: &'static str,
    port: u16,
) -> (FakeZtunnel, String) {
    let issued =
        h.ca.issue(&filters::model::Identity::new(
            "cluster.local",
            COLLECTOR_NS,
            "otel-collector",
        ))
        .unwrap();
    let pod = FakeZtunnel::start_fresh(|ip| ZtunnelOptions {
        ip,
        certs: issued.certs().unwrap(),
        allowed_caller: Some(h.waypoint_id.clone()),
        who: EchoIdentity {
            pod: "otel-collector-0".into(),
            namespace: COLLECTOR_NS.into(),
        },
        apps: HashMap::from([(port, App::Forward(collector.addr))]),
    })
    .await
    .unwrap();
    let services = MeshYaml::default()
        .service(
            COLLECTOR_NS,
            "otel-collector",
            "127.96.2.7".parse().unwrap(),
            "otel-collector",
            &[Port {
                name: port_name,
                port,
                target: port,
            }],
        )
        .pod(
            COLLECTOR_NS,
            "otel-collector-0",
            pod.ip,
            "otel-collector",
            "otel-collector",
            true,
        )
        .render();
    (pod, services)
}

/// Starts a waypoint tracing every request to the Service `otel-collector` (port `port`,
/// named `port_name`), whose only pod is in the mesh and forwards to `collector`; sends
/// requests until a SERVER span arrives (bounded) and returns it with the collector pod.
async fn traced_through_the_mesh(
    collector: &Collector,
    port_name: &'static str,
    port: u16,
    http: bool,
) -> (Received, FakeZtunnel) {
    let h = Harness::start(Spec::default()).await;
    let (pod, services) = collector_service(&h, collector, port_name, port).await;
    let transport = if http {
        "    http:\n      path: /v1/traces\n      timeout: 2s\n"
    } else {
        "    grpc:\n      timeout: 2s\n"
    };
    let provider = format!(
        "extensionProviders:\n- name: otel\n  opentelemetry:\n    service: {COLLECTOR_HOST}\n    port: {port}\n{transport}"
    );
    let config = h
        .mesh
        .clone()
        .raw(&services)
        .raw(&mesh_config(&provider))
        .raw(&telemetry(
            "  tracing:\n  - providers: [{name: otel}]\n    randomSamplingPercentage: 100\n",
        ))
        .render();
    h.write_config(&config);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let conn = h.client().connect().await.unwrap();
        let mut http = conn.http1(authority(80)).await.unwrap();
        let resp = http.send_request(get("/traced")).await.unwrap();
        assert_eq!(resp.status(), 200);
        body_bytes(resp).await;
        if let Some(server) = collector
            .spans()
            .into_iter()
            .find(|r| r.span.kind == 2 && r.attr("url.path").as_deref() == Some("/traced"))
        {
            return (server, pod);
        }
        assert!(
            Instant::now() < deadline,
            "no span reached the collector Service ({} exports)",
            collector.exports()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn assert_envoy_tags(server: &Received) {
    assert_eq!(server.attr("node_id").as_deref(), Some(NODE_ID));
    assert_eq!(
        server.attr("istio.cluster_id").as_deref(),
        Some("Kubernetes")
    );
    assert_eq!(
        server.resource_attr("service.name").as_deref(),
        Some("waypoint.default")
    );
}

#[tokio::test]
async fn spans_reach_a_mesh_collector_service_over_otlp_grpc() {
    let collector = Collector::grpc().await.unwrap();
    let (server, pod) = traced_through_the_mesh(&collector, "grpc-otlp", 4317, false).await;
    assert_envoy_tags(&server);
    assert!(
        pod.counters.connects.load(Ordering::Relaxed) >= 1,
        "the export went through the collector pod's ztunnel"
    );
}

#[tokio::test]
async fn spans_reach_a_mesh_collector_service_over_otlp_http() {
    let collector = Collector::http().await.unwrap();
    let (server, pod) = traced_through_the_mesh(&collector, "http-otlp", 4318, true).await;
    assert_envoy_tags(&server);
    assert!(
        pod.counters.connects.load(Ordering::Relaxed) >= 1,
        "the export went through the collector pod's ztunnel"
    );
}

#[tokio::test]
async fn access_logs_reach_a_mesh_collector_service_from_a_local_telemetry() {
    // MeshConfig `envoyOtelAls` provider and a Telemetry `accessLogging` naming it, with a
    // filter expression: records for the logged path only reach the collector Service.
    let collector = Collector::grpc().await.unwrap();
    let h = Harness::start(Spec::default()).await;
    let (pod, services) = collector_service(&h, &collector, "grpc-otlp", 4317).await;
    let provider = format!(
        "extensionProviders:\n- name: otel-logs\n  envoyOtelAls:\n    service: {COLLECTOR_HOST}\n    port: 4317\n    logName: waypoint-logs\n    logFormat:\n      text: '%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE%'\n      labels: {{code: '%RESPONSE_CODE%', route: '%UPSTREAM_CLUSTER%'}}\n"
    );
    let config = h
        .mesh
        .clone()
        .raw(&services)
        .raw(&mesh_config(&provider))
        .raw(&telemetry(
            "  accessLogging:\n  - providers: [{name: otel-logs}]\n    filter:\n      expression: request.url_path.startsWith('/logged')\n",
        ))
        .render();
    h.write_config(&config);
    let deadline = Instant::now() + Duration::from_secs(20);
    let record = loop {
        let conn = h.client().connect().await.unwrap();
        for path in ["/skipped", "/logged"] {
            let mut http = conn.http1(authority(80)).await.unwrap();
            let resp = http.send_request(get(path)).await.unwrap();
            assert_eq!(resp.status(), 200);
            body_bytes(resp).await;
        }
        if let Some(r) = collector.logs().into_iter().next() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no log record reached the collector Service ({} exports)",
            collector.exports()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(record.body().as_deref(), Some("GET /logged 200"));
    assert_eq!(record.attr("code").as_deref(), Some("200"));
    assert_eq!(
        record.attr("route").as_deref(),
        Some("inbound-vip|80|http|echo.default.svc.cluster.local")
    );
    // Let any batch in flight arrive: the filtered path never does.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(collector
        .logs()
        .iter()
        .all(|r| r.body().is_some_and(|b| b.starts_with("GET /logged "))));
    assert!(
        pod.counters.connects.load(Ordering::Relaxed) >= 1,
        "the export went through the collector pod's ztunnel"
    );
}
