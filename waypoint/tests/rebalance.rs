//! Load-aware rebalancing (`--rebalance-peers`): two waypoint replicas and a client that
//! behaves like ztunnel, whose connections all went to the first replica before the second
//! existed. The loaded replica sends GOAWAY to a share of its connections; the client
//! reconnects "through the Service" (a replica at random), and the replicas' open tunnels
//! converge to within 20% of even, with no request failing.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use testkit::client::HboneClient;
use testkit::{free_loopback_ip, free_ports_on};

const SLOTS: usize = 20;
const TUNNELS_PER_SLOT: usize = 2;

fn metrics_addr() -> SocketAddr {
    let ip = free_loopback_ip(0);
    let [port] = free_ports_on::<1>(ip);
    SocketAddr::new(ip, port)
}

async fn replica(own: SocketAddr, peers: &str) -> Harness {
    let own = own.to_string();
    let peers = peers.to_string();
    // Leaked: the harness keeps `&'static str` arguments.
    let args: Vec<&'static str> = vec![
        "--metrics-addr",
        Box::leak(own.into_boxed_str()),
        "--rebalance-peers",
        Box::leak(peers.into_boxed_str()),
        "--rebalance-interval",
        "300ms",
    ];
    Harness::start(Spec {
        extra_args: args,
        ..Spec::default()
    })
    .await
}

/// A replica's open tunnels and connections sent away, from its metrics listener.
async fn load(h: &Harness) -> (usize, usize) {
    let (_, page) = testkit::process::http_get(h.wp.metrics, "/stats/prometheus")
        .await
        .unwrap();
    let value = |name: &str| {
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        value("waypoint_hbone_tunnels"),
        value("waypoint_hbone_connections_rebalanced_total"),
    )
}

/// One of the client's connections: tunnels opened on it in turn, each carrying three
/// requests, until it is sent away; then a new connection to a replica at random.
async fn slot(
    clients: Arc<[HboneClient; 2]>,
    first: usize,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
) {
    let mut target = first;
    while !stop.load(Ordering::Relaxed) {
        let Ok(conn) = clients[target].connect().await else {
            failed.fetch_add(1, Ordering::Relaxed);
            break;
        };
        let conn = Arc::new(conn);
        let workers = (0..TUNNELS_PER_SLOT).map(|_| {
            let (conn, stop, ok, failed) = (conn.clone(), stop.clone(), ok.clone(), failed.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    // A new tunnel is refused once the connection got GOAWAY.
                    let Ok(mut http) = conn.http1(authority(80)).await else {
                        return;
                    };
                    for _ in 0..3 {
                        let answered = match http.ready().await {
                            Ok(()) => http.send_request(get("/get")).await,
                            Err(e) => Err(e),
                        };
                        match answered {
                            Ok(r) if r.status() == 200 => {
                                body_bytes(r).await;
                                ok.fetch_add(1, Ordering::Relaxed)
                            }
                            other => {
                                eprintln!("failed: {:?}", other.map(|r| r.status()));
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        futures::future::join_all(workers).await;
        target = usize::from(rand::random::<bool>());
    }
}

#[tokio::test]
async fn the_loaded_replica_sheds_connections_until_tunnels_are_even() {
    let (ma, mb) = (metrics_addr(), metrics_addr());
    let peers = format!("{ma},{mb}");
    let a = replica(ma, &peers).await;
    let b = replica(mb, &peers).await;
    let clients = Arc::new([a.client(), b.client()]);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // Every connection starts on replica A, as before a scale-out.
    let slots: Vec<_> = (0..SLOTS)
        .map(|_| {
            tokio::spawn(slot(
                clients.clone(),
                0,
                stop.clone(),
                ok.clone(),
                failed.clone(),
            ))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut even_in_a_row = 0;
    let mut seen = Vec::new();
    while even_in_a_row < 3 {
        assert!(
            Instant::now() < deadline,
            "tunnels did not even out in 20 s: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let ((ta, _), (tb, _)) = (load(&a).await, load(&b).await);
        seen.push((ta, tb));
        let mean = (ta + tb) as f64 / 2.0;
        let even = mean >= 10.0
            && [ta, tb]
                .iter()
                .all(|t| (*t as f64 - mean).abs() <= 0.2 * mean);
        even_in_a_row = if even { even_in_a_row + 1 } else { 0 };
    }
    stop.store(true, Ordering::Relaxed);
    for s in slots {
        tokio::time::timeout(Duration::from_secs(5), s)
            .await
            .unwrap()
            .unwrap();
    }
    let (_, shed) = load(&a).await;
    assert!(shed > 0, "replica A sent connections away");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed");
    assert!(ok.load(Ordering::Relaxed) > 100);
    eprintln!("loads over time (A, B): {seen:?}; A sent {shed} connections away");
}
