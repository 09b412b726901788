//! Egress to a ServiceEntry with `resolution: NONE`: the waypoint sends each tunnel to its
//! original destination, the address the client connected to (the CONNECT authority, one
//! of the entry's `addresses`), at the port's `targetPort` when it has one (istiod's
//! `upstream_port_override`), over plain TCP since the address is no mesh workload; for
//! HTTP and TCP ports alike.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use testkit::echo::EchoIdentity;

fn service_entry(address: std::net::IpAddr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: passthrough\n  namespace: {NS}\n  labels: {{istio.io/use-waypoint: waypoint}}\nspec:\n  hosts: [passthrough.example.test]\n  addresses: [{address}]\n  location: MESH_EXTERNAL\n  resolution: NONE\n  ports:\n  - {{number: 80, name: http, protocol: HTTP, targetPort: 8080}}\n  - {{number: 9000, name: tcp, protocol: TCP, targetPort: 8080}}\n  - {{number: 8080, name: http-same, protocol: HTTP}}\n"
    )
}

/// The status and, on 200, the answering server of `GET /` through a tunnel to `to`.
async fn send(h: &Harness, to: SocketAddr) -> (u16, Option<String>) {
    answer_of(h, to, "passthrough.example.test").await
}

#[tokio::test]
async fn each_tunnel_goes_to_the_address_it_was_opened_to() {
    let ip = testkit::free_loopback_ip(8080);
    let _server = testkit::echo::serve_plain(
        SocketAddr::new(ip, 8080),
        EchoIdentity {
            pod: "outside".into(),
            namespace: "internet".into(),
        },
    )
    .await
    .unwrap();
    let h = Harness::start(Spec {
        extra_yaml: vec![service_entry(ip)],
        ..Spec::default()
    })
    .await;
    // HTTP port 80 → the same address at targetPort 8080.
    assert_eq!(
        send(&h, SocketAddr::new(ip, 80)).await,
        (200, Some("outside".into()))
    );
    // TCP port 9000 → likewise, bytes copied.
    assert_eq!(
        send(&h, SocketAddr::new(ip, 9000)).await,
        (200, Some("outside".into()))
    );
    // Without targetPort: the port connected to.
    assert_eq!(
        send(&h, SocketAddr::new(ip, 8080)).await,
        (200, Some("outside".into()))
    );
}

/// An original destination that is a mesh pod is reached over HBONE (through its ztunnel,
/// which accepts only the waypoint), not over plain TCP: here a `resolution: NONE` entry
/// whose address is the pod's own IP.
#[tokio::test]
async fn an_original_destination_in_the_mesh_is_reached_over_hbone() {
    let h = Harness::start(Spec::default()).await;
    let pod = h.pods[0].ip;
    let config = std::fs::read_to_string(&h.config).unwrap();
    let entry = service_entry(pod);
    std::fs::write(&h.config, format!("{config}\n---\n{entry}")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Port 80 of the pod's IP: the entry's; its ztunnel serves the app on 8080 only.
        if send(&h, SocketAddr::new(pod, 80)).await == (200, Some("echo-0".into())) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reached over HBONE"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
