//! Shared setup for the tests that serve istiod's shapes over Delta ADS: the httpbin
//! waypoint of the shared config dump, edited per test, a real waypoint process, and an
//! HBONE client. Each test cites, in a comment, the istiod source its shape comes from
//! (pilot/pkg/config/kube/gateway/conversion.go, pilot/pkg/networking/core/route/route.go,
//! cluster_waypoint.go, cluster_traffic_policy.go, model/telemetry.go, accesslog.go).
#![allow(dead_code)]

pub use std::net::{IpAddr, SocketAddr};
pub use std::sync::Arc;
use std::time::{Duration, Instant};

use filters::model::Identity;
use hbone::tls::{CertStore, DevCa};
pub use http_body_util::BodyExt;
use testkit::client::HboneClient;
use testkit::echo::EchoIdentity;
pub use testkit::istio_dump::{self as fixture, fake_pod, httpbin_dump, Named, VIP};
use testkit::process::{CertFiles, WaypointProcess};
pub use testkit::ztunnel::{App, FakeZtunnel, ZtunnelOptions};
use testkit::AdsServer;
pub use xds::ads::types::{CLUSTER, ENDPOINT, LISTENER};

pub const HOST: &str = "httpbin.default.svc.cluster.local";
pub const CLUSTER_8100: &str = "inbound-vip|8100|http|httpbin.default.svc.cluster.local";

pub struct World {
    pub _dir: tempfile::TempDir,
    /// The waypoint's stdout (access log lines).
    pub stdout: std::path::PathBuf,
    pub _serving: tokio::task::JoinHandle<()>,
    pub server: AdsServer,
    pub _wp: WaypointProcess,
    pub client: HboneClient,
    pub _pods: (FakeZtunnel, FakeZtunnel, Option<FakeZtunnel>),
    pub listeners: Named,
}

/// The httpbin waypoint of the shared config dump, with `edit` applied to its resources
/// (listeners, clusters, endpoints) before they are served.
pub async fn start(edit: impl FnOnce(&mut Named, &mut Named, &mut Named)) -> World {
    start_with_pod(None, |ls, cs, es, _| edit(ls, cs, es)).await
}

/// As [`start`], with a third pod serving `app` on 8080, whose IP `edit` gets.
pub async fn start_with_pod(
    app: Option<App>,
    edit: impl FnOnce(&mut Named, &mut Named, &mut Named, Option<IpAddr>),
) -> World {
    start_with_args(app, &[], edit).await
}

/// As [`start_with_pod`], with `args` added to the waypoint's command line.
pub async fn start_with_args(
    app: Option<App>,
    args: &[&str],
    edit: impl FnOnce(&mut Named, &mut Named, &mut Named, Option<IpAddr>),
) -> World {
    let apps = app.map(|a| vec![(8080, a)]).unwrap_or_default();
    start_with_apps(apps, args, edit).await
}

/// As [`start_with_args`], the third pod serving each of `apps` on its port (no third pod
/// when `apps` is empty).
pub async fn start_with_apps(
    apps: Vec<(u16, App)>,
    args: &[&str],
    edit: impl FnOnce(&mut Named, &mut Named, &mut Named, Option<IpAddr>),
) -> World {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("test").unwrap();
    let waypoint_id = Identity::new("cluster.local", "default", "waypoint");
    ca.issue(&waypoint_id).unwrap().write(dir.path()).unwrap();
    let pod = fake_pod(&ca, &waypoint_id, "httpbin-1").await;
    let canary = fake_pod(&ca, &waypoint_id, "httpbin-v2-1").await;
    let extra = match apps.is_empty() {
        true => None,
        false => {
            let certs = ca
                .issue(&Identity::new("cluster.local", "default", "httpbin"))
                .unwrap();
            Some(
                FakeZtunnel::start_fresh(|ip| ZtunnelOptions {
                    ip,
                    certs: certs.certs().unwrap(),
                    allowed_caller: Some(waypoint_id.clone()),
                    who: EchoIdentity {
                        pod: "httpbin-extra".into(),
                        namespace: "default".into(),
                    },
                    apps: apps.iter().cloned().collect(),
                })
                .await
                .unwrap(),
            )
        }
    };
    let (mut ls, mut cs, mut es, _) =
        fixture::resources_with(&httpbin_dump(), pod.ip, Some(canary.ip), false);
    edit(&mut ls, &mut cs, &mut es, extra.as_ref().map(|p| p.ip));
    let server = AdsServer::default();
    server.set(LISTENER, ls.clone());
    server.set(CLUSTER, cs);
    server.set(ENDPOINT, es);
    let socket = dir.path().join("xds.sock");
    let serving = server.serve_unix(&socket).unwrap();
    let address = format!("unix:{}", socket.display());
    let stdout = dir.path().join("stdout.log");
    let mut command_line = vec![
        "--xds-address",
        &address,
        "--gateway",
        "default/waypoint",
        "--log-level",
        "warn",
    ];
    command_line.extend_from_slice(args);
    let mut wp = WaypointProcess::spawn_source(
        &std::path::PathBuf::from(env!("CARGO_BIN_EXE_waypoint")),
        &CertFiles::in_dir(dir.path()),
        &command_line,
        Some(&stdout),
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
        waypoint_id,
    );
    World {
        stdout,
        _dir: dir,
        _serving: serving,
        server,
        _wp: wp,
        client,
        _pods: (pod, canary, extra),
        listeners: ls,
    }
}

/// The first NACK the xDS server received (within ten seconds).
pub async fn nack(w: &World) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(e) = w.server.replies().into_iter().find_map(|r| r.error) {
            return e;
        }
        assert!(Instant::now() < deadline, "no NACK");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub headers: http::HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// The echo app's report of the request it saw; panics when the pod was not reached.
    pub fn echo(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "not an echo answer ({}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

pub async fn get(w: &World, port: u16, path: &str) -> Answer {
    send(w, port, "GET", path, &[]).await
}

pub async fn send(
    w: &World,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let conn = w.client.connect().await.unwrap();
    let mut http = conn
        .http1(SocketAddr::new(VIP.parse().unwrap(), port))
        .await
        .unwrap();
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", HOST);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = http
        .send_request(req.body(filters::body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let content_type = headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        headers,
        body,
    }
}

/// Adds the pod at `ip` (port 8080) to the endpoints of `cluster`, in the shape of its
/// first endpoint.
pub fn add_endpoint(es: &mut Named, cluster: &str, ip: IpAddr) {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    let (_, e) = es
        .iter_mut()
        .find(|(n, _)| n == cluster)
        .expect("endpoints");
    let cla = <ClusterLoadAssignment as prost::Message>::decode(e.value.as_slice()).unwrap();
    let mut json =
        xds::envoy::to_json("envoy.config.endpoint.v3.ClusterLoadAssignment", &cla).unwrap();
    let first = json["endpoints"][0]["lb_endpoints"][0].to_string();
    let pod_ip = first
        .split(['"', ':'])
        .find(|p| p.starts_with("127.") && p.parse::<IpAddr>().is_ok())
        .unwrap()
        .to_string();
    let second: serde_json::Value =
        serde_json::from_str(&first.replace(&pod_ip, &ip.to_string())).unwrap();
    json["endpoints"][0]["lb_endpoints"]
        .as_array_mut()
        .unwrap()
        .push(second);
    let cla: ClusterLoadAssignment =
        xds::envoy::from_json("envoy.config.endpoint.v3.ClusterLoadAssignment", &json).unwrap();
    *e = fixture::any(ENDPOINT, &cla);
}

/// Makes the pod at `ip` (port 8080) the only endpoint of `cluster`.
pub fn set_only_endpoint(es: &mut Named, cluster: &str, ip: IpAddr) {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    add_endpoint(es, cluster, ip);
    let (_, e) = es
        .iter_mut()
        .find(|(n, _)| n == cluster)
        .expect("endpoints");
    let mut cla = <ClusterLoadAssignment as prost::Message>::decode(e.value.as_slice()).unwrap();
    let lbs = &mut cla.endpoints[0].lb_endpoints;
    let last = lbs.len() - 1;
    lbs.drain(..last);
    *e = fixture::any(ENDPOINT, &cla);
}

/// `cluster` among `cs`, edited in its proto-JSON form (as a DestinationRule changes it).
pub fn edit_cluster(cs: &mut Named, cluster: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    let (_, c) = cs.iter_mut().find(|(n, _)| n == cluster).expect("cluster");
    let decoded = <Cluster as prost::Message>::decode(c.value.as_slice()).unwrap();
    let mut json = xds::envoy::to_json("envoy.config.cluster.v3.Cluster", &decoded).unwrap();
    edit(&mut json);
    let cluster: Cluster = xds::envoy::from_json("envoy.config.cluster.v3.Cluster", &json).unwrap();
    *c = fixture::any(CLUSTER, &cluster);
}

/// Sends `path` to port 8100 in the background (a slow request holding a pod busy);
/// resolves to its status and the echo app's report (`null` when the pod did not answer).
pub fn in_background(
    w: &World,
    path: &'static str,
) -> tokio::task::JoinHandle<(u16, serde_json::Value)> {
    let client = w.client.clone();
    tokio::spawn(async move {
        let conn = client.connect().await.unwrap();
        let mut http = conn
            .http1(SocketAddr::new(VIP.parse().unwrap(), 8100))
            .await
            .unwrap();
        let req = http::Request::get(path)
            .header("host", HOST)
            .body(filters::body::empty())
            .unwrap();
        let resp = http.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    })
}

/// Endpoints for `cluster`: the pod at `pod` (port 8080) in the shape of httpbin's own
/// endpoints, a pod in the mesh reached over HBONE through `connect_originate`.
pub fn mesh_endpoints(
    es: &Named,
    cluster: &str,
    pod: IpAddr,
) -> envoy_types::pb::google::protobuf::Any {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use prost::Message;
    let (_, e) = es.iter().find(|(n, _)| n == CLUSTER_8100).unwrap();
    let mut e = ClusterLoadAssignment::decode(e.value.as_slice()).unwrap();
    e.cluster_name = cluster.into();
    let mut json =
        xds::envoy::to_json("envoy.config.endpoint.v3.ClusterLoadAssignment", &e).unwrap();
    let first = json["endpoints"][0]["lb_endpoints"][0].to_string();
    let httpbin_ip = first
        .split(['"', ':'])
        .find(|p| p.starts_with("127.") && p.parse::<IpAddr>().is_ok())
        .unwrap()
        .to_string();
    json["endpoints"][0]["lb_endpoints"] =
        serde_json::json!([serde_json::from_str::<serde_json::Value>(
            &first.replace(&httpbin_ip, &pod.to_string())
        )
        .unwrap()]);
    let e: ClusterLoadAssignment =
        xds::envoy::from_json("envoy.config.endpoint.v3.ClusterLoadAssignment", &json).unwrap();
    fixture::any(ENDPOINT, &e)
}

pub const TCP_CHAIN: &str = "inbound-vip|9000||httpbin.default.svc.cluster.local-tcp";
pub const TCP_CLUSTER: &str = "inbound-vip|9000|tcp|httpbin.default.svc.cluster.local";

/// httpbin gets a TCP port 9000 (on the extra pod's 8080): its cluster, endpoints and
/// `main_internal` chain, with `network` filters before the tcp_proxy.
pub fn tcp_port(
    ls: &mut Named,
    cs: &mut Named,
    es: &mut Named,
    pod: IpAddr,
    network: Vec<serde_json::Value>,
) {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use prost::Message;
    let (_, c) = cs.iter().find(|(n, _)| n == CLUSTER_8100).unwrap();
    let mut c = Cluster::decode(c.value.as_slice()).unwrap();
    c.name = TCP_CLUSTER.into();
    if let Some(eds) = c.eds_cluster_config.as_mut() {
        eds.service_name = TCP_CLUSTER.into();
    }
    cs.push((TCP_CLUSTER.into(), fixture::any(CLUSTER, &c)));
    let e = mesh_endpoints(es, TCP_CLUSTER, pod);
    es.push((TCP_CLUSTER.into(), e));
    let mut filters = network;
    filters.push(
        serde_json::json!({"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": TCP_CLUSTER, "cluster": TCP_CLUSTER}}),
    );
    fixture::edit_listener(ls, |json| {
        json["filter_chains"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"name": TCP_CHAIN, "filters": filters.clone()}));
        let map = &mut json["filter_chain_matcher"]["matcher_tree"]["custom_match"]["typed_config"]
            ["range_matchers"][0]["on_match"]["matcher"]["matcher_tree"]["exact_match_map"]["map"];
        map["9000"] = serde_json::json!({"action": {"name": TCP_CHAIN, "typed_config": {
            "@type": "type.googleapis.com/google.protobuf.StringValue", "value": TCP_CHAIN}}});
    });
}

/// Writes `hello` into a tunnel to httpbin's TCP port; what comes back before it closes.
pub async fn tcp_round_trip(w: &World) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let conn = w.client.connect().await.unwrap();
    let Ok(mut tunnel) = conn
        .tunnel(SocketAddr::new(VIP.parse().unwrap(), 9000), &[])
        .await
    else {
        return Vec::new();
    };
    let _ = tunnel.write_all(b"hello").await;
    let _ = tunnel.shutdown().await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the tunnel ended in time");
    buf
}
