//! Shared proxy state: the configuration snapshot, certificates, upstream pools, counters.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use filters::Snapshot;

use crate::upstream::Upstream;
use hbone::tls::CertStore;

/// Holds the current snapshot; publishing replaces it in one atomic swap.
pub struct SnapshotStore {
    current: ArcSwap<Snapshot>,
    loaded: AtomicBool,
    rejected: AtomicU64,
    history: crate::admin::history::ConfigHistory,
}

impl SnapshotStore {
    /// A store holding `initial` (not counted as loaded configuration).
    pub fn new(initial: Snapshot) -> Self {
        Self {
            current: ArcSwap::from_pointee(initial),
            loaded: AtomicBool::new(false),
            rejected: AtomicU64::new(0),
            history: Default::default(),
        }
    }

    /// The last configurations offered, accepted or rejected, with what changed.
    pub fn history(&self) -> &crate::admin::history::ConfigHistory {
        &self.history
    }

    /// The snapshot in force now.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Whether a configuration source has delivered a configuration.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// How many configurations were rejected since start.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

impl filters::Publisher for SnapshotStore {
    fn current_version(&self) -> u64 {
        self.current.load().version()
    }

    fn publish(&self, snapshot: Snapshot) {
        let before = self.current.load_full();
        snapshot.inherit_state(&before);
        self.history.accepted(&before, &snapshot);
        self.current.store(Arc::new(snapshot));
        self.loaded.store(true, Ordering::Release);
    }

    fn reject(&self, source: &str, error: &str) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        self.history.rejected(source, error);
        tracing::warn!(source, error, "configuration rejected");
    }
}

/// Counters of live connections and streams, used by shutdown draining and the admin API.
#[derive(Debug, Default)]
pub struct Stats {
    /// Downstream HBONE connections open.
    pub hbone_connections: AtomicUsize,
    /// Downstream HBONE connections accepted since start.
    pub hbone_accepted: AtomicU64,
    /// HBONE connections closed at once because the listener was at its connection cap.
    pub connections_shed: AtomicU64,
    /// HBONE connections sent GOAWAY because they reached their maximum age.
    pub connections_aged_out: AtomicU64,
    /// Downstream CONNECT tunnels open.
    pub tunnels: AtomicUsize,
    /// HTTP requests in flight.
    pub requests_in_flight: AtomicUsize,
    /// HTTP requests completed.
    pub requests_total: AtomicU64,
}

/// Decrements a counter when dropped.
pub struct Gauge<'a>(&'a AtomicUsize);

impl<'a> Gauge<'a> {
    /// Increments `counter` until the guard is dropped.
    pub fn inc(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Tunables of the data path.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// The trust domain peers must belong to.
    pub trust_domain: String,
    /// How long to wait for a client's first bytes on a port of unknown protocol.
    pub detect_timeout: Duration,
    /// Longest wait for a request's headers (HTTP/1.1 inside a tunnel).
    pub header_timeout: Duration,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
    /// The HBONE listener's address (its Envoy stat name is `listener.<address>.*`).
    pub hbone_addr: std::net::SocketAddr,
    /// Cluster id reported in telemetry when a peer does not say (Istio's `CLUSTER_ID`).
    pub cluster_id: String,
    /// The node id presented to istiod (or, from a local file, the one the waypoint would
    /// present): spans carry it as `node_id`.
    pub node_id: String,
    /// Most series kept per Istio metric family.
    pub metrics_series_limit: usize,
    /// HBONE connections older than this (plus up to 10% jitter) get a graceful GOAWAY, so
    /// that ztunnel reconnects through the Service and spreads over new replicas.
    pub max_connection_age: Option<Duration>,
}

/// Everything the data path shares.
pub struct Proxy {
    /// Route tables.
    pub config: Arc<SnapshotStore>,
    /// Our certificates and the roots.
    pub certs: Arc<CertStore>,
    /// Upstream connection pools.
    pub upstream: Upstream,
    /// Live counters.
    pub stats: Stats,
    /// The downstream HBONE connections open, for load-aware rebalancing.
    pub connections: Arc<crate::inbound::rebalance::Connections>,
    /// Metrics, access logs and traces.
    pub telemetry: crate::telemetry::Telemetry,
    /// Set by `POST /drain_listeners`: HBONE connections get GOAWAY and readiness fails,
    /// while the process keeps serving what is in flight (Envoy's listener drain).
    pub drain: tokio::sync::watch::Sender<bool>,
    /// The xDS subscriber's counters, when configuration comes over xDS.
    pub xds: std::sync::OnceLock<Arc<xds::ads::AdsStats>>,
    /// The bootstrap's node, when started from Envoy's command line (`/server_info`).
    pub node: std::sync::OnceLock<xds::ads::Node>,
    /// Tunables.
    pub options: ProxyOptions,
    /// The HBONE listener was seen accepting connections.
    hbone_up: std::sync::atomic::AtomicBool,
}

impl Proxy {
    /// Builds the shared state.
    pub fn new(
        config: Arc<SnapshotStore>,
        certs: Arc<CertStore>,
        options: ProxyOptions,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            upstream: Upstream::new(certs.clone(), me.clone()),
            config,
            certs,
            stats: Stats::default(),
            connections: Default::default(),
            hbone_up: Default::default(),
            xds: std::sync::OnceLock::new(),
            node: std::sync::OnceLock::new(),
            drain: tokio::sync::watch::channel(false).0,
            telemetry: crate::telemetry::Telemetry::new(
                &options.cluster_id,
                &options.node_id,
                options.metrics_series_limit,
                me.clone(),
            ),
            options,
        })
    }

    /// Whether configuration and certificates are loaded.
    pub fn ready(&self) -> bool {
        self.config.loaded() && self.hbone_listening()
    }

    /// Whether the HBONE listener accepts connections. Pingora binds each service's
    /// listener as that service starts, so readiness, served by another service, could
    /// otherwise answer before 15008 listens and send traffic to a refused port. Read from
    /// the kernel's socket table (not by connecting, which would count as a handshake)
    /// until it is seen once; where that table is missing, assumed.
    fn hbone_listening(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.hbone_up.load(Ordering::Relaxed) {
            return true;
        }
        let up = crate::inbound::listening::is_listening(self.options.hbone_addr).unwrap_or(true);
        if up {
            self.hbone_up.store(true, Ordering::Relaxed);
        }
        up
    }

    /// Whether `/drain_listeners` was called.
    pub fn draining(&self) -> bool {
        *self.drain.borrow()
    }
}
