//! The waypoint driven over Delta ADS by an in-process xDS server serving resources taken
//! from Istio's httpbin waypoint config dump (addresses moved onto loopback).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use filters::model::Identity;
use hbone::tls::{CertStore, DevCa};
use http_body_util::BodyExt;
use testkit::client::HboneClient;
use testkit::process::{CertFiles, WaypointProcess};
use testkit::ztunnel::FakeZtunnel;
use testkit::AdsServer;
use xds::ads::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

use testkit::istio_dump::{self as xds_fixture, any, fake_pod, httpbin_dump, Named, VIP};

struct World {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    server: AdsServer,
    serving: tokio::task::JoinHandle<()>,
    wp: WaypointProcess,
    client: HboneClient,
    other: HboneClient,
    _pod: FakeZtunnel,
    _canary: FakeZtunnel,
    clusters: Named,
}

async fn start() -> World {
    start_with(false).await
}

/// A waypoint driven by the test ADS server; with `rds`, port 8100's routes are served over
/// RDS instead of inline.
async fn start_with(rds: bool) -> World {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("test").unwrap();
    let waypoint_id = Identity::new("cluster.local", "default", "waypoint");
    ca.issue(&waypoint_id).unwrap().write(dir.path()).unwrap();
    let pod = fake_pod(&ca, &waypoint_id, "httpbin-1").await;
    let canary = fake_pod(&ca, &waypoint_id, "httpbin-v2-1").await;
    let (ls, cs, es, rs) =
        xds_fixture::resources_with(&httpbin_dump(), pod.ip, Some(canary.ip), rds);
    let server = AdsServer::default();
    server.set(LISTENER, ls);
    server.set(CLUSTER, cs.clone());
    server.set(ENDPOINT, es);
    if rds {
        server.set(ROUTE, rs);
    }
    let socket = dir.path().join("xds.sock");
    let serving = server.serve_unix(&socket).unwrap();
    let address = format!("unix:{}", socket.display());
    let log = std::env::var("WAYPOINT_TEST_LOG").unwrap_or_else(|_| "warn".into());
    let mut wp = WaypointProcess::spawn_source(
        &std::path::PathBuf::from(env!("CARGO_BIN_EXE_waypoint")),
        &CertFiles::in_dir(dir.path()),
        &[
            "--xds-address",
            &address,
            "--gateway",
            "default/waypoint",
            "--log-level",
            &log,
        ],
        None,
    )
    .unwrap();
    wp.wait_ready(Duration::from_secs(30)).await.unwrap();
    let client_as = |ns: &str, sa: &str| {
        HboneClient::new(
            wp.hbone,
            Arc::new(CertStore::fixed(
                ca.issue(&Identity::new("cluster.local", ns, sa))
                    .unwrap()
                    .certs()
                    .unwrap(),
            )),
            waypoint_id.clone(),
        )
    };
    let client = client_as("default", "sleep");
    let other = client_as("other", "intruder");
    World {
        other,
        _dir: dir,
        socket,
        server,
        serving,
        wp,
        client,
        _pod: pod,
        _canary: canary,
        clusters: cs,
    }
}

async fn get(w: &World, port: u16) -> (u16, serde_json::Value) {
    get_as(&w.client, port, "/get").await
}

async fn get_as(client: &HboneClient, port: u16, path: &str) -> (u16, serde_json::Value) {
    let conn = client.connect().await.unwrap();
    let mut http = conn
        .http1(SocketAddr::new(VIP.parse().unwrap(), port))
        .await
        .unwrap();
    let req = http::Request::get(path)
        .header("host", "httpbin.default.svc.cluster.local")
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn routes_from_istiod_resources_reach_the_pod() {
    let w = start().await;
    for port in [8000, 8100] {
        let (status, body) = get(&w, port).await;
        assert_eq!(status, 200, "port {port}: {body}");
        assert_eq!(body["pod"], "httpbin-1", "{body}");
    }
    // Everything sent was accepted.
    let replies = w.server.replies();
    assert!(replies.iter().all(|r| r.error.is_none()), "{replies:?}");
    assert!(
        replies.iter().any(|r| r.type_url == ENDPOINT),
        "endpoints were subscribed: {replies:?}"
    );
    assert!(
        w.server.nodes()[0].starts_with("waypoint~"),
        "{:?}",
        w.server.nodes()
    );
    let (_, dump) = testkit::process::http_get(w.wp.admin, "/config_dump?format=waypoint")
        .await
        .unwrap();
    assert!(dump.contains("xds:unix:"), "{dump}");
    // Envoy's admin format: what istioctl proxy-config reads.
    let (_, dump) = testkit::process::http_get(w.wp.admin, "/config_dump")
        .await
        .unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let configs = dump["configs"].as_array().unwrap();
    let listeners = &configs[0];
    assert_eq!(
        listeners["@type"],
        "type.googleapis.com/envoy.admin.v3.ListenersConfigDump"
    );
    assert!(listeners["dynamic_listeners"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["name"] == "main_internal"
            && l["active_state"]["listener"]["filter_chains"].is_array()));
    assert_eq!(
        configs[1]["dynamic_active_clusters"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        configs[2]["dynamic_endpoint_configs"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let secrets = configs[4]["dynamic_active_secrets"].as_array().unwrap();
    let key = &secrets[0]["secret"]["tls_certificate"]["private_key"]["inline_bytes"];
    assert_eq!(key, "W3JlZGFjdGVkXQ==", "the key is redacted");
}

#[tokio::test]
async fn a_broken_resource_is_nacked_and_the_old_configuration_keeps_serving() {
    let w = start().await;
    assert_eq!(get(&w, 8000).await.0, 200);
    let mut broken = Cluster {
        name: "inbound-vip|9999|http|broken.default.svc.cluster.local".into(),
        ..Default::default()
    };
    broken.cluster_discovery_type =
        Some(envoy_types::pb::envoy::config::cluster::v3::cluster::ClusterDiscoveryType::Type(0));
    let mut clusters = w.clusters.clone();
    clusters.push((broken.name.clone(), any(CLUSTER, &broken)));
    w.server.set(CLUSTER, clusters);
    let deadline = Instant::now() + Duration::from_secs(10);
    let nack = loop {
        if let Some(r) = w.server.replies().into_iter().find(|r| r.error.is_some()) {
            break r;
        }
        assert!(Instant::now() < deadline, "no NACK");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = nack.error.unwrap();
    assert_eq!(nack.type_url, CLUSTER);
    // A STATIC cluster without endpoints: refused, naming the resource and the field.
    assert!(
        error.contains(
            "cluster inbound-vip|9999|http|broken.default.svc.cluster.local: load_assignment: required for a cluster that is not EDS"
        ),
        "{error}"
    );
    // The valid clusters of that update were applied; the old configuration serves.
    assert_eq!(get(&w, 8000).await.0, 200);
    assert_eq!(get(&w, 8100).await.0, 200);
}

#[tokio::test]
async fn the_xds_server_restarting_loses_no_request() {
    let mut w = start().await;
    let load = {
        let client = w.client.clone();
        tokio::spawn(async move {
            let conn = client.connect().await.unwrap();
            let mut http = conn
                .http1(SocketAddr::new(VIP.parse().unwrap(), 8000))
                .await
                .unwrap();
            let (mut ok, mut failed) = (0, 0);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) && ok + failed < 3000 {
                let req = http::Request::get("/get")
                    .header("host", "httpbin.default.svc.cluster.local")
                    .body(filters::body::empty())
                    .unwrap();
                match http.send_request(req).await {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.into_body().collect().await;
                        ok += 1;
                    }
                    _ => failed += 1,
                }
                if http.ready().await.is_err() {
                    failed += 1;
                    break;
                }
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.serving.abort();
    w.server.disconnect_all();
    tokio::time::sleep(Duration::from_millis(800)).await;
    w.serving = w.server.serve_unix(&w.socket).unwrap();
    let (ok, failed) = load.await.unwrap();
    assert_eq!(failed, 0, "{ok} ok, {failed} failed");
    assert!(ok > 10, "{ok}");
    // The waypoint reconnected: a second stream announced the node.
    let deadline = Instant::now() + Duration::from_secs(20);
    while w.server.nodes().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "no reconnect: {:?}",
            w.server.nodes()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&w, 8000).await.0, 200);
}

#[tokio::test]
async fn rbac_filters_from_istiod_are_enforced() {
    let w = start().await;
    assert_eq!(get_as(&w.client, 8000, "/get").await.0, 200);
    // DENY /admin*, whoever asks.
    assert_eq!(get_as(&w.client, 8000, "/admin/x").await.0, 403);
    // ALLOW only sleep: another identity is denied.
    assert_eq!(get_as(&w.other, 8000, "/get").await.0, 403);
    // Port 8100 has no RBAC filter.
    assert_eq!(get_as(&w.other, 8100, "/get").await.0, 200);
    let (_, stats) = testkit::process::http_get(w.wp.admin, "/stats")
        .await
        .unwrap();
    assert!(stats.contains("authz.denied: 2"), "{stats}");
}

#[tokio::test]
async fn redirects_and_rewrites_from_istiod_routes() {
    let w = start().await;
    let conn = w.client.connect().await.unwrap();
    let mut http = conn
        .http1(SocketAddr::new(VIP.parse().unwrap(), 8100))
        .await
        .unwrap();
    let req = http::Request::get("/old/page")
        .header("host", "httpbin.default.svc.cluster.local:8100")
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 301);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.ends_with("/new"), "{location}");
    let _ = resp.into_body().collect().await;
    let (status, body) = get_as(&w.client, 8100, "/v1/items").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["path"], "/v2/items", "{body}");
    assert_eq!(body["host"], "rewritten.example", "{body}");
    // The default route still serves everything else.
    assert_eq!(get_as(&w.client, 8100, "/get").await.0, 200);
}

#[tokio::test]
async fn weighted_clusters_split_traffic() {
    let w = start().await;
    let conn = w.client.connect().await.unwrap();
    let mut http = conn
        .http1(SocketAddr::new(VIP.parse().unwrap(), 8000))
        .await
        .unwrap();
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..400 {
        let req = http::Request::get("/split")
            .header("host", "httpbin.default.svc.cluster.local")
            .body(filters::body::empty())
            .unwrap();
        let resp = http.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        *counts
            .entry(body["pod"].as_str().unwrap().to_string())
            .or_default() += 1;
        http.ready().await.unwrap();
    }
    let v1 = counts.get("httpbin-1").copied().unwrap_or(0);
    let v2 = counts.get("httpbin-v2-1").copied().unwrap_or(0);
    assert_eq!(v1 + v2, 400, "{counts:?}");
    // 3:1 expected (300/100); binomial sd is about 8.7, so 60..140 is beyond 4 sd.
    assert!((60..=140).contains(&v2), "{counts:?}");
}

#[tokio::test]
async fn request_authentication_from_istiod_checks_tokens() {
    let w = start().await;
    let token = xds_fixture::issuer().token(serde_json::json!({
        "iss": "https://issuer.example",
        "sub": "alice",
        "exp": testkit::jwt::now() + 600,
    }));
    let forged =
        testkit::jwt::JwtIssuer::new("https://issuer.example", "key-1").token(serde_json::json!({
            "iss": "https://issuer.example",
            "sub": "mallory",
            "exp": testkit::jwt::now() + 600,
        }));
    let send = |bearer: Option<String>| {
        let client = w.client.clone();
        async move {
            let conn = client.connect().await.unwrap();
            let mut http = conn
                .http1(SocketAddr::new(VIP.parse().unwrap(), 8100))
                .await
                .unwrap();
            let mut req =
                http::Request::get("/get").header("host", "httpbin.default.svc.cluster.local");
            if let Some(t) = bearer {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let resp = http
                .send_request(req.body(filters::body::empty()).unwrap())
                .await
                .unwrap();
            resp.status().as_u16()
        }
    };
    assert_eq!(send(Some(token)).await, 200, "a valid token passes");
    assert_eq!(send(None).await, 200, "no token passes to authorization");
    assert_eq!(
        send(Some(forged)).await,
        401,
        "a token signed by another key is rejected"
    );
    assert_eq!(send(Some("not.a.jwt".into())).await, 401);
}

#[tokio::test]
async fn routes_referenced_over_rds_are_fetched_and_applied() {
    let w = start_with(true).await;
    // The rewrite route exists only in the RDS configuration.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get_as(&w.client, 8100, "/v1/items").await;
        if status == 200 && body["path"] == "/v2/items" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RDS routes not applied: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(w
        .server
        .replies()
        .iter()
        .any(|r| r.type_url == ROUTE && r.error.is_none()));
    let (_, dump) = testkit::process::http_get(w.wp.admin, "/config_dump")
        .await
        .unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["configs"][3]["dynamic_route_configs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
