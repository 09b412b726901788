//! Load-aware rebalancing of downstream HBONE connections (istio/istio#56864).
//!
//! ztunnel keeps its HBONE connections to a waypoint for as long as they work, so after a
//! scale-out the new replicas get almost nothing until connections churn. With
//! `--rebalance-peers`, every replica compares its open tunnels with its peers' (each
//! peer's `waypoint_hbone_tunnels` gauge, read from its metrics listener) every
//! `--rebalance-interval`. A replica above the mean by more than `--rebalance-tolerance`
//! sends a graceful GOAWAY to connections carrying about half of its excess: tunnels in
//! flight finish, and ztunnel opens new connections through the waypoint Service, which
//! spreads them over the replicas. Replicas at or below the mean do nothing, and halving
//! the excess each round keeps replicas that act together from overshooting.
//!
//! The peers are `host:port` items: addresses, or a name (a headless Service) that
//! resolves to every replica. A replica recognizes itself among them by the random
//! instance id it reports (`waypoint_instance_info`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::state::Proxy;

/// The gauge a peer's load is read from.
pub const TUNNELS_GAUGE: &str = "waypoint_hbone_tunnels";
/// The info metric naming a replica's instance id.
pub const INSTANCE_INFO: &str = "waypoint_instance_info";

/// This process's instance id, reported to peers so it can skip itself.
pub fn instance_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| format!("{:016x}", rand::random::<u64>()))
}

/// The downstream HBONE connections open, each with its tunnels and a way to ask it to
/// leave.
#[derive(Debug, Default)]
pub struct Connections {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Live>>,
    /// Connections sent GOAWAY to rebalance.
    pub shed: AtomicU64,
}

#[derive(Debug)]
struct Live {
    tunnels: Arc<AtomicUsize>,
    leave: Arc<Notify>,
}

/// One connection's entry, removed when dropped.
#[derive(Debug)]
pub struct Registered {
    id: u64,
    connections: Arc<Connections>,
    /// Tunnels open on this connection.
    pub tunnels: Arc<AtomicUsize>,
    /// Notified when the connection should send GOAWAY to rebalance.
    pub leave: Arc<Notify>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.lock().remove(&self.id);
    }
}

impl Connections {
    /// Registers a new connection.
    pub fn register(self: &Arc<Self>) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let tunnels = Arc::new(AtomicUsize::new(0));
        let leave = Arc::new(Notify::new());
        self.lock().insert(
            id,
            Live {
                tunnels: tunnels.clone(),
                leave: leave.clone(),
            },
        );
        Registered {
            id,
            connections: self.clone(),
            tunnels,
            leave,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Live>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks connections carrying about `excess` tunnels to leave (at least one with
    /// tunnels, never every connection); returns how many were asked.
    pub fn shed(&self, excess: usize) -> usize {
        use rand::seq::SliceRandom;
        let live = self.lock();
        let mut busy: Vec<(&u64, &Live)> = live
            .iter()
            .filter(|(_, l)| l.tunnels.load(Ordering::Relaxed) > 0)
            .collect();
        if busy.len() < 2 {
            return 0;
        }
        busy.shuffle(&mut rand::thread_rng());
        let (mut moved, mut asked) = (0, 0);
        for (_, l) in busy.iter().take(busy.len() - 1) {
            if moved >= excess {
                break;
            }
            moved += l.tunnels.load(Ordering::Relaxed);
            l.leave.notify_one();
            asked += 1;
        }
        self.shed.fetch_add(asked as u64, Ordering::Relaxed);
        asked
    }
}

/// How rebalancing runs.
#[derive(Debug, Clone)]
pub struct RebalanceOptions {
    /// Peers' metrics listeners, `host:port` each.
    pub peers: Vec<String>,
    /// How often loads are compared.
    pub interval: Duration,
    /// How far above the mean (a fraction) a replica may be before it sheds.
    pub tolerance: f64,
}

/// How many tunnels a replica at `mine` should move, given the others' loads: half its
/// excess over the mean when that is more than `tolerance` of the mean; 0 otherwise.
pub fn excess(mine: usize, others: &[usize], tolerance: f64) -> usize {
    if others.is_empty() {
        return 0;
    }
    let total: usize = mine + others.iter().sum::<usize>();
    let mean = total as f64 / (others.len() + 1) as f64;
    let over = mine as f64 - mean;
    if over < 1.0 || mine as f64 <= mean * (1.0 + tolerance) {
        return 0;
    }
    (over / 2.0).ceil() as usize
}

/// Compares loads with the peers every interval and sheds connections when above them.
pub async fn run(
    proxy: Arc<Proxy>,
    options: RebalanceOptions,
    resolver: hickory_resolver::TokioResolver,
) {
    tracing::info!(peers = ?options.peers, interval = ?options.interval, tolerance = options.tolerance, "rebalancing HBONE connections by load");
    loop {
        // Jitter keeps replicas from acting in lockstep.
        let jitter = options.interval.mul_f64(rand::random::<f64>() * 0.2);
        tokio::time::sleep(options.interval + jitter).await;
        let others = peer_loads(&options.peers, &resolver).await;
        let mine = proxy.stats.tunnels.load(Ordering::Relaxed);
        let excess = excess(mine, &others, options.tolerance);
        if excess == 0 {
            continue;
        }
        let asked = proxy.connections.shed(excess);
        tracing::info!(
            tunnels = mine,
            peers = ?others,
            excess,
            connections = asked,
            "above the replicas' mean load: GOAWAY sent to rebalance"
        );
    }
}

/// The open tunnels of every peer that answered, itself excluded.
async fn peer_loads(peers: &[String], resolver: &hickory_resolver::TokioResolver) -> Vec<usize> {
    let mut addresses = Vec::new();
    for peer in peers {
        match resolve(peer, resolver).await {
            Ok(a) => addresses.extend(a),
            Err(e) => tracing::warn!(peer, error = %e, "rebalancing peer not resolved"),
        }
    }
    let fetches = addresses.into_iter().map(|a| async move {
        match tokio::time::timeout(Duration::from_secs(2), peer_load(a)).await {
            Ok(Ok(load)) => Some(load),
            Ok(Err(e)) => {
                tracing::debug!(peer = %a, error = %e, "rebalancing peer load not read");
                None
            }
            Err(_) => {
                tracing::debug!(peer = %a, "rebalancing peer load timed out");
                None
            }
        }
    });
    futures::future::join_all(fetches)
        .await
        .into_iter()
        .flatten()
        .filter(|(id, _)| id != instance_id())
        .map(|(_, tunnels)| tunnels)
        .collect()
}

async fn resolve(
    peer: &str,
    resolver: &hickory_resolver::TokioResolver,
) -> Result<Vec<SocketAddr>, String> {
    if let Ok(a) = peer.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let (host, port) = peer
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or("not host:port")?;
    let ips = resolver.lookup_ip(host).await.map_err(|e| e.to_string())?;
    Ok(ips.iter().map(|ip| SocketAddr::new(ip, port)).collect())
}

/// A peer's instance id and open tunnels, from its metrics listener.
async fn peer_load(
    addr: SocketAddr,
) -> Result<(String, usize), Box<dyn std::error::Error + Send + Sync>> {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(format!(
        "/stats/prometheus?filter=^({TUNNELS_GAUGE}|{INSTANCE_INFO})$"
    ))
    .header(http::header::HOST, addr.to_string())
    .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = send.send_request(req).await?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()).into());
    }
    let body = resp.into_body().collect().await?.to_bytes();
    parse_load(std::str::from_utf8(&body)?).ok_or_else(|| "no load in the answer".into())
}

/// The instance id and tunnels in a Prometheus page.
fn parse_load(page: &str) -> Option<(String, usize)> {
    let mut id = None;
    let mut tunnels = None;
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        if let Some(v) = line
            .strip_prefix(TUNNELS_GAUGE)
            .and_then(|r| r.strip_prefix(' '))
        {
            tunnels = v.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix(INSTANCE_INFO) {
            id = rest
                .split("instance=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(str::to_string);
        }
    }
    Some((id?, tunnels?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_replica_well_above_the_mean_sheds_half_its_excess() {
        assert_eq!(excess(40, &[0], 0.1), 10, "mean 20: half of 20");
        assert_eq!(
            excess(22, &[18], 0.1),
            0,
            "10% above the mean is within tolerance"
        );
        assert_eq!(excess(24, &[16], 0.1), 2);
        assert_eq!(excess(10, &[30], 0.1), 0, "below the mean");
        assert_eq!(excess(5, &[], 0.1), 0, "no peer answered");
        assert_eq!(excess(1, &[0], 0.1), 0, "less than one tunnel over");
    }

    #[test]
    fn connections_asked_to_leave_carry_the_excess_and_one_stays() {
        let c = Arc::new(Connections::default());
        let conns: Vec<Registered> = (0..4).map(|_| c.register()).collect();
        for r in &conns {
            r.tunnels.store(5, Ordering::Relaxed);
        }
        assert_eq!(c.shed(7), 2, "5 + 5 covers 7");
        assert_eq!(c.shed(100), 3, "never the last one");
        drop(conns);
        assert!(
            c.lock().is_empty(),
            "dropped connections leave the registry"
        );
    }

    #[test]
    fn the_load_is_read_from_the_filtered_page() {
        let page = "# TYPE waypoint_hbone_tunnels gauge\nwaypoint_hbone_tunnels 17\n# TYPE waypoint_instance_info gauge\nwaypoint_instance_info{instance=\"abc\"} 1\n";
        assert_eq!(parse_load(page), Some(("abc".into(), 17)));
        assert_eq!(parse_load("waypoint_hbone_tunnels 3\n"), None, "no id");
    }
}
