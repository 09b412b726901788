//! The DNS caches of the dynamic forward proxy ([`filters::forward_proxy`]): the host a
//! request names is resolved on its first use (the request waits, at most
//! [`LOOKUP_TIMEOUT`]), cached for its answer's TTL (at least [`MIN_REFRESH`]) and resolved
//! again on the first use after that; a failed lookup keeps the last addresses, as
//! Envoy's DNS cache does. Each cache holds at most its `max_hosts` names: hosts unused
//! for `host_ttl` make room, and a new host beyond the bound is refused (503 "DNS cache
//! overflow", no response flag). A name that does not resolve gives 503 `DF`.
//!
//! The lock is taken only by requests to forward-proxy ports; the mesh's ports never
//! reach this module.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};

use filters::forward_proxy::ForwardProxy;
use filters::model::{NamespacedName, Workload};
use filters::ProxyError;
use hickory_resolver::TokioResolver;
use tokio::time::Instant;

use super::dns::{LOOKUP_TIMEOUT, MIN_REFRESH};

/// One cached host.
struct Entry {
    /// The addresses it resolved to last (never empty).
    ips: Arc<[IpAddr]>,
    /// When to resolve it again.
    valid_until: Instant,
    /// When a request used it last (for `host_ttl`).
    last_used: Instant,
    /// The workload it stands for (the port's, named after the host).
    workload: Arc<Workload>,
}

/// The caches by name.
#[derive(Default)]
pub struct DynamicHosts {
    resolver: OnceLock<TokioResolver>,
    caches: Mutex<HashMap<String, HashMap<String, Entry>>>,
}

/// The process-wide caches.
pub fn hosts() -> &'static DynamicHosts {
    static HOSTS: OnceLock<DynamicHosts> = OnceLock::new();
    HOSTS.get_or_init(DynamicHosts::default)
}

/// What the cache knows of a host before any lookup.
enum Cached {
    Fresh(SocketAddr, Arc<Workload>),
    /// Missing or expired (with the stale addresses, if any).
    Stale,
}

impl DynamicHosts {
    /// Sets the resolver the caches use (the waypoint's, `--dns-server` or the system's).
    pub fn set_resolver(&self, resolver: TokioResolver) {
        let _ = self.resolver.set(resolver);
    }

    /// Forgets the caches no port names any more.
    pub fn retain(&self, names: &std::collections::BTreeSet<String>) {
        let mut caches = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        caches.retain(|name, _| names.contains(name));
    }

    /// The address to send a request for `host:port` to through `proxy`'s cache.
    pub async fn address(
        &self,
        proxy: &ForwardProxy,
        host: &str,
        port: u16,
    ) -> Result<(SocketAddr, Arc<Workload>), ProxyError> {
        let key = host.to_ascii_lowercase();
        match self.cached(proxy, &key, port)? {
            Cached::Fresh(addr, w) => return Ok((addr, w)),
            Cached::Stale => {}
        }
        let answer = self.lookup(&key).await;
        let now = Instant::now();
        let mut caches = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        let cache = caches.entry(proxy.cache.clone()).or_default();
        match answer {
            Ok((ips, valid_until)) => {
                if !cache.contains_key(&key) && cache.len() >= proxy.max_hosts {
                    return Err(overflow(proxy, host));
                }
                let workload = match cache.get(&key) {
                    Some(e) => e.workload.clone(),
                    None => named(proxy, &key),
                };
                let addr = SocketAddr::new(ips[0], port);
                cache.insert(
                    key,
                    Entry {
                        ips,
                        valid_until: valid_until.max(now + MIN_REFRESH),
                        last_used: now,
                        workload: workload.clone(),
                    },
                );
                Ok((addr, workload))
            }
            Err(reason) => match cache.get_mut(&key) {
                Some(e) => {
                    tracing::warn!(host, cache = %proxy.cache, error = %reason, "DNS lookup failed; keeping the last addresses");
                    e.valid_until = now + MIN_REFRESH;
                    e.last_used = now;
                    Ok((SocketAddr::new(e.ips[0], port), e.workload.clone()))
                }
                None => {
                    tracing::warn!(host, cache = %proxy.cache, error = %reason, "dynamic forward proxy: DNS resolution failed (503 DF)");
                    Err(ProxyError::DnsResolutionFailed(host.to_string()))
                }
            },
        }
    }

    /// The cache's answer for `key`, making room for it if it is new.
    fn cached(&self, proxy: &ForwardProxy, key: &str, port: u16) -> Result<Cached, ProxyError> {
        let now = Instant::now();
        let mut caches = self.caches.lock().unwrap_or_else(|e| e.into_inner());
        let cache = caches.entry(proxy.cache.clone()).or_default();
        if let Some(e) = cache.get_mut(key) {
            e.last_used = now;
            if e.valid_until > now {
                return Ok(Cached::Fresh(
                    SocketAddr::new(e.ips[0], port),
                    e.workload.clone(),
                ));
            }
            return Ok(Cached::Stale);
        }
        if cache.len() >= proxy.max_hosts {
            cache.retain(|_, e| now.saturating_duration_since(e.last_used) < proxy.host_ttl);
            if cache.len() >= proxy.max_hosts {
                return Err(overflow(proxy, key));
            }
        }
        Ok(Cached::Stale)
    }

    /// Resolves `name`: its addresses and until when they hold.
    async fn lookup(&self, name: &str) -> Result<(Arc<[IpAddr]>, Instant), String> {
        let Some(resolver) = self.resolver.get() else {
            return Err("no resolver configured".into());
        };
        let fqdn = format!("{name}.");
        match tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(fqdn.as_str())).await {
            Ok(Ok(answer)) => {
                let ips: Vec<IpAddr> = answer.iter().collect();
                if ips.is_empty() {
                    return Err("the answer has no address".into());
                }
                tracing::debug!(host = name, addresses = ?ips, "resolved for the forward proxy");
                Ok((ips.into(), Instant::from_std(answer.valid_until())))
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("timed out after {LOOKUP_TIMEOUT:?}")),
        }
    }
}

fn overflow(proxy: &ForwardProxy, host: &str) -> ProxyError {
    tracing::warn!(
        host,
        cache = %proxy.cache,
        max_hosts = proxy.max_hosts,
        "dynamic forward proxy: DNS cache overflow (503)"
    );
    ProxyError::DnsCacheOverflow(format!(
        "{host} (cache {} holds {} hosts)",
        proxy.cache, proxy.max_hosts
    ))
}

/// The port's workload, named after `host`.
fn named(proxy: &ForwardProxy, host: &str) -> Arc<Workload> {
    let mut w = (*proxy.workload).clone();
    w.name = NamespacedName::new(&w.name.namespace, host);
    Arc::new(w)
}
