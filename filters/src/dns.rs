//! Upstreams named by a DNS host name (a ServiceEntry with `resolution: DNS` or
//! `DNS_ROUND_ROBIN` whose endpoint is a name, or that has no endpoints: its host).
//!
//! Resolved addresses change without any configuration change, so they live outside the
//! immutable [`crate::Snapshot`]: in the process-wide [`resolved`] cache, keyed by host
//! name, which the binary's resolver keeps fresh (honouring the answers' TTLs) and
//! [`crate::balance::pick`] reads when it picks the endpoint of a port with a
//! [`DnsTarget`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use crate::model::Workload;

/// A Service port's upstream named by a host name.
#[derive(Debug, serde::Serialize)]
pub struct DnsTarget {
    /// The name resolved (without a trailing dot).
    pub hostname: String,
    /// The port connected to on every resolved address.
    pub port: u16,
    /// LOGICAL_DNS (`DNS_ROUND_ROBIN`): the first address only; else STRICT_DNS (`DNS`):
    /// every address, taken in turn.
    pub logical: bool,
    /// The workload the resolved addresses stand for (not a mesh pod: plain TCP).
    #[serde(skip)]
    pub workload: Arc<Workload>,
    #[serde(skip)]
    next: AtomicUsize,
}

impl DnsTarget {
    /// A target for `hostname:port`, standing for `workload`.
    pub fn new(hostname: &str, port: u16, logical: bool, workload: Workload) -> Self {
        Self {
            hostname: hostname.trim_end_matches('.').to_string(),
            port,
            logical,
            workload: Arc::new(workload),
            next: AtomicUsize::new(0),
        }
    }

    /// The address to connect to now, from the [`resolved`] cache; `None` while the name
    /// has no address (not resolved yet, or it does not resolve).
    pub fn pick(&self) -> Option<SocketAddr> {
        let ips = resolved().get(&self.hostname)?;
        let i = if self.logical {
            0
        } else {
            self.next.fetch_add(1, Ordering::Relaxed) % ips.len()
        };
        Some(SocketAddr::new(ips[i], self.port))
    }
}

/// Resolved addresses by host name.
#[derive(Debug, Default)]
pub struct Resolved {
    by_host: RwLock<HashMap<String, Arc<[IpAddr]>>>,
}

impl Resolved {
    /// The addresses `host` resolved to last; `None` if none.
    pub fn get(&self, host: &str) -> Option<Arc<[IpAddr]>> {
        let map = self.by_host.read().unwrap_or_else(|e| e.into_inner());
        map.get(host).filter(|ips| !ips.is_empty()).cloned()
    }

    /// Records the addresses `host` resolves to (none removes it).
    pub fn set(&self, host: &str, ips: Vec<IpAddr>) {
        let mut map = self.by_host.write().unwrap_or_else(|e| e.into_inner());
        if ips.is_empty() {
            map.remove(host);
        } else {
            map.insert(host.to_string(), ips.into());
        }
    }

    /// Forgets every host not in `keep`.
    pub fn retain(&self, keep: &std::collections::BTreeSet<String>) {
        let mut map = self.by_host.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|h, _| keep.contains(h));
    }
}

/// The process-wide cache of resolved addresses.
pub fn resolved() -> &'static Resolved {
    static CACHE: OnceLock<Resolved> = OnceLock::new();
    CACHE.get_or_init(Resolved::default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Identity, NamespacedName};

    fn target(host: &str, logical: bool) -> DnsTarget {
        let w = Workload {
            name: NamespacedName::new("egress", host),
            ips: vec![],
            identity: Identity::new("cluster.local", "egress", "default"),
            labels: Default::default(),
            hbone: false,
            served: false,
            named_ports: Default::default(),
        };
        DnsTarget::new(host, 8080, logical, w)
    }

    #[test]
    fn strict_takes_every_address_in_turn_and_logical_the_first() {
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.7".parse().unwrap(), "127.0.0.8".parse().unwrap());
        let strict = target("strict.test", false);
        assert_eq!(strict.pick(), None, "not resolved yet");
        resolved().set("strict.test", vec![a, b]);
        let picks: Vec<_> = (0..4).map(|_| strict.pick().unwrap().ip()).collect();
        assert_eq!(picks, [a, b, a, b]);
        resolved().set("logical.test", vec![a, b]);
        let logical = target("logical.test.", true);
        assert!((0..3).all(|_| logical.pick() == Some(SocketAddr::new(a, 8080))));
        resolved().set("strict.test", vec![]);
        assert_eq!(strict.pick(), None);
    }
}
