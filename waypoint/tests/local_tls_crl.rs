//! Certificate revocation lists for DestinationRule `tls` in the local configuration, on an
//! egress ServiceEntry whose external HTTPS server the waypoint originates TLS to: a
//! `credentialName` Secret's `ca.crl` next to `ca.crt` (read as istiod's `ExtractRoot`
//! reads it, pilot/pkg/credentials/kube/secrets.go), and the rule's `caCrl` file next to
//! `caCertificates` (as istiod's `constructUpstreamTLS` writes it,
//! pilot/pkg/networking/core/cluster_tls.go). A server certificate the CRL lists fails
//! the handshake: 503 `UF`.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use hbone::tls::{DevCa, IssuedCert};
use testkit::dns_server::DnsServer;
use testkit::echo::EchoIdentity;
use testkit::tls_echo::TlsEcho;

const SE_VIP: &str = "127.97.0.19";
const HOST: &str = "api.example.test";
/// The name the external server's certificate is for, and the SNI the rule sends.
const ORIGIN: &str = "origin.example.test";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn entry(port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: api\n  namespace: {NS}\n  labels: {{istio.io/use-waypoint: waypoint}}\nspec:\n  hosts: [{HOST}]\n  addresses: [{SE_VIP}]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports:\n  - {{number: 80, name: http, protocol: HTTP, targetPort: {port}}}\n"
    )
}

/// The rule with SIMPLE TLS and `tls` (the fields after `mode`).
fn rule(tls: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: {NS}}}\nspec:\n  host: {HOST}\n  trafficPolicy:\n    tls:\n      mode: SIMPLE\n      sni: {ORIGIN}\n{tls}"
    )
}

/// The Secret `api-creds` (`kubernetes.io/tls`, base64 `data`): `ca.crt` and `ca.crl`.
fn secret(ca_pem: &str, crl_pem: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: api-creds, namespace: {NS}}}\ntype: kubernetes.io/tls\ndata:\n  ca.crt: {}\n  ca.crl: {}\n",
        b64(ca_pem),
        b64(crl_pem)
    )
}

/// The external server's CA, the certificate the server presents and another one the CA
/// issued, and the server on a fresh loopback address the DNS server gives for [`HOST`].
async fn external(dns: &DnsServer) -> (TlsEcho, DevCa, IssuedCert, IssuedCert) {
    let ca = DevCa::new("internet-ca").unwrap();
    let id = filters::model::Identity::new("cluster.local", "internet", "api");
    let served = ca.issue_with_dns(&id, ORIGIN).unwrap();
    let other = ca.issue_with_dns(&id, ORIGIN).unwrap();
    let IpAddr::V4(ip) = testkit::free_loopback_ip(8443) else {
        panic!("IPv4 loopback expected")
    };
    let addr = SocketAddr::new(ip.into(), 8443);
    let who = EchoIdentity {
        pod: "tls-external".into(),
        namespace: "internet".into(),
    };
    let server = TlsEcho::start_simple(addr, &served.certs().unwrap(), who)
        .await
        .unwrap();
    dns.set(HOST, &[ip], 30);
    (server, ca, served, other)
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

/// Sends until the answer's status is `status` (ten seconds at most).
async fn until_status(h: &Harness, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (got, _) = send(h).await;
        if got == status {
            return;
        }
        assert!(Instant::now() < deadline, "still {got} instead of {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until at least `n` requests are counted as 503 `UF`.
async fn until_uf_counted(h: &Harness, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = h.prometheus().await;
        let labels = [("response_code", "503"), ("response_flags", "UF")];
        if metric(&samples, "istio_requests_total", &labels) >= n {
            return;
        }
        assert!(Instant::now() < deadline, "no 503 UF counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Replaces `old` by `new` in the configuration file.
fn rewrite(h: &Harness, old: &str, new: &str) {
    let text = std::fs::read_to_string(&h.config).unwrap();
    assert!(text.contains(old));
    h.write_config(&text.replace(old, new));
}

#[tokio::test]
async fn a_secrets_ca_crl_revoking_the_server_certificate_fails_with_uf() {
    let dns = DnsServer::start().await.unwrap();
    let (server, ca, served, other) = external(&dns).await;
    let revoking = secret(
        &ca.root_pem(),
        &ca.revocation_list(&[&other, &served]).unwrap(),
    );
    let yaml = vec![
        entry(server.addr.port()),
        rule("      credentialName: api-creds\n"),
        revoking.clone(),
    ];
    let h = start(&dns, yaml).await;
    assert_eq!(send(&h).await, (503, None));
    until_uf_counted(&h, 1.0).await;
    assert!(
        !server.server_names().is_empty(),
        "the handshake reached the server and failed on its certificate"
    );
    // The Secret rewritten with a CRL that lists only the other certificate: 200.
    let unrelated = secret(&ca.root_pem(), &ca.revocation_list(&[&other]).unwrap());
    rewrite(&h, &revoking, &unrelated);
    until_status(&h, 200).await;
    assert_eq!(send(&h).await, (200, Some("tls-external".into())));
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn the_rules_ca_crl_file_is_checked_with_the_chain() {
    let dns = DnsServer::start().await.unwrap();
    let (server, ca, served, other) = external(&dns).await;
    let dir = tempfile::tempdir().unwrap();
    let root = write(dir.path(), "ca.pem", &ca.root_pem());
    let revoking = write(
        dir.path(),
        "revoking.crl",
        &ca.revocation_list(&[&served]).unwrap(),
    );
    let unrelated = write(
        dir.path(),
        "unrelated.crl",
        &ca.revocation_list(&[&other]).unwrap(),
    );
    let tls = |crl: &str| {
        rule(&format!(
            "      caCertificates: {root}\n      caCrl: {crl}\n"
        ))
    };
    let h = start(&dns, vec![entry(server.addr.port()), tls(&revoking)]).await;
    assert_eq!(send(&h).await, (503, None));
    until_uf_counted(&h, 1.0).await;
    // The rule names the other CRL: the server's certificate is good.
    rewrite(&h, &tls(&revoking), &tls(&unrelated));
    until_status(&h, 200).await;
    assert_eq!(send(&h).await, (200, Some("tls-external".into())));
}
