//! DestinationRule `tls.credentialName` in the local configuration, on an egress
//! ServiceEntry: the waypoint originates TLS to an external HTTPS server with the CA
//! bundle and (MUTUAL) the client certificate of a Secret in the rule's namespace, read
//! from the keys istiod reads (`ExtractCertInfo`, `ExtractRoot`,
//! pilot/pkg/credentials/kube/secrets.go), the CA from `<name>-cacert` first (`GetCaCert`).
//! A rewritten Secret is used for new connections; a missing one refuses the configuration
//! and the last good one keeps serving.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use hbone::tls::{DevCa, IssuedCert};
use testkit::dns_server::DnsServer;
use testkit::echo::EchoIdentity;
use testkit::tls_echo::TlsEcho;

const SE_VIP: &str = "127.97.0.9";
const HOST: &str = "api.example.test";
/// The name the external server's certificate is for, and the SNI the rule sends.
const ORIGIN: &str = "origin.example.test";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The entry and the rule (`mode`, `credentialName: api-creds`, `sni`).
fn entry_and_rule(port: u16, mode: &str) -> Vec<String> {
    let entry = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: api\n  namespace: {NS}\n  labels: {{istio.io/use-waypoint: waypoint}}\nspec:\n  hosts: [{HOST}]\n  addresses: [{SE_VIP}]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports:\n  - {{number: 80, name: http, protocol: HTTP, targetPort: {port}}}\n"
    );
    let rule = format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: {NS}}}\nspec:\n  host: {HOST}\n  trafficPolicy:\n    tls:\n      mode: {mode}\n      credentialName: api-creds\n      sni: {ORIGIN}\n"
    );
    vec![entry, rule]
}

/// The Secret `api-creds` (`kubernetes.io/tls`, base64 `data`): `ca.crt`, and for MUTUAL
/// `tls.crt` and `tls.key`.
fn secret(ca_pem: &str, client: Option<&IssuedCert>) -> String {
    let pair = client
        .map(|c| {
            format!(
                "  tls.crt: {}\n  tls.key: {}\n",
                b64(&c.chain_pem),
                b64(&c.key_pem)
            )
        })
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: api-creds, namespace: {NS}}}\ntype: kubernetes.io/tls\ndata:\n  ca.crt: {}\n{pair}",
        b64(ca_pem)
    )
}

/// The external server's CA, and the server on a fresh loopback address that the DNS
/// server gives for [`HOST`]; `mutual`: it requires a client certificate from that CA.
async fn external(dns: &DnsServer, mutual: bool) -> (TlsEcho, DevCa) {
    let ca = DevCa::new("internet-ca").unwrap();
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
    let addr = SocketAddr::new(ip.into(), 8443);
    let who = EchoIdentity {
        pod: "tls-external".into(),
        namespace: "internet".into(),
    };
    let server = if mutual {
        TlsEcho::start_mutual(addr, &certs, who).await.unwrap()
    } else {
        TlsEcho::start_simple(addr, &certs, who).await.unwrap()
    };
    dns.set(HOST, &[ip], 30);
    (server, ca)
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

/// The configuration file with the Secret replaced by `secret` (or removed).
fn with_secret(h: &Harness, old: &str, new: &str) -> String {
    let text = std::fs::read_to_string(&h.config).unwrap();
    assert!(text.contains(old));
    text.replace(old, new)
}

fn leaf_der(cert: &IssuedCert) -> Vec<u8> {
    rustls_pemfile::certs(&mut cert.chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn simple_verifies_the_server_with_the_secrets_ca_and_a_missing_secret_is_refused() {
    let dns = DnsServer::start().await.unwrap();
    let (server, ca) = external(&dns, false).await;
    // First the Secret holds another CA: the server is not verified, 503 UF.
    let wrong = secret(&DevCa::new("other-ca").unwrap().root_pem(), None);
    let mut yaml = entry_and_rule(server.addr.port(), "SIMPLE");
    yaml.push(wrong.clone());
    let h = start(&dns, yaml).await;
    assert_eq!(send(&h).await, (503, None));
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
    assert!(
        server
            .server_names()
            .iter()
            .any(|n| n.as_deref() == Some(ORIGIN)),
        "the server saw the handshake with the rule's SNI"
    );
    // The Secret updated with the server's CA: verified, 200.
    let right = secret(&ca.root_pem(), None);
    h.write_config(&with_secret(&h, &wrong, &right));
    until_status(&h, 200).await;
    assert_eq!(send(&h).await, (200, Some("tls-external".into())));
    assert!(server.client_certificates().iter().all(Option::is_none));
    // The Secret deleted: the configuration is refused, naming the rule and the Secret,
    // and the last good one keeps serving.
    h.write_config(&with_secret(&h, &right, ""));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = h.admin("/config_history").await;
        assert_eq!(code, 200);
        if body.contains("spec.trafficPolicy.tls.credentialName")
            && body.contains("no Secret default/api-creds")
        {
            break;
        }
        assert!(Instant::now() < deadline, "not refused:\n{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(send(&h).await, (200, Some("tls-external".into())));
}

#[tokio::test]
async fn mutual_presents_the_secrets_certificate_and_a_rewritten_one_on_new_connections() {
    let dns = DnsServer::start().await.unwrap();
    let (server, ca) = external(&dns, true).await;
    let first = ca
        .issue(&filters::model::Identity::new(
            "cluster.local",
            "default",
            "client-1",
        ))
        .unwrap();
    let before = secret(&ca.root_pem(), Some(&first));
    let mut yaml = entry_and_rule(server.addr.port(), "MUTUAL");
    yaml.push(before.clone());
    let h = start(&dns, yaml).await;
    assert_eq!(send(&h).await, (200, Some("tls-external".into())));
    assert_eq!(
        server.client_certificates().last().cloned().flatten(),
        Some(leaf_der(&first)),
        "the server required and saw the Secret's certificate"
    );
    // The Secret rotated: new connections present the new certificate.
    let second = ca
        .issue(&filters::model::Identity::new(
            "cluster.local",
            "default",
            "client-2",
        ))
        .unwrap();
    let seen_before = server.client_certificates().len();
    h.write_config(&with_secret(
        &h,
        &before,
        &secret(&ca.root_pem(), Some(&second)),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(send(&h).await.0, 200);
        let seen = server.client_certificates();
        if seen[seen_before..]
            .iter()
            .any(|c| c.as_deref() == Some(&leaf_der(&second)[..]))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated certificate never went out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
