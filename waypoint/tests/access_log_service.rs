//! The local configuration's access log service: a MeshConfig `envoyHttpAls` provider
//! and a Telemetry `accessLogging` naming it (istiod's `httpGrpcAccessLogFromTelemetry`,
//! pilot/pkg/model/telemetry_logging.go), the service a registry Service whose pod is in
//! the ambient mesh. Its name resolves nowhere but in the configuration: entries arrive
//! only through the Service's endpoints, over HBONE.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use envoy_types::pb::envoy::config::core::v3::RequestMethod;
use testkit::als::AccessLogServer;
use testkit::echo::EchoIdentity;
use testkit::mesh::{MeshYaml, Port};
use testkit::ztunnel::{App, FakeZtunnel, ZtunnelOptions};

const ALS_NS: &str = "observability";
const ALS_HOST: &str = "als.observability.svc.cluster.local";

#[tokio::test]
async fn entries_reach_a_mesh_access_log_service_from_a_local_telemetry() {
    let als = AccessLogServer::start().await.unwrap();
    let h = Harness::start(Spec::default()).await;
    let issued =
        h.ca.issue(&filters::model::Identity::new(
            "cluster.local",
            ALS_NS,
            "als",
        ))
        .unwrap();
    let pod = FakeZtunnel::start_fresh(|ip| ZtunnelOptions {
        ip,
        certs: issued.certs().unwrap(),
        allowed_caller: Some(h.waypoint_id.clone()),
        who: EchoIdentity {
            pod: "als-0".into(),
            namespace: ALS_NS.into(),
        },
        apps: HashMap::from([(9001, App::Forward(als.addr))]),
    })
    .await
    .unwrap();
    let services = MeshYaml::default()
        .service(
            ALS_NS,
            "als",
            "127.96.2.9".parse().unwrap(),
            "als",
            &[Port {
                name: "grpc-als",
                port: 9001,
                target: 9001,
            }],
        )
        .pod(ALS_NS, "als-0", pod.ip, "als", "als", true)
        .render();
    let provider = format!(
        "extensionProviders:\n- name: als\n  envoyHttpAls:\n    service: {ALS_HOST}\n    port: 9001\n    additionalResponseHeadersToLog: [content-type]\n"
    );
    let config = h
        .mesh
        .clone()
        .raw(&services)
        .raw(&mesh_config(&provider))
        .raw(&telemetry(
            "  accessLogging:\n  - providers: [{name: als}]\n    filter:\n      expression: request.url_path.startsWith('/logged')\n",
        ))
        .render();
    h.write_config(&config);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (id, entry) = loop {
        let conn = h.client().connect().await.unwrap();
        for path in ["/skipped", "/logged"] {
            let mut http = conn.http1(authority(80)).await.unwrap();
            let resp = http.send_request(get(path)).await.unwrap();
            assert_eq!(resp.status(), 200);
            body_bytes(resp).await;
        }
        if let Some(e) = als.http_entries().into_iter().next() {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no entry reached the access log Service ({} streams)",
            als.streams().len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let id = id.expect("the stream starts with its identifier");
    assert_eq!(id.log_name, "http_envoy_accesslog");
    assert_eq!(id.node.unwrap().cluster, "waypoint.default");
    let req = entry.request.unwrap();
    assert_eq!(
        (req.request_method, req.path.as_str()),
        (RequestMethod::Get as i32, "/logged")
    );
    let resp = entry.response.unwrap();
    assert_eq!(resp.response_code.unwrap().value, 200);
    assert!(resp.response_headers.contains_key("content-type"));
    assert_eq!(
        entry.common_properties.unwrap().upstream_cluster,
        "inbound-vip|80|http|echo.default.svc.cluster.local"
    );
    // Let any batch in flight arrive: the filtered path never does.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(als
        .http_entries()
        .iter()
        .all(|(_, e)| e.request.as_ref().is_some_and(|r| r.path == "/logged")));
    assert!(
        pod.counters.connects.load(Ordering::Relaxed) >= 1,
        "the stream went through the service pod's ztunnel"
    );
}
