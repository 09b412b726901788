//! The waypoint driven over Delta ADS by an in-process xDS server serving resources taken
//! from Istio's httpbin waypoint config dump (addresses moved onto loopback).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::google::protobuf::Any;
use filters::model::Identity;
use http_body_util::BodyExt;
use prost::Message;
use waypoint::testing::client::HboneClient;
use waypoint::testing::echo::EchoIdentity;
use waypoint::testing::process::{CertFiles, WaypointProcess};
use waypoint::testing::ztunnel::{FakeZtunnel, ZtunnelOptions};
use waypoint::tls::{CertStore, DevCa};
use xds::ads::types::{CLUSTER, ENDPOINT, LISTENER};
use xds::envoy::from_json;
use xds::testing::AdsServer;

/// Resources by name.
type Named = Vec<(String, Any)>;

const VIP: &str = "127.96.0.10";
const DUMP_VIP: &str = "10.104.171.68";
const DUMP_POD: &str = "192.168.195.248";

fn any<M: Message>(type_url: &str, m: &M) -> Any {
    Any {
        type_url: type_url.to_string(),
        value: m.encode_to_vec(),
    }
}

/// The dump's resources with the VIP and the pod moved to loopback, and a cluster and
/// endpoints for both Service ports (the dump has the cluster of one and the endpoints of
/// the other).
fn resources(pod: std::net::IpAddr) -> (Named, Named, Named) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/istio/config-dumps/waypoint-httpbin-1.21.json");
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace(&format!("{DUMP_POD}:800"), &format!("{pod}:8080"))
        .replace(DUMP_POD, &pod.to_string())
        .replace(DUMP_VIP, VIP);
    let dump: serde_json::Value = serde_json::from_str(&text).unwrap();
    let (mut ls, mut cs, mut es) = (vec![], vec![], vec![]);
    for cfg in dump["configs"].as_array().unwrap() {
        let t = cfg["@type"].as_str().unwrap();
        if t.ends_with("ListenersConfigDump") {
            for l in cfg["dynamic_listeners"].as_array().unwrap() {
                let mut json = l["active_state"]["listener"].clone();
                add_rbac(&mut json);
                let l: Listener = from_json("envoy.config.listener.v3.Listener", &json).unwrap();
                ls.push((l.name.clone(), any(LISTENER, &l)));
            }
        } else if t.ends_with("ClustersConfigDump") {
            let c = &cfg["dynamic_active_clusters"][0]["cluster"];
            for port in ["8000", "8100"] {
                let json: serde_json::Value =
                    serde_json::from_str(&c.to_string().replace("|8000|", &format!("|{port}|")))
                        .unwrap();
                let c: Cluster = from_json("envoy.config.cluster.v3.Cluster", &json).unwrap();
                cs.push((c.name.clone(), any(CLUSTER, &c)));
            }
        } else if t.ends_with("EndpointsConfigDump") {
            let e = &cfg["dynamic_endpoint_configs"][0]["endpoint_config"];
            for port in ["8000", "8100"] {
                let json: serde_json::Value =
                    serde_json::from_str(&e.to_string().replace("|8100|", &format!("|{port}|")))
                        .unwrap();
                let e: ClusterLoadAssignment =
                    from_json("envoy.config.endpoint.v3.ClusterLoadAssignment", &json).unwrap();
                es.push((e.cluster_name.clone(), any(ENDPOINT, &e)));
            }
        }
    }
    (ls, cs, es)
}

/// The RBAC filters istiod would generate for two policies on httpbin port 8000: DENY
/// `/admin*` for everyone, and ALLOW only the `sleep` service account (matched on the
/// filter state Istio's waypoint sets from the HBONE peer).
fn add_rbac(listener: &mut serde_json::Value) {
    let deny = serde_json::json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "DENY", "policies": {"ns[default]-policy[deny-admin]-rule[0]": {
                "permissions": [{"url_path": {"path": {"prefix": "/admin"}}}],
                "principals": [{"any": true}]
            }}}
        }
    });
    let allow = serde_json::json!({
        "name": "envoy.filters.http.rbac",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"policies": {"ns[default]-policy[allow-sleep]-rule[0]": {
                "permissions": [{"any": true}],
                "principals": [{"filter_state": {"key": "io.istio.peer_principal", "string_match": {"exact": "spiffe://cluster.local/ns/default/sa/sleep"}}}]
            }}}
        }
    });
    for chain in listener["filter_chains"].as_array_mut().unwrap() {
        if chain["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("inbound-vip|8000|"))
        {
            let filters = chain["filters"][0]["typed_config"]["http_filters"]
                .as_array_mut()
                .unwrap();
            filters.insert(0, allow.clone());
            filters.insert(0, deny.clone());
        }
    }
}

struct World {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    server: AdsServer,
    serving: tokio::task::JoinHandle<()>,
    wp: WaypointProcess,
    client: HboneClient,
    other: HboneClient,
    _pod: FakeZtunnel,
    clusters: Named,
}

async fn start() -> World {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("test").unwrap();
    let waypoint_id = Identity::new("cluster.local", "default", "waypoint");
    ca.issue(&waypoint_id).unwrap().write(dir.path()).unwrap();
    let pod_certs = ca
        .issue(&Identity::new("cluster.local", "default", "httpbin"))
        .unwrap();
    let pod = FakeZtunnel::start_fresh(|ip| ZtunnelOptions {
        ip,
        certs: pod_certs.certs().unwrap(),
        allowed_caller: Some(waypoint_id.clone()),
        who: EchoIdentity {
            pod: "httpbin-1".into(),
            namespace: "default".into(),
        },
        apps: HashMap::new(),
    })
    .await
    .unwrap();
    let (ls, cs, es) = resources(pod.ip);
    let server = AdsServer::default();
    server.set(LISTENER, ls);
    server.set(CLUSTER, cs.clone());
    server.set(ENDPOINT, es);
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
    let client = HboneClient::new(
        wp.hbone,
        Arc::new(CertStore::fixed(
            ca.issue(&Identity::new("cluster.local", "default", "sleep"))
                .unwrap()
                .certs()
                .unwrap(),
        )),
        waypoint_id.clone(),
    );
    let other = HboneClient::new(
        wp.hbone,
        Arc::new(CertStore::fixed(
            ca.issue(&Identity::new("cluster.local", "other", "intruder"))
                .unwrap()
                .certs()
                .unwrap(),
        )),
        waypoint_id,
    );
    World {
        other,
        _dir: dir,
        socket,
        server,
        serving,
        wp,
        client,
        _pod: pod,
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
    let (_, dump) = waypoint::testing::process::http_get(w.wp.admin, "/config_dump")
        .await
        .unwrap();
    assert!(dump.contains("xds:unix:"), "{dump}");
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
    assert!(error.contains("cluster inbound-vip|9999|http|broken.default.svc.cluster.local: type: only EDS clusters are supported"), "{error}");
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
    let (_, stats) = waypoint::testing::process::http_get(w.wp.admin, "/stats")
        .await
        .unwrap();
    assert!(stats.contains("authz.denied: 2"), "{stats}");
}
