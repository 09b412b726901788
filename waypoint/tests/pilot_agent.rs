//! Started the way pilot-agent starts Envoy: installed as `/usr/local/bin/envoy`, Envoy's
//! command line as pilot-agent writes it (with a `--config-yaml` override), Istio's golden
//! ambient bootstrap with the xDS and SDS sockets pointed at in-process servers and the
//! `agent` cluster at a stand-in for pilot-agent's status server. The waypoint sends the
//! bootstrap's node unchanged, answers pilot-agent's readiness and connection queries as
//! pilot-agent parses them, serves the bootstrap's static listeners, rotates its
//! certificate without dropping connections, and drains from `/drain_listeners` alone.

mod envoy_mode;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_mode::{active_connections, eventually, node_of, Rig};
use filters::model::Identity;
use hbone::tls::CertStore;
use http_body_util::BodyExt;
use testkit::client::{http1_over, HboneClient};
use testkit::istio_dump::VIP;
use testkit::process::{http_call, http_get};
use testkit::source::SourceWorkload;

fn httpbin() -> SocketAddr {
    SocketAddr::new(VIP.parse().unwrap(), 8000)
}

/// An HBONE client as the source ztunnel of `default/sleep`.
fn sleep_client(rig: &Rig) -> (HboneClient, hbone::tls::Certs) {
    let sleep = rig
        .ca
        .issue(&Identity::new("cluster.local", "default", "sleep"))
        .unwrap();
    let client = HboneClient::new(
        rig.hbone,
        Arc::new(CertStore::fixed(sleep.certs().unwrap())),
        rig.waypoint_id.clone(),
    );
    (client, sleep.certs().unwrap())
}

/// An HTTP/1.1 exchange on a tunnel: status, headers, the whole body, and the client
/// connection, still open (an app keeps its keep-alive connection).
type Exchange = (
    u16,
    http::HeaderMap,
    Vec<u8>,
    hyper::client::conn::http1::SendRequest<filters::body::Body>,
);

/// `GET path` on a new HTTP/1.1 tunnel of `conn`, opened with ztunnel's CONNECT headers;
/// at most 10 s.
async fn exchange(conn: &testkit::client::HboneConnection, path: &str) -> Result<Exchange, String> {
    tokio::time::timeout(Duration::from_secs(10), exchange_unbounded(conn, path))
        .await
        .map_err(|_| format!("{path}: no answer within 10 s"))?
}

async fn exchange_unbounded(
    conn: &testkit::client::HboneConnection,
    path: &str,
) -> Result<Exchange, String> {
    let mut source =
        SourceWorkload::deployment("127.0.0.1:40000".parse().unwrap(), "default", "sleep");
    source.canonical_revision = "v7".into();
    source.cluster_id = "cluster-east".into();
    let tunnel = conn
        .tunnel_from(httpbin(), &source)
        .await
        .map_err(|e| e.to_string())?;
    let mut http = http1_over(tunnel).await.map_err(|e| e.to_string())?;
    let req = http::Request::get(path)
        .header("host", "httpbin.default.svc.cluster.local")
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, headers, body.to_bytes().to_vec(), http))
}

/// As [`exchange`], closing the connection: status and body.
async fn get(
    conn: &testkit::client::HboneConnection,
    path: &str,
) -> Result<(u16, Vec<u8>), String> {
    exchange(conn, path).await.map(|(s, _, b, _)| (s, b))
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
async fn sends_the_bootstrap_node_answers_pilot_agent_and_serves_the_static_listeners() {
    let rig = Rig::start().await;
    // (b) pilot-agent's two readiness checks, parsed as pilot-agent parses them.
    let (updates, state) = rig.wait_ready().await;
    assert!(
        updates.cds_success >= 1 && updates.lds_success >= 1,
        "{updates:?}"
    );
    assert_eq!(
        (updates.cds_rejected, updates.lds_rejected),
        (0, 0),
        "{updates:?}"
    );
    assert_eq!((state.state, state.workers_started), (0, true));
    // With usedonly, counters never incremented are left out, as Envoy does.
    let (_, body) = http_get(rig.admin, envoy_mode::UPDATES_QUERY)
        .await
        .unwrap();
    assert!(!body.contains("update_rejected"), "{body}");
    assert!(
        body.lines().all(
            |l| l.starts_with("cluster_manager.cds.") || l.starts_with("listener_manager.lds.")
        ),
        "{body}"
    );

    // (a) The node is the bootstrap's, with the override merged, field for field.
    let mut node_json = rig.bootstrap["node"].clone();
    node_json["metadata"]["WAYPOINT_TEST_OVERRIDE"] =
        rig.config_yaml["node"]["metadata"]["WAYPOINT_TEST_OVERRIDE"].clone();
    let expected = node_of(&node_json);
    assert_eq!(expected.metadata.as_ref().unwrap().fields.len(), 11);
    let sent = rig.ads.node_messages();
    assert!(!sent.is_empty());
    for n in &sent {
        assert_eq!(n, &expected, "ADS node");
    }
    let sds = rig.sds.nodes();
    assert!(!sds.is_empty());
    for n in &sds {
        assert_eq!(n, &expected, "SDS node");
    }

    // /server_info prints the same node.
    let (_, info) = http_get(rig.admin, "/server_info").await.unwrap();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["node"]["id"], "sidecar~1.2.3.4~foo~bar");
    assert_eq!(info["node"]["metadata"]["ISTIO_VERSION"], "binary-1.0");

    // (c) 15021 answers what pilot-agent's status server answers, through the agent cluster.
    let (code, body) = http_get(rig.ready, "/healthz/ready").await.unwrap();
    assert_eq!((code, body.as_str()), (200, "agent 200 /healthz/ready"));
    rig.agent.status.store(503, Ordering::Relaxed);
    let (code, body) = http_get(rig.ready, "/healthz/ready").await.unwrap();
    assert_eq!((code, body.as_str()), (503, "agent 503 /healthz/ready"));
    assert_eq!(
        http_get(rig.ready, "/stats/prometheus").await.unwrap().0,
        404,
        "no route"
    );
    // The --config-yaml listener: an exact path to the same cluster.
    rig.agent.status.store(200, Ordering::Relaxed);
    let (code, body) = http_get(rig.extra, "/healthz/ready").await.unwrap();
    assert_eq!((code, body.as_str()), (200, "agent 200 /healthz/ready"));
    assert_eq!(
        http_get(rig.extra, "/healthz/ready/x").await.unwrap().0,
        404
    );
    let hits = rig.agent.hits.load(Ordering::Relaxed);
    assert_eq!(
        hits, 3,
        "every routed request reached the agent, the others did not"
    );
    // 15090 serves admin's /stats/prometheus through prometheus_stats.
    let (code, metrics) = http_get(rig.prom, "/stats/prometheus").await.unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("waypoint_config_version"), "{metrics}");

    // (e) downstream_cx_active counts open HBONE connections, under Envoy's stat name.
    let (client, _) = sleep_client(&rig);
    assert_eq!(active_connections(&rig).await.unwrap(), 0);
    let one = client.connect().await.unwrap();
    let two = client.connect().await.unwrap();
    assert_eq!(get(&one, "/get").await.unwrap().0, 200);
    assert_eq!(get(&two, "/get").await.unwrap().0, 200);
    eventually(Duration::from_secs(5), "2 active", || async {
        (active_connections(&rig).await.ok() == Some(2)).then_some(())
    })
    .await;
    // The telemetry read the source from ztunnel's baggage on the CONNECT.
    let (_, metrics) = http_get(rig.prom, "/stats/prometheus").await.unwrap();
    let requests = metrics
        .lines()
        .find(|l| l.starts_with("istio_requests_total{"))
        .unwrap_or_else(|| panic!("{metrics}"));
    for label in [
        "source_workload=\"sleep\"",
        "source_canonical_revision=\"v7\"",
        "source_cluster=\"cluster-east\"",
    ] {
        assert!(requests.contains(label), "{label}: {requests}");
    }
    let (_, lines) = http_get(rig.admin, "/stats?usedonly&filter=downstream_cx_active$")
        .await
        .unwrap();
    let name = format!(
        "listener.127.0.0.1_{}.downstream_cx_active: 2\n",
        rig.hbone.port()
    );
    assert_eq!(lines, name);
    drop(one);
    drop(two);
    eventually(Duration::from_secs(5), "0 active", || async {
        (active_connections(&rig).await.ok() == Some(0)).then_some(())
    })
    .await;

    // The agent unreachable: 503, as Envoy answers a connection failure.
    drop(rig.agent);
    eventually(Duration::from_secs(5), "503 without the agent", || async {
        let (code, body) = http_get(rig.ready, "/healthz/ready").await.ok()?;
        (code == 503 && body.starts_with("upstream connect error")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn rotates_certificates_over_sds_and_changes_log_levels() {
    let rig = Rig::start().await;
    rig.wait_ready().await;
    assert_eq!(
        http_get(rig.admin, "/ready").await.unwrap(),
        (200, "LIVE\n".to_string())
    );
    let (client, client_certs) = sleep_client(&rig);
    let old = client.connect().await.unwrap();
    assert_eq!(get(&old, "/get").await.unwrap().0, 200);
    let before = peer_cert_of(rig.hbone, &client_certs).await;

    // Rotation over SDS: new connections get the new certificate, the old one still works.
    let second = rig.ca.issue(&rig.waypoint_id).unwrap();
    rig.sds.rotate(
        second.chain_pem.as_bytes(),
        second.key_pem.as_bytes(),
        second.root_pem.as_bytes(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = peer_cert_of(rig.hbone, &client_certs).await;
        if now != before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was not used"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rig.sds.nacks().is_empty(), "{:?}", rig.sds.nacks());
    assert_eq!(
        get(&old, "/get").await.unwrap().0,
        200,
        "a connection from before the rotation keeps working"
    );
    assert_eq!(
        get(&client.connect().await.unwrap(), "/get")
            .await
            .unwrap()
            .0,
        200
    );

    // /logging: read and change the level at run time.
    let (code, body) = http_call(rig.admin, "POST", "/logging?level=debug")
        .await
        .unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, "active loggers:\n  waypoint: debug\n")
    );
    assert_eq!(
        http_call(rig.admin, "POST", "/logging?level=loud")
            .await
            .unwrap()
            .0,
        400
    );
    let _ = http_call(rig.admin, "POST", "/logging?level=warning").await;
}

/// pilot-agent's shutdown: `POST /drain_listeners?graceful`, then SIGKILL 5 s later.
#[tokio::test]
async fn drain_listeners_alone_finishes_in_flight_requests_before_sigkill() {
    let mut rig = Rig::start().await;
    rig.wait_ready().await;
    let (client, _) = sleep_client(&rig);
    // Slow responses in flight on two HBONE connections, four tunnels each: JSON echoes
    // delayed 2 s, and 200,000 bytes delayed 1.5 s.
    let conns = [
        client.connect().await.unwrap(),
        client.connect().await.unwrap(),
    ];
    let mut inflight = Vec::new();
    for i in 0..8 {
        let conn = conns[i % 2].clone();
        let path = if i % 2 == 0 {
            format!("/get?delay=2s&i={i}")
        } else {
            "/bytes?n=200000&delay=1500ms".to_string()
        };
        inflight.push(tokio::spawn(async move {
            (path.clone(), exchange(&conn, &path).await)
        }));
    }
    eventually(Duration::from_secs(5), "8 requests in flight", || async {
        let (_, b) = http_get(rig.admin, "/stats?filter=requests_in_flight")
            .await
            .ok()?;
        (b == "downstream.requests_in_flight: 8\n").then_some(())
    })
    .await;
    assert_eq!(active_connections(&rig).await.unwrap(), 2);

    let drained_at = Instant::now();
    let (code, _) = http_call(rig.admin, "POST", "/drain_listeners?graceful")
        .await
        .unwrap();
    assert_eq!(code, 200);
    // Readiness fails at once; Envoy's server.state is DRAINING.
    assert_eq!(
        http_get(rig.admin, "/ready").await.unwrap(),
        (503, "DRAINING\n".to_string())
    );
    let s = envoy_mode::server_state(rig.admin).await.unwrap();
    assert_eq!(s.state, 1);
    // New tunnels on a connection that got GOAWAY are refused.
    eventually(
        Duration::from_secs(2),
        "GOAWAY on the open connections",
        || async { conns[0].tunnel(httpbin(), &[]).await.is_err().then_some(()) },
    )
    .await;
    // A new connection is told to go away too: refused, or served until it closes.
    if let Ok(late) = client.connect().await {
        if let Ok((code, _)) = get(&late, "/get").await {
            assert_eq!(code, 200);
        }
    }

    // Every in-flight request gets its whole response, within pilot-agent's 5 s, and the
    // waypoint closes the keep-alive connection inside the tunnel after it.
    let mut kept_open = Vec::new();
    for task in inflight {
        let left = Duration::from_secs(5).saturating_sub(drained_at.elapsed());
        let (path, r) = tokio::time::timeout(left, task)
            .await
            .expect("response within 5 s of the drain")
            .unwrap();
        let (code, headers, body, client) = r.unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(code, 200, "{path}");
        assert_eq!(
            headers.get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..]),
            "{path}"
        );
        if path.starts_with("/bytes") {
            assert_eq!(body.len(), 200_000, "{path}: the whole body");
        } else {
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["path"], path.as_str(), "{path}");
        }
        kept_open.push(client);
    }
    assert_eq!(kept_open.len(), 8);
    // The HBONE connections close once their tunnels end (pilot-agent's
    // EXIT_ON_ZERO_ACTIVE_CONNECTIONS would now stop waiting).
    let left = Duration::from_secs(5).saturating_sub(drained_at.elapsed());
    eventually(left, "no active connection after the drain", || async {
        (active_connections(&rig).await.ok() == Some(0)).then_some(())
    })
    .await;
    assert!(
        kept_open.iter().all(|c| c.is_closed()),
        "tunnels closed by the waypoint"
    );
    // Still running (Envoy does not exit on a drain) until pilot-agent's SIGKILL.
    assert!(rig.child.0.try_wait().unwrap().is_none());
    rig.child.0.kill().unwrap();
    let status = rig.child.0.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9));
}
