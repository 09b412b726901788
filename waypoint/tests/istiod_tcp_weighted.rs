//! TCP traffic shifting on a waypoint TCP port, in the shape istiod writes
//! (`buildWaypointNetworkFilters` in pilot/pkg/networking/core/listener_waypoint.go): the
//! VirtualService TCP routes of the Service (`getWaypointTCPRoutes`; a Gateway API TCPRoute
//! with a Service parentRef becomes one) turn the port's `tcp_proxy` into a single
//! `cluster` of the destination (`getWaypointDestinationCluster`:
//! `inbound-vip|<port>|tcp|<host>`) or `weighted_clusters` {clusters: [{name, weight}]}
//! with zero-weight routes left out. Served over Delta ADS to a real waypoint process and
//! checked through HBONE tunnels.

mod istiod;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use istiod::*;
use prost::Message;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The app ports of the third pod: the Services tcp-a, tcp-b and tcp-c each reach it on
/// their own, where a server-first app names the Service; httpbin's own port 9000 reaches
/// it on 8080, which names httpbin.
const APPS: [(u16, &str); 5] = [
    (8080, "httpbin|"),
    (8081, "tcp-a|"),
    (8082, "tcp-b|"),
    (8083, "tcp-c|"),
    (8084, "httpbin-v1|"),
];

/// httpbin's DestinationRule subset `v1` on port 9000 (cluster_waypoint.go names it
/// `inbound-vip|<port>|tcp/<subset>|<host>`, `portToSubset` in listener_waypoint.go).
const SUBSET_CLUSTER: &str = "inbound-vip|9000|tcp/v1|httpbin.default.svc.cluster.local";

fn apps() -> Vec<(u16, App)> {
    APPS.iter()
        .map(|(port, banner)| (*port, App::ServerFirst(banner)))
        .collect()
}

/// `inbound-vip|9000|tcp|<name>.default.svc.cluster.local`.
fn cluster_of(name: &str) -> String {
    format!("inbound-vip|9000|tcp|{name}.default.svc.cluster.local")
}

/// A Service `name` with a TCP port 9000 this waypoint has a cluster for (as istiod sends one
/// per Service port of the waypoint's Services, cluster_waypoint.go), its one endpoint the
/// pod `pod` on `app_port`. Not served by a `main_internal` chain of its own: only routes
/// name it.
fn tcp_service(cs: &mut Named, es: &mut Named, name: &str, pod: IpAddr, app_port: u16) {
    tcp_cluster(cs, es, &cluster_of(name), name, pod, app_port);
}

/// The cluster `cluster` of the Service `name`'s port 9000, as [`tcp_service`] describes.
fn tcp_cluster(
    cs: &mut Named,
    es: &mut Named,
    cluster: &str,
    name: &str,
    pod: IpAddr,
    app_port: u16,
) {
    let cluster = cluster.to_string();
    let (_, c) = cs.iter().find(|(n, _)| n == CLUSTER_8100).unwrap();
    let c = Cluster::decode(c.value.as_slice()).unwrap();
    let text = xds::envoy::to_json("envoy.config.cluster.v3.Cluster", &c)
        .unwrap()
        .to_string()
        .replace(CLUSTER_8100, &cluster)
        .replace("httpbin.default", &format!("{name}.default"))
        .replace("\"name\":\"httpbin\"", &format!("\"name\":\"{name}\""));
    let c: Cluster = xds::envoy::from_json(
        "envoy.config.cluster.v3.Cluster",
        &serde_json::from_str(&text).unwrap(),
    )
    .unwrap();
    cs.push((cluster.clone(), fixture::any(CLUSTER, &c)));
    let e = mesh_endpoints(es, &cluster, pod);
    let e = ClusterLoadAssignment::decode(e.value.as_slice()).unwrap();
    let text = xds::envoy::to_json("envoy.config.endpoint.v3.ClusterLoadAssignment", &e)
        .unwrap()
        .to_string()
        .replace(&format!("{pod}:8080"), &format!("{pod}:{app_port}"));
    let e: ClusterLoadAssignment = xds::envoy::from_json(
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
        &serde_json::from_str(&text).unwrap(),
    )
    .unwrap();
    es.push((cluster, fixture::any(ENDPOINT, &e)));
}

/// httpbin's TCP port 9000 (its own cluster on the pod's 8080) and the Services tcp-a,
/// tcp-b, tcp-c; then the port's tcp_proxy gets `specifier` instead of its own cluster.
fn set_up(ls: &mut Named, cs: &mut Named, es: &mut Named, pod: IpAddr, specifier: Value) {
    tcp_port(ls, cs, es, pod, vec![]);
    for (port, banner) in &APPS[1..4] {
        tcp_service(cs, es, banner.trim_end_matches('|'), pod, *port);
    }
    // The subset's endpoints: EDS gives only the pods of the subset (here the app on 8084).
    tcp_cluster(cs, es, SUBSET_CLUSTER, "httpbin", pod, 8084);
    fixture::edit_listener(ls, |json| {
        for chain in json["filter_chains"].as_array_mut().unwrap() {
            if chain["name"] == TCP_CHAIN {
                let tcp = chain["filters"].as_array_mut().unwrap().last_mut().unwrap()
                    ["typed_config"]
                    .as_object_mut()
                    .unwrap();
                tcp.remove("cluster");
                for (k, v) in specifier.as_object().unwrap() {
                    tcp.insert(k.clone(), v.clone());
                }
            }
        }
    });
}

/// Opens a tunnel to httpbin's port 9000 and reads the app's banner up to its `|`: the
/// Service that answered, or `None` when the tunnel closed (or gave nothing in 2 s).
async fn answered_by(conn: &testkit::client::HboneConnection) -> Option<String> {
    let mut t = conn
        .tunnel(SocketAddr::new(VIP.parse().unwrap(), 9000), &[])
        .await
        .ok()?;
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while t.read_exact(&mut byte).await.is_ok() {
            if byte[0] == b'|' {
                return true;
            }
            got.push(byte[0]);
        }
        false
    };
    let complete = tokio::time::timeout(Duration::from_secs(2), read)
        .await
        .unwrap_or(false);
    let _ = t.shutdown().await;
    complete.then(|| String::from_utf8_lossy(&got).into_owned())
}

/// Waits (at most ten seconds) until a tunnel is answered by `want` (the configuration
/// has been taken in).
async fn until_answered_by(w: &World, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let conn = w.client.connect().await.unwrap();
        for _ in 0..8 {
            if answered_by(&conn).await.as_deref() == Some(want) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no tunnel reached {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens `n` tunnels, eight at a time over one HBONE connection; counts who answered
/// (`-` for a tunnel that was closed without an answer).
async fn tally(w: &World, n: usize) -> BTreeMap<String, usize> {
    let conn = w.client.connect().await.unwrap();
    let mut counts = BTreeMap::new();
    let started = Instant::now();
    for _ in 0..n / 8 {
        let batch = futures::future::join_all((0..8).map(|_| answered_by(&conn))).await;
        for who in batch {
            *counts.entry(who.unwrap_or_else(|| "-".into())).or_default() += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "tunnels too slow"
        );
    }
    counts
}

#[tokio::test]
async fn weighted_clusters_shift_tunnels_by_weight() {
    // Two TCP routes with weights 1 and 3 (a third with weight 0, which istiod leaves out
    // of weighted_clusters): buildWaypointNetworkFilters, listener_waypoint.go.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("tcp.log");
    let w = start_with_apps(apps(), &[], |ls, cs, es, pod| {
        let specifier = json!({"weighted_clusters": {"clusters": [
            {"name": cluster_of("tcp-a"), "weight": 1},
            {"name": cluster_of("tcp-b"), "weight": 3}]},
            "access_log": [{"name": "envoy.access_loggers.file", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": log,
                "log_format": {"text_format_source": {"inline_string": "TCP %UPSTREAM_CLUSTER%\n"}}}}]});
        set_up(ls, cs, es, pod.unwrap(), specifier);
    })
    .await;
    until_answered_by(&w, "tcp-b").await;
    let counts = tally(&w, 200).await;
    let a = counts.get("tcp-a").copied().unwrap_or(0);
    let b = counts.get("tcp-b").copied().unwrap_or(0);
    assert_eq!(a + b, 200, "only tcp-a and tcp-b answer: {counts:?}");
    // Expected 50 of 200 (standard deviation about 6): a wide, still decisive bound.
    assert!(
        (25..=80).contains(&a),
        "tcp-a got {a} of 200 (want about 50)"
    );
    // The tunnels' metrics name the Service each went to.
    let (_, text) = testkit::process::http_get(w._wp.metrics, "/stats/prometheus")
        .await
        .unwrap();
    let opened = |svc: &str| {
        text.lines()
            .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
            .filter(|l| {
                l.contains(&format!(
                    "destination_service=\"{svc}.default.svc.cluster.local\""
                ))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum::<f64>()
    };
    assert!(opened("tcp-a") >= a as f64, "tcp-a metrics:\n{text}");
    assert!(opened("tcp-b") >= b as f64, "tcp-b metrics:\n{text}");
    assert_eq!(opened("tcp-c"), 0.0);
    // The access log names the cluster each tunnel went to (`%UPSTREAM_CLUSTER%`).
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = |text: &str, svc: &str| {
        let line = format!("TCP {}", cluster_of(svc));
        text.lines().filter(|l| *l == line).count()
    };
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if lines(&text, "tcp-a") >= a && lines(&text, "tcp-b") >= b {
            assert_eq!(lines(&text, "tcp-c"), 0, "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "access log:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_single_cluster_of_another_service_takes_every_tunnel() {
    // One TCP route to another Service: its cluster alone (getWaypointDestinationCluster).
    let w = start_with_apps(apps(), &[], |ls, cs, es, pod| {
        set_up(
            ls,
            cs,
            es,
            pod.unwrap(),
            json!({"cluster": cluster_of("tcp-c")}),
        );
    })
    .await;
    until_answered_by(&w, "tcp-c").await;
    let counts = tally(&w, 24).await;
    assert_eq!(counts, BTreeMap::from([("tcp-c".to_string(), 24)]));
}

#[tokio::test]
async fn a_single_subset_cluster_takes_every_tunnel() {
    // One TCP route to a subset of the Service itself: the subset's cluster
    // (getWaypointDestinationCluster with portToSubset).
    let w = start_with_apps(apps(), &[], |ls, cs, es, pod| {
        set_up(ls, cs, es, pod.unwrap(), json!({"cluster": SUBSET_CLUSTER}));
    })
    .await;
    until_answered_by(&w, "httpbin-v1").await;
    let counts = tally(&w, 24).await;
    assert_eq!(counts, BTreeMap::from([("httpbin-v1".to_string(), 24)]));
}

#[tokio::test]
async fn a_weighted_cluster_unknown_to_cds_closes_its_share() {
    // getWaypointDestinationCluster names `UnknownService` for an invalid backendRef; a
    // tunnel drawing it is closed (Envoy: no cluster found), the other share still works.
    let w = start_with_apps(apps(), &[], |ls, cs, es, pod| {
        let specifier = json!({"weighted_clusters": {"clusters": [
            {"name": "UnknownService", "weight": 1},
            {"name": cluster_of("tcp-a"), "weight": 1}]}});
        set_up(ls, cs, es, pod.unwrap(), specifier);
    })
    .await;
    until_answered_by(&w, "tcp-a").await;
    let counts = tally(&w, 48).await;
    let closed = counts.get("-").copied().unwrap_or(0);
    let a = counts.get("tcp-a").copied().unwrap_or(0);
    assert_eq!(closed + a, 48, "{counts:?}");
    assert!(closed > 0 && a > 0, "{counts:?}");
}

#[tokio::test]
async fn a_weighted_cluster_field_not_implemented_is_nacked_by_name() {
    let w = start_with_apps(apps(), &[], |ls, cs, es, pod| {
        let specifier = json!({"weighted_clusters": {"clusters": [
            {"name": cluster_of("tcp-a"), "weight": 1,
             "metadata_match": {"filter_metadata": {"envoy.lb": {"version": "v1"}}}},
            {"name": cluster_of("tcp-b"), "weight": 3}]}});
        set_up(ls, cs, es, pod.unwrap(), specifier);
    })
    .await;
    let e = nack(&w).await;
    assert!(
        e.contains("weighted_clusters.clusters[0].metadata_match"),
        "{e}"
    );
}
