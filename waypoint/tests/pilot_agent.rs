//! Started the way pilot-agent starts Envoy: Envoy's command line and Istio's golden
//! ambient bootstrap, with the xDS and SDS sockets pointed at in-process servers. The
//! waypoint gets its configuration over Delta ADS and its certificates over SDS, reaches
//! ready as pilot-agent checks it, serves, and rotates its certificate without dropping
//! connections.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use filters::model::Identity;
use http_body_util::BodyExt;
use testkit::client::HboneClient;
use testkit::free_ports;
use testkit::process::{http_call, http_get};

use hbone::tls::{CertStore, DevCa};
use testkit::{AdsServer, SdsServer};
use xds::ads::types::{CLUSTER, ENDPOINT, LISTENER};

use testkit::istio_dump::{fake_pod, resources, VIP};

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The golden bootstrap with its ports and socket paths moved into the test's reach.
fn bootstrap(dir: &std::path::Path, admin: u16, prom: u16, ready: u16) -> std::path::PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/istio/config-dumps/bootstrap-ambient-golden.json");
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("/tmp/XDS", &dir.join("XDS").display().to_string())
        .replace(
            "./var/run/secrets/workload-spiffe-uds/test.sock",
            &dir.join("sds.sock").display().to_string(),
        );
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["admin"]["address"]["socket_address"]["port_value"] = admin.into();
    for l in json["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap()
    {
        let sa = &mut l["address"]["socket_address"];
        let port = sa["port_value"].as_u64().unwrap();
        sa["address"] = "127.0.0.1".into();
        sa["port_value"] = if port == 15090 { prom } else { ready }.into();
    }
    let out = dir.join("envoy-rev.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    out
}

/// A TLS client that records the certificate the server presented.
fn peer_cert_of(
    addr: SocketAddr,
    client: &hbone::tls::Certs,
) -> impl std::future::Future<Output = Vec<u8>> {
    #[derive(Debug)]
    struct Record(Arc<Mutex<Vec<u8>>>, Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for Record {
        fn verify_server_cert(
            &self,
            end_entity: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            *self.0.lock().unwrap() = end_entity.to_vec();
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.1.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.1.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.1.signature_verification_algorithms.supported_schemes()
        }
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Record(seen.clone(), provider)))
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            client.key.clone(),
        )));
    config.alpn_protocols = vec![b"h2".to_vec()];
    async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("waypoint").unwrap();
        let _tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        let der = seen.lock().unwrap().clone();
        der
    }
}

#[tokio::test]
async fn starts_from_envoys_command_line_and_the_golden_bootstrap() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("test").unwrap();
    // The golden bootstrap's node is `sidecar~1.2.3.4~foo~bar`: the waypoint runs as foo.bar.
    let waypoint_id = Identity::new("cluster.local", "bar", "waypoint");
    let first = ca.issue(&waypoint_id).unwrap();
    let sds = SdsServer::new(
        first.chain_pem.as_bytes(),
        first.key_pem.as_bytes(),
        first.root_pem.as_bytes(),
    );
    let _sds_task = sds.serve_unix(&dir.path().join("sds.sock")).unwrap();

    let pod = fake_pod(&ca, &waypoint_id, "httpbin-1").await;
    let (ls, cs, es) = resources(pod.ip);
    let ads = AdsServer::default();
    ads.set(LISTENER, ls);
    ads.set(CLUSTER, cs);
    ads.set(ENDPOINT, es);
    let _ads_task = ads.serve_unix(&dir.path().join("XDS")).unwrap();

    let [admin, prom, ready, hbone] = free_ports::<4>();
    let config = bootstrap(dir.path(), admin, prom, ready);
    let log = std::env::var("WAYPOINT_TEST_LOG").unwrap_or_else(|_| "warning".into());
    let _child = Child(
        Command::new(env!("CARGO_BIN_EXE_waypoint"))
            .args(["-c", &config.display().to_string()])
            .args(["--drain-time-s", "5", "--parent-shutdown-time-s", "10"])
            .args([
                "--local-address-ip-version",
                "v4",
                "--file-flush-interval-msec",
                "1000",
            ])
            .args(["--disable-hot-restart", "--allow-unknown-static-fields"])
            .args([
                "-l",
                &log,
                "--component-log-level",
                "misc:error",
                "--concurrency",
                "1",
            ])
            .env("WAYPOINT_HBONE_ADDR", format!("127.0.0.1:{hbone}"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let admin = SocketAddr::from(([127, 0, 0, 1], admin));
    // pilot-agent's readiness: Envoy's server state and workers, and LDS/CDS applied.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = http_get(admin, "/stats?usedonly&filter=%5E%28server%5C.state%7Clistener_manager%5C.workers_started%7Ccluster_manager%5C.cds%5C.update_success%7Clistener_manager%5C.lds%5C.update_success%29").await;
        if let Ok((200, body)) = &r {
            if body.contains("server.state: 0\n")
                && body.contains("listener_manager.workers_started: 1\n")
                && !body.contains("update_success: 0")
                && body.contains("cds.update_success")
            {
                assert!(!body.contains("config.version"), "filtered: {body}");
                break;
            }
        }
        assert!(Instant::now() < deadline, "not ready: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        http_get(admin, "/ready").await.unwrap(),
        (200, "LIVE\n".to_string())
    );
    let (code, _) = http_get(SocketAddr::from(([127, 0, 0, 1], ready)), "/healthz/ready")
        .await
        .unwrap();
    assert_eq!(code, 200);
    let (code, metrics) = http_get(
        SocketAddr::from(([127, 0, 0, 1], prom)),
        "/stats/prometheus",
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("waypoint_config_version"), "{metrics}");
    assert!(
        ads.nodes().iter().any(|n| n == "sidecar~1.2.3.4~foo~bar"),
        "{:?}",
        ads.nodes()
    );

    // Serves over HBONE with the certificate from SDS.
    let hbone = SocketAddr::from(([127, 0, 0, 1], hbone));
    let sleep = ca
        .issue(&Identity::new("cluster.local", "default", "sleep"))
        .unwrap();
    let client_certs = sleep.certs().unwrap();
    let client = HboneClient::new(
        hbone,
        Arc::new(CertStore::fixed(sleep.certs().unwrap())),
        waypoint_id.clone(),
    );
    let old = client.connect().await.unwrap();
    let get = |conn: testkit::client::HboneConnection| async move {
        let mut http = conn
            .http1(SocketAddr::new(VIP.parse().unwrap(), 8000))
            .await
            .unwrap();
        let req = http::Request::get("/get")
            .header("host", "httpbin.default.svc.cluster.local")
            .body(filters::body::empty())
            .unwrap();
        let resp = http.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        status
    };
    assert_eq!(get(old.clone()).await, 200);
    let before = peer_cert_of(hbone, &client_certs).await;

    // Rotation over SDS: new connections get the new certificate, the old one still works.
    let second = ca.issue(&waypoint_id).unwrap();
    sds.rotate(
        second.chain_pem.as_bytes(),
        second.key_pem.as_bytes(),
        second.root_pem.as_bytes(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = peer_cert_of(hbone, &client_certs).await;
        if now != before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was not used"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sds.nacks().is_empty(), "{:?}", sds.nacks());
    assert_eq!(
        get(old).await,
        200,
        "a connection from before the rotation keeps working"
    );
    assert_eq!(get(client.connect().await.unwrap()).await, 200);

    // /logging: read and change the level at run time.
    let (code, body) = http_call(admin, "POST", "/logging?level=debug")
        .await
        .unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, "active loggers:\n  waypoint: debug\n")
    );
    assert_eq!(
        http_call(admin, "POST", "/logging?level=loud")
            .await
            .unwrap()
            .0,
        400
    );
    let _ = http_call(admin, "POST", "/logging?level=warning").await;

    // pilot-agent's shutdown starts with /drain_listeners: readiness fails, server.state is
    // DRAINING, HBONE connections get GOAWAY; the process keeps running.
    let conn = client.connect().await.unwrap();
    assert_eq!(
        http_call(admin, "POST", "/drain_listeners?inboundonly&graceful")
            .await
            .unwrap()
            .0,
        200
    );
    let (code, _) = http_get(SocketAddr::from(([127, 0, 0, 1], ready)), "/healthz/ready")
        .await
        .unwrap();
    assert_eq!(code, 503);
    let (_, stats) = http_get(admin, "/stats?filter=%5Eserver%5C.state")
        .await
        .unwrap();
    assert_eq!(stats, "server.state: 1\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let refused = conn
            .tunnel(SocketAddr::new(VIP.parse().unwrap(), 8000), &[])
            .await
            .is_err();
        if refused {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no GOAWAY after /drain_listeners"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        http_get(admin, "/ready").await.unwrap(),
        (503, "DRAINING\n".to_string()),
        "still running, draining"
    );
}
