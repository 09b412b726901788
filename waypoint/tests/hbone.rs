//! The HBONE listener: peer authentication, CONNECT authority handling, connection reuse
//! towards destinations, workload-addressed traffic.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use filters::model::Identity;
use hbone::tls::DevCa;
use http::StatusCode;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use testkit::client::{ClientError, HboneClient};

/// Whether the waypoint refused this client: the TLS handshake, the HTTP/2 handshake or
/// the first CONNECT fails.
async fn refused(client: &HboneClient) -> bool {
    match client.connect().await {
        Err(_) => true,
        Ok(conn) => conn.tunnel(authority(80), &[]).await.is_err(),
    }
}

#[derive(Debug)]
struct AcceptAnyServer;

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        hbone::tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

async fn raw_tls(addr: SocketAddr, config: rustls::ClientConfig) -> bool {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let Ok(tls) = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
    else {
        return true;
    };
    match h2::client::handshake(tls).await {
        Err(_) => true,
        Ok((send, conn)) => {
            tokio::spawn(conn);
            let req = http::Request::builder()
                .method("CONNECT")
                .uri(authority(80).to_string())
                .body(())
                .unwrap();
            match send.ready().await {
                Err(_) => true,
                Ok(mut s) => match s.send_request(req, false) {
                    Err(_) => true,
                    Ok((resp, _)) => resp.await.is_err(),
                },
            }
        }
    }
}

#[tokio::test]
async fn rejects_unauthenticated_and_foreign_peers() {
    let h = Harness::start(Spec::default()).await;
    assert!(
        !refused(&h.client()).await,
        "a valid mesh client must be accepted"
    );

    // No client certificate at all.
    let mut no_cert = rustls::ClientConfig::builder_with_provider(hbone::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_no_client_auth();
    no_cert.alpn_protocols = vec![b"h2".to_vec()];
    assert!(
        raw_tls(h.wp.hbone, no_cert).await,
        "a client without a certificate must be refused"
    );

    // A certificate from a root the waypoint does not trust.
    let foreign = DevCa::new("foreign").unwrap();
    let certs = foreign.issue(&h.client_id).unwrap();
    let mut mixed = certs.certs().unwrap();
    // Trust the waypoint's root ourselves so only the waypoint's check can fail.
    mixed.roots = h.ca.issue(&h.client_id).unwrap().certs().unwrap().roots;
    assert!(
        refused(&h.client_with(mixed)).await,
        "a foreign root must be refused"
    );

    // Our root, another trust domain.
    let other_td =
        h.ca.issue(&Identity::new("evil.local", "default", "sleep"))
            .unwrap();
    assert!(
        refused(&h.client_with(other_td.certs().unwrap())).await,
        "another trust domain must be refused"
    );

    // TLS 1.2 with a valid certificate.
    let issued = h.ca.issue(&h.client_id).unwrap();
    let tls12 = raw_client(issued, &rustls::version::TLS12);
    assert!(raw_tls(h.wp.hbone, tls12).await, "TLS 1.2 must be refused");

    // The waypoint still serves good clients afterwards.
    assert!(!refused(&h.client()).await);
}

/// A rustls client presenting `issued` over TLS `version`, trusting any server, ALPN h2.
fn raw_client(
    issued: hbone::tls::IssuedCert,
    version: &'static rustls::SupportedProtocolVersion,
) -> rustls::ClientConfig {
    let chain: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut issued.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = rustls_pemfile::private_key(&mut issued.key_pem.as_bytes())
        .unwrap()
        .unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(hbone::tls::provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_client_auth_cert(chain, key)
        .unwrap();
    c.alpn_protocols = vec![b"h2".to_vec()];
    c
}

#[tokio::test]
async fn a_certificate_with_two_uri_sans_is_refused() {
    // An X.509-SVID has exactly one URI SAN; a second one (which the first-found rule used
    // to ignore) makes the certificate no SVID at all.
    let h = Harness::start(Spec::default()).await;
    let client_config = |issued| raw_client(issued, &rustls::version::TLS13);
    let two =
        h.ca.issue_uris(&[
            &h.client_id.to_string(),
            "spiffe://cluster.local/ns/default/sa/admin",
        ])
        .unwrap();
    assert!(
        raw_tls(h.wp.hbone, client_config(two)).await,
        "two URI SANs must be refused"
    );
    // The same client with one URI SAN, over the same raw path, is served.
    let one = h.ca.issue(&h.client_id).unwrap();
    assert!(!raw_tls(h.wp.hbone, client_config(one)).await);
}

#[tokio::test]
async fn unknown_authorities_get_non_200() {
    let h = Harness::start(Spec::default()).await;
    let conn = h.client().connect().await.unwrap();
    match conn.tunnel("127.96.0.99:80".parse().unwrap(), &[]).await {
        Err(ClientError::Refused(s)) => assert_eq!(s, StatusCode::NOT_FOUND),
        other => panic!("expected 404, got {:?}", other.map(|_| ())),
    }
    match conn.tunnel(authority(81), &[]).await {
        Err(ClientError::Refused(s)) => assert_eq!(s, StatusCode::NOT_FOUND),
        other => panic!("expected 404, got {:?}", other.map(|_| ())),
    }
    // The connection keeps working for valid tunnels.
    let mut http = conn.http1(authority(80)).await.unwrap();
    assert_eq!(http.send_request(get("/")).await.unwrap().status(), 200);
}

#[tokio::test]
async fn sequential_requests_reuse_one_handshake_and_one_connect() {
    const N: usize = 25;
    let h = Harness::start(Spec::default()).await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    for i in 0..N {
        http.ready().await.unwrap();
        let resp = http.send_request(get(&format!("/n/{i}"))).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(json(resp).await["path"], format!("/n/{i}"));
    }
    assert_eq!(
        h.handshakes(),
        1,
        "TLS handshakes at the destination for {N} requests"
    );
    assert_eq!(
        h.connects(),
        1,
        "CONNECT streams at the destination for {N} requests"
    );

    // A second downstream tunnel reuses the pooled HBONE connection and HTTP connection.
    let mut again = conn.http1(authority(80)).await.unwrap();
    assert_eq!(
        again.send_request(get("/other")).await.unwrap().status(),
        200
    );
    assert_eq!(h.handshakes(), 1);
    assert_eq!(h.connects(), 1);

    // Concurrent requests open more tunnels over the same HBONE connection.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let mut http = conn.http1(authority(80)).await.unwrap();
            http.send_request(get(&format!("/c/{i}?delay=200ms")))
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        h.handshakes(),
        1,
        "concurrent tunnels share one HBONE connection"
    );
    assert!(h.connects() > 1);
}

#[tokio::test]
async fn workload_addressed_traffic_reaches_the_pod() {
    let h = Harness::start(Spec::default()).await;
    let pod_ip = h.pods[0].ip;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(SocketAddr::new(pod_ip, 8080)).await.unwrap();
    let resp = http.send_request(get("/direct")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["pod"], "echo-0");
}

#[tokio::test]
async fn service_without_endpoints_is_503() {
    let h = Harness::start(Spec {
        pods: 0,
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let resp = http.send_request(get("/")).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(body_bytes(resp).await, "no healthy upstream");
}

#[tokio::test]
async fn destination_with_the_wrong_identity_is_refused() {
    use std::collections::HashMap;
    use testkit::echo::EchoIdentity;
    use testkit::ztunnel::{FakeZtunnel, ZtunnelOptions};
    let h = Harness::start(Spec {
        pods: 0,
        ..Spec::default()
    })
    .await;
    // A pod that claims the Service's endpoint IP but presents another identity.
    let ip = testkit::free_loopback_ip(15008);
    let impostor = FakeZtunnel::start(ZtunnelOptions {
        ip,
        certs: h
            .ca
            .issue(&Identity::new("cluster.local", NS, "impostor"))
            .unwrap()
            .certs()
            .unwrap(),
        allowed_caller: None,
        who: EchoIdentity {
            pod: "impostor".into(),
            namespace: NS.into(),
        },
        apps: HashMap::new(),
    })
    .await
    .unwrap();
    let mesh = h.mesh.clone().pod(NS, "echo-x", ip, "echo", "echo", true);
    h.write_config(&mesh.render());
    let conn = h.client().connect().await.unwrap();
    let mut status = 0;
    for _ in 0..100 {
        let mut http = conn.http1(authority(80)).await.unwrap();
        status = http.send_request(get("/")).await.unwrap().status().as_u16();
        if status != 503 || h.stat("config.version").await > 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        status, 503,
        "an endpoint presenting the wrong identity must not be used"
    );
    assert_eq!(
        impostor
            .counters
            .connects
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn a_second_hbone_connection_opens_past_the_stream_limit() {
    // The destination allows 100 concurrent streams per connection; 120 concurrent
    // requests need 120 upstream tunnels.
    const N: usize = 120;
    let h = Harness::start(Spec::default()).await;
    let client = h.client();
    let conns = [
        client.connect().await.unwrap(),
        client.connect().await.unwrap(),
    ];
    let mut tasks = Vec::new();
    for i in 0..N {
        let conn = conns[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut http = conn.http1(authority(80)).await.unwrap();
            http.send_request(get(&format!("/p/{i}?delay=2s")))
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        h.connects(),
        N,
        "one upstream tunnel per concurrent request"
    );
    assert_eq!(
        h.handshakes(),
        2,
        "the pool opens exactly one more connection past 100 streams"
    );
}
