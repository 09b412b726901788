//! The waypoint without pilot-agent (`run --istiod`), against a stand-in for istiod's port
//! 15012 on loopback: the test CA (`CreateCertificate`, bearer token checked, CSR SAN
//! checked, 4 s certificates from a test root) and the test ADS server, both behind TLS
//! with a certificate for `istiod.istio-system.svc` from the same root.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::google::protobuf::value::Kind;
use filters::model::Identity;
use hbone::tls::{CertStore, DevCa};
use http_body_util::BodyExt;
use testkit::ca_server::CaServer;
use testkit::client::{HboneClient, HboneConnection};
use testkit::istio_dump::{self as fixture, fake_pod, httpbin_dump, VIP};
use testkit::istiod::{FakeIstiod, ISTIOD_SAN};
use testkit::process::{http_get, WaypointProcess};
use testkit::ztunnel::FakeZtunnel;
use testkit::AdsServer;
use xds::ads::types::{CLUSTER, ENDPOINT, LISTENER};

const TOKEN: &str = "token-for-default-waypoint";
const LIFETIME: Duration = Duration::from_secs(4);

struct Rig {
    dir: tempfile::TempDir,
    root: Arc<DevCa>,
    istiod: FakeIstiod,
    waypoint_id: Identity,
    _pod: FakeZtunnel,
}

impl Rig {
    async fn start() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let root = Arc::new(DevCa::new("mesh").unwrap());
        std::fs::write(dir.path().join("root-cert.pem"), root.root_pem()).unwrap();
        std::fs::write(
            dir.path().join("labels"),
            "app=\"waypoint\"\ngateway.networking.k8s.io/gateway-name=\"waypoint\"\n",
        )
        .unwrap();
        let waypoint_id = Identity::new("cluster.local", "default", "waypoint");
        let pod = fake_pod(&root, &waypoint_id, "httpbin-1").await;
        let (ls, cs, es, _) = fixture::resources_with(&httpbin_dump(), pod.ip, None, false);
        let ads = AdsServer::default();
        ads.set(LISTENER, ls);
        ads.set(CLUSTER, cs);
        ads.set(ENDPOINT, es);
        let ca = CaServer::new(root.clone(), TOKEN, &waypoint_id.to_string(), LIFETIME);
        let istiod = FakeIstiod::start(&root, ads, ca).await.unwrap();
        Rig {
            dir,
            root,
            istiod,
            waypoint_id,
            _pod: pod,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A waypoint started as istiod's template would start it, with `token` in its token
    /// file (none: no file).
    fn spawn(&self, token: Option<&str>) -> WaypointProcess {
        self.spawn_expecting(token, ISTIOD_SAN)
    }

    /// As [`Rig::spawn`], requiring istiod's certificate to name `san`.
    fn spawn_expecting(&self, token: Option<&str>, san: &str) -> WaypointProcess {
        let token_file = self.path("istio-token");
        if let Some(t) = token {
            std::fs::write(&token_file, format!("{t}\n")).unwrap();
        }
        let istiod = self.istiod.addr.to_string();
        let (root, labels) = (self.path("root-cert.pem"), self.path("labels"));
        let args = [
            "--istiod",
            istiod.as_str(),
            "--istiod-san",
            san,
            "--token-file",
            token_file.to_str().unwrap(),
            "--root-cert",
            root.to_str().unwrap(),
            "--pod-labels-file",
            labels.to_str().unwrap(),
            "--log-level",
            "info",
        ];
        let envs = [
            ("POD_NAME", "waypoint-5d8c7-x2x"),
            ("POD_NAMESPACE", "default"),
            ("INSTANCE_IP", "10.244.0.7"),
            ("SERVICE_ACCOUNT", "waypoint"),
            ("TRUST_DOMAIN", "cluster.local"),
            ("ISTIO_META_CLUSTER_ID", "cluster-east"),
            ("ISTIO_META_NETWORK", "network-1"),
        ];
        WaypointProcess::spawn_logged(
            Path::new(env!("CARGO_BIN_EXE_waypoint")),
            &args,
            &envs,
            &self.path("waypoint.log"),
        )
        .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("waypoint.log")).unwrap_or_default()
    }

    fn client(&self, wp: &WaypointProcess) -> HboneClient {
        let sleep = self
            .root
            .issue(&Identity::new("cluster.local", "default", "sleep"))
            .unwrap();
        HboneClient::new(
            wp.hbone,
            Arc::new(CertStore::fixed(sleep.certs().unwrap())),
            self.waypoint_id.clone(),
        )
    }

    /// The leaves the CA issued, DER, in order.
    fn issued(&self) -> Vec<Vec<u8>> {
        self.istiod
            .ca
            .requests()
            .iter()
            .filter_map(|r| r.outcome.as_ref().ok())
            .map(|pem| {
                rustls_pemfile::certs(&mut pem.as_bytes())
                    .next()
                    .unwrap()
                    .unwrap()
                    .to_vec()
            })
            .collect()
    }
}

/// `GET /get` to httpbin through a new tunnel of `conn`; at most 10 s.
async fn get(conn: &HboneConnection) -> Result<u16, String> {
    let work = async {
        let mut http = conn
            .http1(SocketAddr::new(VIP.parse().unwrap(), 8000))
            .await
            .map_err(|e| e.to_string())?;
        let req = http::Request::get("/get")
            .header("host", "httpbin.default.svc.cluster.local")
            .body(filters::body::empty())
            .unwrap();
        let resp = http.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(status)
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
}

fn string_field(meta: &envoy_types::pb::google::protobuf::Struct, key: &str) -> String {
    match meta.fields.get(key).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => s.clone(),
        other => panic!("metadata {key}: {other:?}"),
    }
}

#[tokio::test]
async fn certificate_from_the_ca_serves_hbone_and_xds_arrives_over_tls() {
    let rig = Rig::start().await;
    let mut wp = rig.spawn(Some(TOKEN));
    if let Err(e) = wp.wait_ready(Duration::from_secs(30)).await {
        panic!("{e}\n{}", rig.log());
    }

    // (a) The CSR asked for the waypoint's SPIFFE identity, with the token and cluster id.
    let first = rig.istiod.ca.requests()[0].clone();
    assert_eq!(first.sans, [rig.waypoint_id.to_string()]);
    assert_eq!(
        first.authorization.as_deref(),
        Some(&*format!("Bearer {TOKEN}"))
    );
    assert_eq!(first.cluster_id.as_deref(), Some("cluster-east"));
    assert_eq!(first.validity_duration, 24 * 3600);
    assert!(first.outcome.is_ok(), "{first:?}");

    // The waypoint serves HBONE with the certificate the CA issued.
    let conn = rig.client(&wp).connect().await.unwrap();
    let issued = rig.issued();
    assert!(
        issued.contains(&conn.peer_certificate().unwrap().to_vec()),
        "the waypoint presents a certificate the CA issued"
    );
    assert_eq!(get(&conn).await, Ok(200));

    // (c) xDS came over the same TLS, with the token and pilot-agent's node.
    assert!(
        rig.istiod
            .ads
            .authorizations()
            .iter()
            .all(|a| a.as_deref() == Some(&*format!("Bearer {TOKEN}"))),
        "{:?}",
        rig.istiod.ads.authorizations()
    );
    let node = rig.istiod.ads.node_messages()[0].clone();
    assert_eq!(
        node.id,
        "waypoint~10.244.0.7~waypoint-5d8c7-x2x.default~default.svc.cluster.local"
    );
    assert_eq!(node.cluster, "waypoint.default");
    let meta = node.metadata.unwrap();
    assert_eq!(string_field(&meta, "NAMESPACE"), "default");
    assert_eq!(string_field(&meta, "NAME"), "waypoint-5d8c7-x2x");
    assert_eq!(string_field(&meta, "SERVICE_ACCOUNT"), "waypoint");
    assert_eq!(string_field(&meta, "CLUSTER_ID"), "cluster-east");
    assert_eq!(string_field(&meta, "INSTANCE_IPS"), "10.244.0.7");
    assert_eq!(string_field(&meta, "ENABLE_HBONE"), "true");
    assert_eq!(string_field(&meta, "ISTIO_VERSION"), "1.30.0");
    assert_eq!(string_field(&meta, "NETWORK"), "network-1");
    match meta.fields["LABELS"].kind.as_ref() {
        Some(Kind::StructValue(l)) => {
            assert_eq!(
                string_field(l, "gateway.networking.k8s.io/gateway-name"),
                "waypoint"
            )
        }
        other => panic!("LABELS: {other:?}"),
    }
    match meta.fields["PROXY_CONFIG"].kind.as_ref() {
        Some(Kind::StructValue(p)) => {
            assert_eq!(
                string_field(p, "discoveryAddress"),
                rig.istiod.addr.to_string()
            )
        }
        other => panic!("PROXY_CONFIG: {other:?}"),
    }
    assert!(
        rig.istiod.ads.replies().iter().all(|r| r.error.is_none()),
        "{:?}",
        rig.istiod.ads.replies()
    );
}

#[tokio::test]
async fn certificate_rotates_before_expiry_and_old_connections_keep_working() {
    let rig = Rig::start().await;
    let mut wp = rig.spawn(Some(TOKEN));
    if let Err(e) = wp.wait_ready(Duration::from_secs(30)).await {
        panic!("{e}\n{}", rig.log());
    }
    let client = rig.client(&wp);
    let old = client.connect().await.unwrap();
    let before = old.peer_certificate().unwrap().to_vec();
    assert_eq!(get(&old).await, Ok(200));
    let started = Instant::now();

    // (b) A second CSR arrives before the first certificate expires (4 s), and new
    // connections get the new certificate (a new client each time: a resumed TLS session
    // reports the certificate of the session it resumes).
    let deadline = started + Duration::from_secs(10);
    let after = loop {
        let now = rig.client(&wp).connect().await.unwrap();
        let presented = now.peer_certificate().unwrap().to_vec();
        if presented != before {
            break presented;
        }
        assert!(Instant::now() < deadline, "not rotated\n{}", rig.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let requests = rig.istiod.ca.requests();
    assert!(requests.len() >= 2, "{requests:?}");
    assert!(requests
        .iter()
        .all(|r| r.sans == [rig.waypoint_id.to_string()]));
    let issued = rig.issued();
    // Both are the CA's, the new one issued later (on a loaded machine a renewal may come
    // before the first connection, so `before` need not be the very first).
    let position = |cert: &Vec<u8>| issued.iter().position(|c| c == cert);
    let (old_at, new_at) = (position(&before), position(&after));
    assert!(
        matches!((old_at, new_at), (Some(o), Some(n)) if n > o),
        "{old_at:?} {new_at:?}"
    );
    assert!(rig.log().contains("certificate rotated"), "{}", rig.log());

    // The connection from before the rotation keeps working, also once the certificate it
    // was set up with has expired (4 s lifetime, plus the CA's second of backdating).
    assert_eq!(get(&old).await, Ok(200));
    tokio::time::sleep(
        (started + LIFETIME + Duration::from_secs(1)).saturating_duration_since(Instant::now()),
    )
    .await;
    assert_eq!(get(&old).await, Ok(200));
    assert!(
        rig.istiod.ca.requests().len() >= 3,
        "renewed again within the second lifetime"
    );
}

#[tokio::test]
async fn a_refused_or_missing_token_keeps_the_waypoint_unready_and_says_why() {
    let rig = Rig::start().await;

    // (d) A wrong token: the CA refuses, the waypoint never becomes ready.
    let wp = rig.spawn(Some("stolen-token"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !rig.log().contains("refused the certificate request") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged\n{}",
            rig.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = rig.log();
    assert!(log.contains("Unauthenticated"), "{log}");
    assert!(log.contains("bearer token is not valid"), "{log}");
    let requests = rig.istiod.ca.requests();
    assert!(!requests.is_empty());
    assert!(requests.iter().all(|r| r.outcome.is_err()), "{requests:?}");
    // Still not ready a second later (the retry is refused too), and no xDS stream opened.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!matches!(
        http_get(wp.ready, "/healthz/ready").await,
        Ok((200, _))
    ));
    assert!(rig.istiod.ads.node_messages().is_empty());
    drop(wp);
    let refused = rig.istiod.ca.requests().len();

    // No token file at all: the log names the file, and no CSR is sent.
    let missing = rig.path("istio-token");
    std::fs::remove_file(&missing).unwrap();
    let wp = rig.spawn(None);
    let expected = format!(
        "cannot read the service account token {}",
        missing.display()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !rig.log().contains(&expected) {
        assert!(
            Instant::now() < deadline,
            "no missing-token error\n{}",
            rig.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!matches!(
        http_get(wp.ready, "/healthz/ready").await,
        Ok((200, _))
    ));
    assert_eq!(rig.istiod.ca.requests().len(), refused);
    drop(wp);

    // istiod presenting a certificate for another name: unreachable, and the log says why.
    std::fs::write(&missing, TOKEN).unwrap();
    let wp = rig.spawn_expecting(Some(TOKEN), "istiod.elsewhere.svc");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !rig.log().contains("is unreachable") {
        assert!(Instant::now() < deadline, "no TLS error\n{}", rig.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = rig.log();
    assert!(log.contains("(expecting istiod.elsewhere.svc)"), "{log}");
    assert!(
        log.contains("certificate not valid for name \"istiod.elsewhere.svc\""),
        "{log}"
    );
    assert!(!matches!(
        http_get(wp.ready, "/healthz/ready").await,
        Ok((200, _))
    ));
    assert_eq!(rig.istiod.ca.requests().len(), refused);
}
