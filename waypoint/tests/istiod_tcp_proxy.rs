//! The TCP proxy settings istiod writes on a waypoint's TCP ports from the port's
//! DestinationRule (`buildWaypointNetworkFilters` in listener_waypoint.go; the hash policy
//! from `maybeSetHashPolicy` in networkfilter.go), served over Delta ADS to a real
//! waypoint process and checked through HBONE tunnels.

mod istiod;

use std::time::{Duration, Instant};

use istiod::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sets `fields` on the tcp_proxy of httpbin's TCP port 9000.
fn edit_tcp_proxy(ls: &mut Named, fields: Value) {
    fixture::edit_listener(ls, |json| {
        for chain in json["filter_chains"].as_array_mut().unwrap() {
            if chain["name"] == TCP_CHAIN {
                let tcp = &mut chain["filters"].as_array_mut().unwrap().last_mut().unwrap()
                    ["typed_config"];
                for (k, v) in fields.as_object().unwrap() {
                    tcp[k] = v.clone();
                }
            }
        }
    });
}

/// A TCP app that echoes; each connection's end is reported on the channel.
async fn echo_app() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedSender<()>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let ended = tx.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let ended = ended.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = s.read(&mut buf).await {
                    if s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = ended.send(());
            });
        }
    });
    (addr, tx, rx)
}

/// A tunnel to port 9000 whose first `ping` came back (retried while the waypoint is
/// still taking the configuration in), and when it was opened.
async fn echoing_tunnel(w: &World) -> (hbone::H2Stream, Instant) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let opened = Instant::now();
        let conn = w.client.connect().await.unwrap();
        if let Ok(mut t) = conn
            .tunnel(SocketAddr::new(VIP.parse().unwrap(), 9000), &[])
            .await
        {
            if round_trip(&mut t).await {
                return (t, opened);
            }
        }
        assert!(Instant::now() < deadline, "port 9000 never echoed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes `ping` and reads it back (within two seconds).
async fn round_trip(t: &mut hbone::H2Stream) -> bool {
    if t.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), t.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"ping"
    )
}

/// Waits (at most `limit`) for the tunnel to end: a read that gives EOF or an error.
async fn closed_within(t: &mut hbone::H2Stream, limit: Duration) -> bool {
    let mut buf = [0u8; 64];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, t.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_both_ways_and_traffic_keeps_it_open() {
    // DestinationRule connectionPool.tcp.idleTimeout: 1s becomes the tcp_proxy's
    // idle_timeout (buildWaypointNetworkFilters, listener_waypoint.go).
    let (app, _keep, mut app_ended) = echo_app().await;
    let w = start_with_pod(Some(App::Forward(app)), |ls, cs, es, extra| {
        tcp_port(ls, cs, es, extra.unwrap(), vec![]);
        edit_tcp_proxy(ls, json!({"idle_timeout": "1s"}));
    })
    .await;
    let (mut t, _) = echoing_tunnel(&w).await;
    while app_ended.try_recv().is_ok() {}
    // Traffic every 400 ms for 2.4 s, longer than the timeout: the tunnel stays open.
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(
            round_trip(&mut t).await,
            "round trip {i} failed while active"
        );
    }
    // Then silence: the tunnel closes after about a second, the app's side too.
    let quiet = Instant::now();
    assert!(
        closed_within(&mut t, Duration::from_secs(6)).await,
        "the idle tunnel stayed open"
    );
    let after = quiet.elapsed();
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}, before the timeout"
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(5), app_ended.recv())
            .await
            .is_ok(),
        "the app's connection stayed open"
    );
}

#[tokio::test]
async fn a_tunnel_is_closed_at_its_longest_duration_despite_traffic() {
    // DestinationRule connectionPool.tcp.maxConnectionDuration: 2s becomes the tcp_proxy's
    // max_downstream_connection_duration (buildWaypointNetworkFilters).
    let (app, _keep, mut app_ended) = echo_app().await;
    let w = start_with_pod(Some(App::Forward(app)), |ls, cs, es, extra| {
        tcp_port(ls, cs, es, extra.unwrap(), vec![]);
        edit_tcp_proxy(ls, json!({"max_downstream_connection_duration": "2s"}));
    })
    .await;
    let (mut t, opened) = echoing_tunnel(&w).await;
    while app_ended.try_recv().is_ok() {}
    // Busy every 200 ms until a round trip fails; bounded by count and time.
    let mut rounds = 0;
    while rounds < 50 && round_trip(&mut t).await {
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lasted = opened.elapsed();
    assert!(rounds < 50, "the tunnel outlived its duration ({lasted:?})");
    assert!(
        lasted >= Duration::from_millis(1800) && lasted < Duration::from_secs(6),
        "closed after {lasted:?}"
    );
    assert!(closed_within(&mut t, Duration::from_secs(3)).await);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), app_ended.recv())
            .await
            .is_ok(),
        "the app's connection stayed open"
    );
}

/// The pod that answers an HTTP request sent through a TCP tunnel to port 9000 from
/// `source` (ztunnel's `forwarded: for=` header); `None` when none answered.
async fn pod_behind_tcp(w: &World, source: &str) -> Option<String> {
    let conn = w.client.connect().await.ok()?;
    let forwarded = format!("for={source}");
    let mut t = conn
        .tunnel(
            SocketAddr::new(VIP.parse().unwrap(), 9000),
            &[("forwarded", &forwarded)],
        )
        .await
        .ok()?;
    t.write_all(b"GET /who HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1)?).ok()?;
    body["pod"].as_str().map(str::to_string)
}

#[tokio::test]
async fn a_source_ip_hash_keeps_each_client_on_one_pod() {
    // DestinationRule loadBalancer.consistentHash.useSourceIp on a TCP port: RING_HASH on
    // the cluster (ApplyRingHashLoadBalancer, cluster_traffic_policy.go, minimum ring size
    // 1024) and a source_ip hash_policy on the tcp_proxy (maybeSetHashPolicy,
    // networkfilter.go, from buildWaypointNetworkFilters).
    let w = start_with_pod(Some(App::Echo), |ls, cs, es, extra| {
        tcp_port(ls, cs, es, extra.unwrap(), vec![]);
        // httpbin-1 (the first pod of port 8100) is the port's second endpoint.
        let (_, cla) = es.iter().find(|(n, _)| n == CLUSTER_8100).unwrap();
        let cla = <envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment as prost::Message>::decode(cla.value.as_slice()).unwrap();
        let json = xds::envoy::to_json("envoy.config.endpoint.v3.ClusterLoadAssignment", &cla)
            .unwrap()
            .to_string();
        let httpbin_1: IpAddr = json
            .split(['"', ':'])
            .find_map(|p| p.parse().ok().filter(|ip: &IpAddr| p.starts_with("127.") && ip.is_loopback()))
            .unwrap();
        add_endpoint(es, TCP_CLUSTER, httpbin_1);
        edit_cluster(cs, TCP_CLUSTER, |c| {
            c["lb_policy"] = json!("RING_HASH");
            c["ring_hash_lb_config"] = json!({"minimum_ring_size": "1024"});
        });
        edit_tcp_proxy(ls, json!({"hash_policy": [{"source_ip": {}}]}));
    })
    .await;
    // Wait for both endpoints to be taken in (any client answered).
    let deadline = Instant::now() + Duration::from_secs(10);
    while pod_behind_tcp(&w, "127.0.9.1").await.is_none() {
        assert!(Instant::now() < deadline, "port 9000 never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut pods = std::collections::HashSet::new();
    for c in 1..=12 {
        let source = format!("127.0.9.{c}");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            seen.insert(pod_behind_tcp(&w, &source).await.expect("an answer"));
        }
        assert_eq!(seen.len(), 1, "{source} reached {seen:?}");
        pods.extend(seen);
    }
    assert_eq!(pods.len(), 2, "clients spread over both pods: {pods:?}");
}
