//! The dynamic forward proxy: a Service port whose upstream host is not configured but
//! named by each request (a ServiceEntry with a wildcard host and `resolution:
//! DYNAMIC_DNS`; over xDS, istiod's `envoy.clusters.dynamic_forward_proxy` cluster with the
//! `envoy.filters.http.dynamic_forward_proxy` HTTP filter).
//!
//! The host comes from the request's `Host` / `:authority` and must fall under the
//! wildcard (else the request matches no route: 404 `NR`, as the virtual host's domains
//! make Envoy answer); the port is the authority's, else 80, or 443 when the port
//! originates TLS (Envoy's default for the filter). Resolving and caching the names is the
//! binary's job (a bounded cache, `max_hosts`); this module holds the pure part.

use std::sync::Arc;
use std::time::Duration;

use crate::model::Workload;

/// Envoy's default `max_hosts` of a DNS cache.
pub const DEFAULT_MAX_HOSTS: usize = 1024;
/// Envoy's default `host_ttl`: a host unused this long may be evicted.
pub const DEFAULT_HOST_TTL: Duration = Duration::from_secs(300);

/// A Service port forwarding to the host each request names.
#[derive(Debug, serde::Serialize)]
pub struct ForwardProxy {
    /// The DNS cache this port resolves through (istiod's `<host>_dfp_dns_cache`, or the
    /// ServiceEntry host locally); ports naming the same cache share it.
    pub cache: String,
    /// The wildcard host the request's host must fall under (`*.example.test`); `None`
    /// over xDS, where the virtual host's domains restrict the hosts as Envoy's do.
    pub wildcard: Option<String>,
    /// The most hosts the cache holds (`max_hosts`); a new host beyond it is refused
    /// (503 "DNS cache overflow", no response flag, as Envoy).
    pub max_hosts: usize,
    /// How long an unused host stays cached (`host_ttl`).
    pub host_ttl: Duration,
    /// The workload the resolved addresses stand for (not a mesh pod: plain TCP); its name
    /// is replaced by the host per request.
    #[serde(skip)]
    pub workload: Arc<Workload>,
}

impl ForwardProxy {
    /// Whether `host` (no port, any case) falls under the wildcard: `*.example.test` takes
    /// `a.example.test` and `a.b.example.test`, not `example.test`.
    pub fn covers(&self, host: &str) -> bool {
        let Some(wildcard) = &self.wildcard else {
            return true;
        };
        match wildcard.strip_prefix('*') {
            Some(suffix) => {
                host.len() > suffix.len()
                    && host.as_bytes()[host.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
            None => host.eq_ignore_ascii_case(wildcard),
        }
    }

    /// The host and port a request with authority `authority` goes to; `None` when it
    /// names no host under the wildcard. `tls`: the port originates TLS (default 443).
    pub fn target<'a>(&self, authority: &'a str, tls: bool) -> Option<(&'a str, u16)> {
        let (host, port) = split_authority(authority)?;
        let host = host.trim_end_matches('.');
        if host.is_empty() || !self.covers(host) {
            return None;
        }
        let port = port.unwrap_or(if tls { 443 } else { 80 });
        Some((host, port))
    }
}

/// `host[:port]` into its parts; `None` for an IP literal in brackets or a bad port.
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    if authority.starts_with('[') {
        return None;
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h, Some(p.parse().ok().filter(|p| *p > 0)?))),
        None => Some((authority, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Identity, NamespacedName};

    fn proxy(wildcard: &str) -> ForwardProxy {
        ForwardProxy {
            cache: wildcard.into(),
            wildcard: Some(wildcard.into()),
            max_hosts: DEFAULT_MAX_HOSTS,
            host_ttl: DEFAULT_HOST_TTL,
            workload: Arc::new(Workload {
                name: NamespacedName::new("egress", wildcard),
                ips: vec![],
                identity: Identity::new("cluster.local", "egress", "default"),
                labels: Default::default(),
                hbone: false,
                served: false,
                named_ports: Default::default(),
            }),
        }
    }

    #[test]
    fn the_host_must_fall_under_the_wildcard() {
        let p = proxy("*.example.test");
        assert_eq!(
            p.target("a.example.test", false),
            Some(("a.example.test", 80))
        );
        assert_eq!(
            p.target("A.Example.Test:8443", false),
            Some(("A.Example.Test", 8443))
        );
        assert_eq!(
            p.target("a.b.example.test", true),
            Some(("a.b.example.test", 443))
        );
        assert_eq!(
            p.target("a.example.test.", false),
            Some(("a.example.test", 80))
        );
        for bad in [
            "example.test",
            ".example.test",
            "a.example.org",
            "xexample.test",
            "a.example.test:0",
            "a.example.test:x",
            "[::1]:80",
            "",
        ] {
            assert_eq!(p.target(bad, false), None, "{bad}");
        }
    }
}
