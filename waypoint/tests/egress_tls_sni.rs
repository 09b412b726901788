//! TLS originated to servers outside the mesh, checked at the server: DestinationRule
//! `tls` mode SIMPLE with an explicit `sni` on a STATIC ServiceEntry, and on a DYNAMIC_DNS
//! wildcard entry without one, where the request's host becomes the SNI (Envoy's
//! `auto_sni`; Istio's "http origination targetPort" case of
//! `TestWaypointAsEgressGatewayForWildcardEntries`, tests/integration/ambient/
//! waypoint_test.go).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use testkit::echo::EchoIdentity;
use testkit::tls_echo::TlsEcho;

const SE_VIP: &str = "127.97.0.4";

/// A TLS server on the internet (its own CA) at a fresh loopback address.
async fn tls_server(dir: &std::path::Path) -> TlsEcho {
    let ca = hbone::tls::DevCa::new("external-ca").unwrap();
    // The waypoint verifies against this CA (`caCertificates`).
    let waypoint = ca
        .issue(&filters::model::Identity::new(
            "cluster.local",
            NS,
            "waypoint",
        ))
        .unwrap();
    waypoint.write(dir).unwrap();
    let certs = ca
        .issue(&filters::model::Identity::new(
            "cluster.local",
            "internet",
            "api",
        ))
        .unwrap()
        .certs()
        .unwrap();
    let ip = testkit::free_loopback_ip(8443);
    TlsEcho::start_simple(
        SocketAddr::new(ip, 8443),
        &certs,
        EchoIdentity {
            pod: "tls-external".into(),
            namespace: "internet".into(),
        },
    )
    .await
    .unwrap()
}

async fn get(h: &Harness, port: u16, host: &str) -> (u16, Option<String>) {
    let conn = h.client().connect().await.unwrap();
    let mut http = conn
        .http1(format!("{SE_VIP}:{port}").parse().unwrap())
        .await
        .unwrap();
    let req = http::Request::get("/")
        .header("host", host)
        .body(filters::body::empty())
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), http.send_request(req))
        .await
        .expect("answered in time")
        .unwrap();
    let status = resp.status().as_u16();
    let pod = if status == 200 {
        Some(json(resp).await["pod"].as_str().unwrap().to_string())
    } else {
        None
    };
    (status, pod)
}

#[tokio::test]
async fn the_external_server_sees_the_configured_sni() {
    let dir = tempfile::tempdir().unwrap();
    let server = tls_server(dir.path()).await;
    let entry = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: api\n  namespace: {NS}\n  labels: {{istio.io/use-waypoint: waypoint}}\nspec:\n  hosts: [api.example.test]\n  addresses: [{SE_VIP}]\n  location: MESH_EXTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: 80, name: http, protocol: HTTP, targetPort: {}}}\n  endpoints:\n  - address: {}\n",
        server.addr.port(),
        server.addr.ip()
    );
    let rule = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: {NS}}}\nspec:\n  host: api.example.test\n  trafficPolicy:\n    tls:\n      mode: SIMPLE\n      sni: origin.example.test\n      caCertificates: {}\n      subjectAltNames: [spiffe://cluster.local/ns/internet/sa/api]\n",
        dir.path().join("root-cert.pem").display()
    );
    let h = Harness::start(Spec {
        extra_yaml: vec![entry, rule],
        ..Spec::default()
    })
    .await;
    assert_eq!(
        get(&h, 80, "api.example.test").await,
        (200, Some("tls-external".into()))
    );
    let names = server.server_names();
    assert!(!names.is_empty());
    assert!(
        names
            .iter()
            .all(|n| n.as_deref() == Some("origin.example.test")),
        "{names:?}"
    );
}

#[tokio::test]
async fn a_wildcard_entry_sends_the_requests_host_as_sni() {
    let dir = tempfile::tempdir().unwrap();
    let server = tls_server(dir.path()).await;
    let IpAddr::V4(ip) = server.addr.ip() else {
        panic!("IPv4 loopback expected")
    };
    let dns = testkit::dns_server::DnsServer::start().await.unwrap();
    dns.set("a.example.test", &[ip], 30);
    let entry = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: wildcard\n  namespace: {NS}\n  labels: {{istio.io/use-waypoint: waypoint}}\nspec:\n  hosts: ['*.example.test']\n  location: MESH_EXTERNAL\n  resolution: DYNAMIC_DNS\n  ports:\n  - {{number: 8080, name: http-for-tls, protocol: HTTP, targetPort: 443}}\nstatus:\n  addresses: [{{value: {SE_VIP}}}]\n"
    );
    let rule = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: wildcard-tls-origination, namespace: {NS}}}\nspec:\n  host: '*.example.test'\n  trafficPolicy:\n    tls:\n      mode: SIMPLE\n      insecureSkipVerify: true\n"
    );
    let server_addr: &'static str = Box::leak(dns.addr.to_string().into_boxed_str());
    let h = Harness::start(Spec {
        extra_yaml: vec![entry, rule],
        extra_args: vec!["--dns-server", server_addr],
        ..Spec::default()
    })
    .await;
    let host = format!("a.example.test:{}", server.addr.port());
    assert_eq!(
        get(&h, 8080, &host).await,
        (200, Some("tls-external".into()))
    );
    assert_eq!(server.server_names(), [Some("a.example.test".to_string())]);
}
