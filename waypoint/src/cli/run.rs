use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::server::{self, ServerOptions, Task};
use crate::state::{Proxy, ProxyOptions, SnapshotStore};
use anyhow::Context;
use clap::Args;
use filters::model::{Identity, NamespacedName, Waypoint};
use filters::Publisher;
use filters::Snapshot;
use hbone::tls::CertStore;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Local configuration: a YAML file of Kubernetes objects, watched for changes.
    #[arg(
        long,
        required_unless_present_any = ["xds_address", "istiod"],
        conflicts_with = "xds_address"
    )]
    config: Option<PathBuf>,
    /// xDS server (Delta ADS), instead of a local file: `unix:<path>` (pilot-agent's
    /// socket) or `http://host:port` (istiod without TLS). Requires --gateway.
    #[arg(long, requires = "gateway")]
    xds_address: Option<xds::ads::XdsAddress>,
    /// Node id sent to the xDS server (default: Istio's `waypoint~<ip>~<name>.<ns>~<ns>.svc.cluster.local`).
    #[arg(long)]
    node_id: Option<String>,
    /// The waypoint's Gateway as `namespace/name` (default: the only istio-waypoint Gateway).
    #[arg(long)]
    gateway: Option<String>,
    /// PEM certificate chain (leaf first), reloaded when it changes.
    #[arg(long, required_unless_present_any = ["sds_address", "istiod"])]
    cert_chain: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, required_unless_present_any = ["sds_address", "istiod"])]
    key: Option<PathBuf>,
    /// PEM root bundle. With --istiod: the roots istiod's serving certificate chains to
    /// (default /var/run/secrets/istio/root-cert.pem, the istio-ca-root-cert ConfigMap).
    #[arg(long, required_unless_present_any = ["sds_address", "istiod"])]
    root_cert: Option<PathBuf>,
    /// Certificates over SDS (`default` and `ROOTCA`, rotated as they change) instead of
    /// files: `unix:<path>` (pilot-agent's socket).
    #[arg(long)]
    sds_address: Option<xds::ads::XdsAddress>,
    /// SPIFFE trust domain.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// HBONE listener.
    #[arg(long, default_value = "0.0.0.0:15008")]
    hbone_addr: SocketAddr,
    /// DNS server (`ip:port`, UDP and TCP) resolving the host names of DNS upstreams
    /// (ServiceEntry `resolution: DNS`); default: the system's (`/etc/resolv.conf`).
    #[arg(long)]
    dns_server: Option<SocketAddr>,
    /// Readiness listener (`/healthz/ready`).
    #[arg(long, default_value = "0.0.0.0:15021")]
    ready_addr: SocketAddr,
    /// Admin listener.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    /// Prometheus metrics listener (`/stats/prometheus`, as pilot-agent's 15020 serves it).
    #[arg(long, default_value = "0.0.0.0:15020")]
    metrics_addr: SocketAddr,
    /// Cluster id reported in telemetry (Istio's CLUSTER_ID).
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,
    /// Most series kept per Istio metric family; samples beyond are counted in
    /// waypoint_metrics_series_overflow_total.
    #[arg(long, default_value_t = crate::telemetry::metrics::DEFAULT_SERIES_LIMIT)]
    metrics_series_limit: usize,
    /// Worker threads (default: one per core).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Longest wait for in-flight requests at shutdown, in seconds.
    #[arg(long, default_value_t = 30)]
    drain_timeout: u64,
    /// Protocol detection timeout for ports of unknown protocol, in milliseconds.
    #[arg(long, default_value_t = 100)]
    detect_timeout_ms: u64,
    /// Istio root namespace (policies bound to the istio-waypoint GatewayClass live there).
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
    /// Path normalization before authorization: NONE, BASE, MERGE_SLASHES or
    /// DECODE_AND_MERGE_SLASHES (MeshConfig pathNormalization).
    #[arg(long, default_value = "BASE", value_parser = parse_normalization)]
    path_normalization: filters::authz::path::Normalization,
    /// Longest wait for a request's headers inside a tunnel (HTTP/1.1): a client sending them
    /// slower is cut off. `30s`, `500ms`.
    #[arg(long, default_value = "30s", value_parser = parse_interval)]
    request_header_timeout: Duration,
    /// Longest a TLS handshake on the HBONE listener may take (Pingora's own bound is 60 s;
    /// Envoy as istiod configures the waypoint has none).
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    tls_handshake_timeout: Duration,
    /// Most downstream HBONE connections (handshaking or established); more are closed at
    /// once. Default: 80% of the process's open-file limit.
    #[arg(long)]
    max_connections: Option<usize>,
    /// HBONE connections older than this (plus up to 10% jitter) get a graceful GOAWAY
    /// (tunnels in flight finish), so ztunnel reconnects through the Service and spreads its
    /// connections over new replicas after a scale-out: `30m`, `1h`. Off by default.
    #[arg(long, value_parser = parse_interval)]
    max_connection_age: Option<Duration>,
    /// Rebalance HBONE connections by load across the replicas: the replicas' metrics
    /// listeners, `host:port` each, comma-separated (addresses, or a headless Service name
    /// resolving to every replica, this one included). Off when empty.
    #[arg(long, value_delimiter = ',')]
    rebalance_peers: Vec<String>,
    /// How often loads are compared with the peers (`--rebalance-peers`).
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    rebalance_interval: Duration,
    /// How far above the replicas' mean load (a fraction) this one may be before it sends
    /// GOAWAY to connections carrying half its excess.
    #[arg(long, default_value_t = 0.1)]
    rebalance_tolerance: f64,
    /// Most bytes of request bodies held in memory by all requests together (MiB): bodies
    /// kept for retries (past the limit a request is not kept, so not retried) and bodies
    /// buffered for ext_authz checks (past it the request is answered 503 `OM`).
    #[arg(long, default_value_t = 256, alias = "retry-buffer-limit-mib")]
    body_buffer_limit_mib: usize,
    /// Most HBONE connections in a TLS handshake at once; more are closed at once (a flood
    /// of half-open connections then costs bounded memory).
    #[arg(long, default_value_t = 1024)]
    max_handshakes: usize,
    /// How often RequestAuthentication `jwksUri` keys are fetched again (Istio's
    /// PILOT_JWT_PUB_KEY_REFRESH_INTERVAL): `20m`, `30s`, `500ms`.
    #[arg(long, default_value = "20m", value_parser = parse_interval)]
    jwks_refresh_interval: Duration,
    /// Extra PEM roots trusted for https `jwksUri` (besides the system trust store).
    #[arg(long)]
    jwks_ca_file: Option<PathBuf>,
    /// How often the configuration and certificate files are checked, in milliseconds.
    #[arg(long, default_value_t = 500)]
    watch_interval_ms: u64,
    /// Without pilot-agent: istiod's address and the pod's facts.
    #[command(flatten)]
    istiod: super::istiod::IstiodArgs,
    /// Started from Envoy's command line: the bootstrap's node and static listeners.
    #[arg(skip)]
    pub(super) bootstrap: Option<super::envoy::FromBootstrap>,
    /// `--istiod`, resolved.
    #[arg(skip)]
    resolved: Option<super::istiod::Istiod>,
}

impl RunArgs {
    /// The node sent to the xDS and SDS servers: the bootstrap's, unchanged, else ours.
    fn node(&self, gateway: &NamespacedName) -> xds::ads::Node {
        if let Some(b) = &self.bootstrap {
            return b.node.clone();
        }
        if let Some(i) = &self.resolved {
            return i.facts.node(gateway);
        }
        let id = self.node_id.clone().unwrap_or_else(|| {
            format!(
                "waypoint~0.0.0.0~{}.{}~{}.svc.cluster.local",
                gateway.name, gateway.namespace, gateway.namespace
            )
        });
        xds::ads::node(&id, &self.cluster_id, gateway)
    }
}

pub fn run(mut args: RunArgs) -> anyhow::Result<()> {
    if args.istiod.istiod.is_some() {
        args.cluster_id = super::istiod::cluster_id(&args.cluster_id);
        args.resolved = args.istiod.resolve(
            args.root_cert.as_deref(),
            &args.trust_domain,
            &args.cluster_id,
            args.gateway.as_deref(),
        )?;
        if let Some(i) = &args.resolved {
            args.gateway = Some(i.gateway.to_string());
        }
    }
    let gateway = parse_gateway(&args)?;
    let jwks = Arc::new(filters::authn::JwksRegistry::default());
    let jwks_client = crate::jwks::JwksClient::new(args.jwks_ca_file.as_deref())?;
    let options = filters::SourceOptions {
        gateway,
        trust_domain: args.trust_domain.clone(),
        root_namespace: args.root_namespace.clone(),
        normalization: args.path_normalization,
        jwks: jwks.clone(),
        ..Default::default()
    };
    let (certs, sds_task) = certificates(&args)?;
    let ours = certs.current().identity.clone();
    anyhow::ensure!(
        ours.trust_domain == args.trust_domain,
        "our certificate's identity {ours} is not in trust domain {}",
        args.trust_domain
    );
    let (store, source_task, xds_stats) = config_source(&args, options, &ours)?;
    // The node id istiod sees (from a local file, the one the waypoint would present).
    let node_id = args.node(&store.current().waypoint().gateway).id;

    filters::budget::Budget::global()
        .set_limit(args.body_buffer_limit_mib.saturating_mul(1024 * 1024));
    let proxy = Proxy::new(
        store.clone(),
        certs.clone(),
        ProxyOptions {
            trust_domain: args.trust_domain.clone(),
            detect_timeout: Duration::from_millis(args.detect_timeout_ms),
            header_timeout: args.request_header_timeout,
            drain_timeout: Duration::from_secs(args.drain_timeout),
            hbone_addr: args.hbone_addr,
            cluster_id: args.cluster_id.clone(),
            node_id,
            metrics_series_limit: args.metrics_series_limit,
            max_connection_age: args.max_connection_age,
        },
    );
    if let Some(s) = xds_stats {
        let _ = proxy.xds.set(s);
    }
    if let Some(b) = &args.bootstrap {
        let _ = proxy.node.set(b.node.clone());
    }
    let interval = Duration::from_millis(args.watch_interval_ms);
    let resolver = crate::upstream::dns::resolver(args.dns_server)?;
    crate::upstream::forward_proxy::hosts().set_resolver(resolver.clone());
    let mut tasks: Vec<Task> = Vec::new();
    if !args.rebalance_peers.is_empty() {
        let options = crate::inbound::rebalance::RebalanceOptions {
            peers: args.rebalance_peers.clone(),
            interval: args.rebalance_interval,
            tolerance: args.rebalance_tolerance.max(0.0),
        };
        tasks.push(Box::pin(crate::inbound::rebalance::run(
            proxy.clone(),
            options,
            resolver.clone(),
        )));
    }
    tasks.extend::<[Task; 4]>([
        Box::pin(crate::upstream::dns::run(store.clone(), resolver)),
        source_task,
        sds_task.unwrap_or_else(|| Box::pin(certs.clone().watch(interval))),
        Box::pin(crate::jwks::run(
            jwks,
            jwks_client,
            args.jwks_refresh_interval,
        )),
    ]);
    start_server(&args, proxy, tasks);
    Ok(())
}

/// `--gateway` as a `namespace/name`, when given.
fn parse_gateway(args: &RunArgs) -> anyhow::Result<Option<NamespacedName>> {
    args.gateway
        .as_deref()
        .map(|g| {
            let (ns, name) = g
                .split_once('/')
                .context("--gateway must be namespace/name")?;
            Ok::<_, anyhow::Error>(NamespacedName::new(ns, name))
        })
        .transpose()
}

/// The configuration source (local file or xDS): its store, its task and the xDS stats.
fn config_source(
    args: &RunArgs,
    options: filters::SourceOptions,
    ours: &Identity,
) -> anyhow::Result<(Arc<SnapshotStore>, Task, Option<Arc<xds::ads::AdsStats>>)> {
    match (&args.config, &args.xds_address) {
        (Some(path), _) => {
            let (store, task) = local_source(args, path, options, ours)?;
            Ok((store, task, None))
        }
        (None, Some(address)) => {
            let (store, task, stats) = xds_source(args, address, options, ours)?;
            Ok((store, task, Some(stats)))
        }
        (None, None) => {
            let istiod = args
                .resolved
                .as_ref()
                .context("one of --config, --xds-address or --istiod is required")?;
            let address = xds::ads::XdsAddress::Tls(istiod.xds.clone());
            let (store, task, stats) = xds_source(args, &address, options, ours)?;
            Ok((store, task, Some(stats)))
        }
    }
}

/// Loads the local configuration file and returns its store and the task watching it.
fn local_source(
    args: &RunArgs,
    path: &Path,
    options: filters::SourceOptions,
    ours: &Identity,
) -> anyhow::Result<(Arc<SnapshotStore>, Task)> {
    let first = kube_config::load(path, &options, 1)
        .with_context(|| format!("invalid configuration {}", path.display()))?;
    let store = Arc::new(SnapshotStore::new(Snapshot::empty(Waypoint {
        gateway: first.waypoint().gateway.clone(),
        trust_domain: args.trust_domain.clone(),
    })));
    tracing::info!(identity = %ours, gateway = %first.waypoint().gateway, services = first.services().len(), "configuration loaded");
    store.publish(first);
    let interval = Duration::from_millis(args.watch_interval_ms);
    let task: Task = Box::pin(kube_config::watch(
        path.to_path_buf(),
        options,
        store.clone(),
        interval,
    ));
    Ok((store, task))
}

/// Creates the xDS client and returns the store it publishes to, its task and its stats.
fn xds_source(
    args: &RunArgs,
    address: &xds::ads::XdsAddress,
    options: filters::SourceOptions,
    ours: &Identity,
) -> anyhow::Result<(Arc<SnapshotStore>, Task, Arc<xds::ads::AdsStats>)> {
    let gateway = options
        .gateway
        .clone()
        .context("--xds-address requires --gateway")?;
    let store = Arc::new(SnapshotStore::new(Snapshot::empty(
        options.waypoint(gateway.clone()),
    )));
    let node = args.node(&gateway);
    tracing::info!(identity = %ours, %gateway, server = %address, node = %node.id, from_bootstrap = args.bootstrap.is_some(), "configuration from xDS");
    let client = xds::ads::AdsClient::new(address.clone(), node, &options)?;
    let stats = client.stats.clone();
    let publisher: Arc<dyn Publisher> = store.clone();
    let task: Task = Box::pin(client.run(publisher));
    Ok((store, task, stats))
}

/// Serves until shutdown on `--concurrency` worker threads, running `tasks` alongside.
fn start_server(args: &RunArgs, proxy: Arc<Proxy>, tasks: Vec<Task>) {
    let threads = args.concurrency.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    // From a bootstrap, its static listeners serve readiness and Prometheus as Envoy would
    // (15020 is pilot-agent's own port); else the waypoint's own listeners do.
    let (ready_addr, metrics_addr, static_listeners) = match &args.bootstrap {
        Some(b) => (None, None, b.listeners.clone()),
        None => (Some(args.ready_addr), Some(args.metrics_addr), Vec::new()),
    };
    server::run(
        proxy,
        ServerOptions {
            hbone_addr: args.hbone_addr,
            ready_addr,
            admin_addr: args.admin_addr,
            metrics_addr,
            static_listeners,
            threads,
            admission: crate::inbound::admission::AdmissionLimits {
                max_connections: args.max_connections.unwrap_or_else(default_max_connections),
                max_handshakes: args.max_handshakes.max(1),
                handshake_timeout: args.tls_handshake_timeout,
            },
        },
        tasks,
    );
}

/// A certificate store holding `first`, and the sink that rotates it when new key
/// material arrives (from SDS or istiod's CA).
pub(crate) fn rotating_store(
    first: &xds::ads::sds::KeyMaterial,
) -> Result<(Arc<CertStore>, Arc<dyn xds::ads::sds::SecretSink>), hbone::tls::TlsError> {
    let certs = hbone::tls::Certs::from_pem(&first.chain, &first.key, &first.roots)?;
    let store = Arc::new(CertStore::fixed(certs));
    let rotated = store.clone();
    let sink: Arc<dyn xds::ads::sds::SecretSink> =
        Arc::new(move |m: &xds::ads::sds::KeyMaterial| {
            rotated
                .rotate(&m.chain, &m.key, &m.roots)
                .map_err(|e| e.to_string())
        });
    Ok((store, sink))
}

/// 80% of the soft open-file limit: each connection is a descriptor, and the rest are left
/// for upstream connections, files and the admin listeners.
fn default_max_connections() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let soft = if ok { limit.rlim_cur as usize } else { 1024 };
    (soft.min(1 << 24) / 5 * 4).max(64)
}

/// Our certificates: from files (watched), or from SDS (the first pair fetched before
/// starting, then streamed).
fn certificates(args: &RunArgs) -> anyhow::Result<(Arc<CertStore>, Option<Task>)> {
    if let Some(istiod) = &args.resolved {
        let (store, task) = istiod.certificates()?;
        return Ok((store, Some(task)));
    }
    if let Some(address) = &args.sds_address {
        let gateway = args
            .gateway
            .clone()
            .unwrap_or_else(|| "default/waypoint".into());
        let (ns, name) = gateway.split_once('/').unwrap_or(("default", "waypoint"));
        let client = xds::ads::sds::SdsClient {
            address: address.clone(),
            node: args.node(&NamespacedName::new(ns, name)),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let first = rt
            .block_on(client.fetch(Duration::from_secs(30)))
            .context("fetching certificates over SDS")?;
        let (store, sink) = rotating_store(&first).context("certificates from SDS")?;
        let task: Task = Box::pin(client.run(sink, Some(first)));
        return Ok((store, Some(task)));
    }
    let (Some(cert_chain), Some(key), Some(root_cert)) =
        (&args.cert_chain, &args.key, &args.root_cert)
    else {
        anyhow::bail!("--cert-chain, --key and --root-cert are required without --sds-address");
    };
    let paths = hbone::tls::CertPaths {
        cert_chain: cert_chain.clone(),
        key: key.clone(),
        root_cert: root_cert.clone(),
    };
    Ok((
        Arc::new(CertStore::load(paths).context("loading certificates")?),
        None,
    ))
}

pub(super) fn parse_interval(s: &str) -> Result<Duration, String> {
    match filters::duration::parse(s) {
        Ok(d) if d.is_zero() => Err(format!("{s:?} must be positive")),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_normalization(s: &str) -> Result<filters::authz::path::Normalization, String> {
    use filters::authz::path::Normalization;
    match s {
        "NONE" => Ok(Normalization::None),
        "BASE" | "DEFAULT" => Ok(Normalization::Base),
        "MERGE_SLASHES" => Ok(Normalization::MergeSlashes),
        "DECODE_AND_MERGE_SLASHES" => Ok(Normalization::DecodeAndMergeSlashes),
        other => Err(format!("unknown path normalization {other:?}")),
    }
}
