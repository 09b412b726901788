//! The resolver behind DNS upstreams ([`filters::dns`]): resolves every host name the
//! snapshot in force names, keeps the answers in the process-wide cache that endpoint
//! picking reads, and resolves each name again when its answer's TTL runs out (at most
//! once per [`MIN_REFRESH`]). A failed lookup keeps the last addresses (as Envoy's DNS
//! clusters do) and is retried after [`MIN_REFRESH`].

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use tokio::time::Instant;

use crate::state::SnapshotStore;

/// The shortest interval between two lookups of one name, whatever its TTL.
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
/// How often the snapshot is looked at for new names.
const TICK: Duration = Duration::from_millis(200);
/// The longest wait for one lookup.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the resolver could not be built.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// `/etc/resolv.conf` (or the system's configuration) could not be read (logged; the
    /// waypoint starts with a resolver that resolves nothing).
    #[error("reading the system resolver configuration: {0}")]
    System(String),
    /// The resolver could not be built.
    #[error("building the DNS resolver: {0}")]
    Build(String),
}

/// A resolver using `server` (UDP and TCP), or the system configuration
/// (`/etc/resolv.conf`) without one.
pub fn resolver(server: Option<SocketAddr>) -> Result<TokioResolver, DnsError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match server {
        None => match TokioResolver::builder(provider.clone()) {
            Ok(b) => b,
            Err(e) => {
                // Start anyway: only DNS upstreams need it, and they answer 503 UH.
                tracing::warn!(error = %DnsError::System(e.to_string()), "DNS upstreams will not resolve");
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![]),
                    provider,
                )
            }
        },
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                provider,
            )
        }
    };
    // The answers' TTLs decide when to resolve again; the resolver's own cache must not
    // outlive them.
    builder.options_mut().cache_size = 0;
    builder.build().map_err(|e| DnsError::Build(e.to_string()))
}

/// The host names the snapshot's DNS upstreams name, and the forward proxies' caches.
fn wanted(store: &SnapshotStore) -> (BTreeSet<String>, BTreeSet<String>) {
    let snapshot = store.current();
    let ports = || snapshot.services().values().flat_map(|s| s.ports.iter());
    let names = ports()
        .filter_map(|p| p.dns().map(|d| d.hostname.clone()))
        .collect();
    let caches = ports()
        .filter_map(|p| p.forward_proxy().map(|f| f.cache.clone()))
        .collect();
    (names, caches)
}

/// Keeps [`filters::dns::resolved`] up to date for the names `store`'s snapshot names.
pub async fn run(store: Arc<SnapshotStore>, resolver: TokioResolver) {
    let resolver = Arc::new(resolver);
    let mut due: HashMap<String, Instant> = HashMap::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    loop {
        let (names, caches) = wanted(&store);
        super::forward_proxy::hosts().retain(&caches);
        due.retain(|h, _| names.contains(h));
        filters::dns::resolved().retain(&names);
        let now = Instant::now();
        for name in &names {
            if due.get(name).is_some_and(|at| *at > now) {
                continue;
            }
            // In flight: not due again until the lookup reports.
            due.insert(name.clone(), now + LOOKUP_TIMEOUT + MIN_REFRESH);
            let (resolver, tx, name) = (resolver.clone(), tx.clone(), name.clone());
            tokio::spawn(async move {
                let next = lookup(&resolver, &name).await;
                let _ = tx.send((name, next));
            });
        }
        let wait = tokio::time::sleep(TICK);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                Some((name, next)) = rx.recv() => {
                    due.insert(name, next);
                }
            }
        }
    }
}

/// Resolves `name` into the cache; returns when to resolve it again.
async fn lookup(resolver: &TokioResolver, name: &str) -> Instant {
    let fqdn = format!("{name}.");
    match tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(fqdn.as_str())).await {
        Ok(Ok(answer)) => {
            let ips: Vec<_> = answer.iter().collect();
            let until = Instant::from_std(answer.valid_until());
            tracing::debug!(host = name, addresses = ?ips, "resolved");
            if ips.is_empty() {
                tracing::warn!(host = name, "DNS answer without addresses");
            } else {
                filters::dns::resolved().set(name, ips);
            }
            until.max(Instant::now() + MIN_REFRESH)
        }
        Ok(Err(e)) => {
            tracing::warn!(host = name, error = %e, "DNS lookup failed; keeping the last addresses");
            Instant::now() + MIN_REFRESH
        }
        Err(_) => {
            tracing::warn!(
                host = name,
                "DNS lookup timed out; keeping the last addresses"
            );
            Instant::now() + MIN_REFRESH
        }
    }
}
