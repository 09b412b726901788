//! BackendTLSPolicy on an egress ServiceEntry (Istio's ambient egress guide, "TLS
//! origination" with a Gateway API policy): the waypoint resolves the entry's host through
//! the test kit's DNS server, originates TLS to the external server with the policy's
//! `hostname` as SNI, verifies the server against the CA bundle of the ConfigMap the
//! policy names, and requires the hostname among the certificate's SANs.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use testkit::dns_server::DnsServer;
use testkit::echo::EchoIdentity;
use testkit::tls_echo::TlsEcho;

const SE_VIP: &str = "127.97.0.7";
const HOST: &str = "api.example.test";
/// The name the external server's certificate is for, and the SNI it expects.
const ORIGIN: &str = "origin.example.test";

/// The entry, its CA ConfigMap and the policy (`hostname` as given).
fn config(port: u16, ca_pem: &str, hostname: &str) -> Vec<String> {
    let entry = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: api\n  namespace: {NS}\n  labels: {{istio.io/use-waypoint: waypoint}}\nspec:\n  hosts: [{HOST}]\n  addresses: [{SE_VIP}]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports:\n  - {{number: 80, name: http, protocol: HTTP, targetPort: {port}}}\n"
    );
    let ca: String = ca_pem.lines().map(|l| format!("    {l}\n")).collect();
    let config_map = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: api-ca, namespace: {NS}}}\ndata:\n  ca.crt: |\n{ca}"
    );
    let policy = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: BackendTLSPolicy\nmetadata: {{name: api-tls, namespace: {NS}}}\nspec:\n  targetRefs:\n  - {{group: networking.istio.io, kind: ServiceEntry, name: api, sectionName: http}}\n  validation:\n    hostname: {hostname}\n    caCertificateRefs:\n    - {{group: '', kind: ConfigMap, name: api-ca}}\n"
    );
    vec![entry, config_map, policy]
}

/// An external TLS server (its own CA, a certificate for [`ORIGIN`]) at a fresh loopback
/// address that the DNS server gives for [`HOST`]; returns it and the CA's PEM.
async fn external(dns: &DnsServer) -> (TlsEcho, String) {
    let ca = hbone::tls::DevCa::new("internet-ca").unwrap();
    // The test kit's certificates carry a SPIFFE identity; this one also names ORIGIN.
    let certs = ca
        .issue_with_dns(
            &filters::model::Identity::new("cluster.local", "internet", "api"),
            ORIGIN,
        )
        .unwrap()
        .certs()
        .unwrap();
    let IpAddr::V4(ip) = testkit::free_loopback_ip(8443) else {
        panic!("IPv4 loopback expected")
    };
    let server = TlsEcho::start_simple(
        SocketAddr::new(ip.into(), 8443),
        &certs,
        EchoIdentity {
            pod: "tls-external".into(),
            namespace: "internet".into(),
        },
    )
    .await
    .unwrap();
    dns.set(HOST, &[ip], 30);
    (server, ca.root_pem())
}

async fn start(dns: &DnsServer, yaml: Vec<String>) -> Harness {
    let server: &'static str = Box::leak(dns.addr.to_string().into_boxed_str());
    Harness::start(Spec {
        extra_yaml: yaml,
        extra_args: vec!["--dns-server", server],
        ..Spec::default()
    })
    .await
}

/// The status and, on 200, the answering server of `GET /` at the ServiceEntry VIP.
async fn send(h: &Harness) -> (u16, Option<String>) {
    answer_of(h, format!("{SE_VIP}:80").parse().unwrap(), HOST).await
}

#[tokio::test]
async fn the_policy_hostname_is_the_sni_and_the_configmap_ca_verifies_the_server() {
    let dns = DnsServer::start().await.unwrap();
    let (server, ca) = external(&dns).await;
    let h = start(&dns, config(server.addr.port(), &ca, ORIGIN)).await;
    assert_eq!(send(&h).await, (200, Some("tls-external".into())));
    let names = server.server_names();
    assert!(!names.is_empty());
    assert!(
        names.iter().all(|n| n.as_deref() == Some(ORIGIN)),
        "{names:?}"
    );
    assert!(dns.queries() >= 1, "the host was resolved by DNS");
}

#[tokio::test]
async fn a_hostname_the_certificate_does_not_carry_fails_with_uf() {
    let dns = DnsServer::start().await.unwrap();
    let (server, ca) = external(&dns).await;
    let h = start(&dns, config(server.addr.port(), &ca, "wrong.example.test")).await;
    assert_eq!(send(&h).await, (503, None));
    // The server saw the handshake, with the policy's (wrong) hostname as SNI.
    assert!(
        server
            .server_names()
            .iter()
            .any(|n| n.as_deref() == Some("wrong.example.test")),
        "{:?}",
        server.server_names()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = h.prometheus().await;
        let labels = [("response_code", "503"), ("response_flags", "UF")];
        if metric(&samples, "istio_requests_total", &labels) >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no 503 UF counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_policy_with_an_unknown_field_is_refused_by_name() {
    let dns = DnsServer::start().await.unwrap();
    let (server, ca) = external(&dns).await;
    let mut yaml = config(server.addr.port(), &ca, ORIGIN);
    let h = start(&dns, yaml.clone()).await;
    let base = std::fs::read_to_string(&h.config).unwrap();
    let path = h.dir().join("with-typo.yaml");
    yaml[2] = yaml[2].replace("    hostname:", "    hostnmae: x\n    hostname:");
    std::fs::write(&path, format!("{base}\n---\n{}", yaml[2])).unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("BackendTLSPolicy default/api-tls")
            && stdout.contains("spec.validation.hostnmae"),
        "{stdout}"
    );
}
