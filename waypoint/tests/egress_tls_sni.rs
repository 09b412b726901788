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
    answer_of(h, format!("{SE_VIP}:{port}").parse().unwrap(), host).await
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

/// A client's TLS (not verifying the server) to `name`, inside a tunnel to `SE_VIP:port`:
/// `GET /` and the answering server.
async fn tls_get(h: &Harness, port: u16, name: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let conn = h.client().connect().await.unwrap();
    let tunnel = conn
        .tunnel(format!("{SE_VIP}:{port}").parse().unwrap(), &[])
        .await
        .unwrap();
    let config = hbone::tls::origination_config(&filters::model::UpstreamTls {
        sni: None,
        auto_sni: false,
        subject_alt_names: vec![],
        auto_san_validation: false,
        roots: filters::model::TlsRoots::Insecure,
        crl: None,
        crl_leaf_only: false,
        client_certificate: None,
        alpn: vec!["http/1.1".into()],
    })
    .unwrap();
    let server_name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tunnel)
        .await?;
    tls.write_all(
        format!("GET / HTTP/1.1\r\nhost: {name}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .ok();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let body = body.trim_start_matches(|c: char| c.is_ascii_hexdigit() || c == '\r' || c == '\n');
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |i| i + 1);
    let v: serde_json::Value = serde_json::from_str(&body[start..end])
        .map_err(|e| std::io::Error::other(format!("{e}: {answer}")))?;
    Ok(v["pod"].as_str().unwrap_or_default().to_string())
}

/// TLS passthrough by SNI on a wildcard entry's TLS port (istiod's
/// `sni_dynamic_forward_proxy` before the TCP proxy, `buildSNIDFPFilter`,
/// pilot/pkg/networking/core/networkfilter.go; Istio's "basic TLS" case of
/// `TestWaypointAsEgressGatewayForWildcardEntries`): the ClientHello's server name picks
/// the host, TLS is not terminated (the server sees the client's SNI and handshake), and
/// a name outside the wildcard gets the tunnel closed.
#[tokio::test]
async fn a_tls_port_is_passed_through_to_the_host_its_sni_names() {
    let dir = tempfile::tempdir().unwrap();
    let server = tls_server(dir.path()).await;
    let IpAddr::V4(ip) = server.addr.ip() else {
        panic!("IPv4 loopback expected")
    };
    let dns = testkit::dns_server::DnsServer::start().await.unwrap();
    dns.set("a.example.test", &[ip], 30);
    let entry = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: wildcard\n  namespace: {NS}\n  labels: {{istio.io/use-waypoint: waypoint}}\nspec:\n  hosts: ['*.example.test']\n  location: MESH_EXTERNAL\n  resolution: DYNAMIC_DNS\n  ports:\n  - {{number: 443, name: tls, protocol: TLS, targetPort: {}}}\nstatus:\n  addresses: [{{value: {SE_VIP}}}]\n",
        server.addr.port()
    );
    let dns_addr: &'static str = Box::leak(dns.addr.to_string().into_boxed_str());
    let h = Harness::start(Spec {
        extra_yaml: vec![entry],
        extra_args: vec!["--dns-server", dns_addr],
        ..Spec::default()
    })
    .await;
    assert_eq!(
        tls_get(&h, 443, "a.example.test").await.unwrap(),
        "tls-external"
    );
    assert_eq!(server.server_names(), [Some("a.example.test".to_string())]);
    // Outside the wildcard: no upstream, the tunnel is closed during the handshake.
    assert!(tls_get(&h, 443, "a.example.org").await.is_err());
    assert_eq!(server.server_names().len(), 1);
}
