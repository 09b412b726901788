//! Envoy's admin formats where pilot-agent and istioctl read them: the stats pilot-agent's
//! readiness probe asks for (`server.state`, `listener_manager.workers_started`, the
//! LDS/CDS update counters), `?filter=<regex>` and `?usedonly` on `/stats`, and
//! `/server_info`.

use std::sync::atomic::Ordering;

use crate::state::Proxy;

/// One stat: its name, its value, and whether it was ever set (what Envoy's `usedonly`
/// keeps: a counter once incremented, a gauge once set).
#[derive(Debug, Clone, PartialEq)]
pub struct Stat {
    /// The name (`server.state`).
    pub name: String,
    /// The value.
    pub value: u64,
    /// Whether it was ever set.
    pub used: bool,
}

impl Stat {
    /// A gauge that is always set.
    pub fn gauge(name: impl Into<String>, value: u64) -> Self {
        Self {
            name: name.into(),
            value,
            used: true,
        }
    }

    /// A counter: used once incremented.
    pub fn counter(name: impl Into<String>, value: u64) -> Self {
        Self {
            name: name.into(),
            value,
            used: value > 0,
        }
    }
}

/// Envoy's stat name of a listener bound to `addr` (`0.0.0.0_15008`, `[__]_15008`).
pub fn listener_stat_name(addr: std::net::SocketAddr) -> String {
    addr.to_string().replace(':', "_")
}

/// Envoy-named stats: the ones pilot-agent's readiness probe asks for (`server.state`,
/// `listener_manager.workers_started`, the LDS/CDS update counters) and the HBONE
/// listener's `downstream_cx_active` (pilot-agent's `EXIT_ON_ZERO_ACTIVE_CONNECTIONS`).
pub fn stats(proxy: &Proxy) -> Vec<Stat> {
    // Envoy's server.state: 0 LIVE, 1 DRAINING, 2 PRE_INITIALIZING.
    let state = if proxy.draining() {
        1
    } else if proxy.ready() {
        0
    } else {
        2
    };
    let ready = u64::from(proxy.ready());
    let accepted = proxy.stats.hbone_accepted.load(Ordering::Relaxed);
    let active = proxy.stats.hbone_connections.load(Ordering::Relaxed) as u64;
    let listener = listener_stat_name(proxy.options.hbone_addr);
    let mut out = vec![
        Stat::gauge("server.state", state),
        Stat::gauge("server.live", ready),
        // Envoy sets it when the workers start, once the initial configuration is in.
        Stat {
            name: "listener_manager.workers_started".into(),
            value: ready,
            used: ready == 1,
        },
        Stat::gauge("server.total_connections", active),
        Stat {
            name: format!("listener.{listener}.downstream_cx_active"),
            value: active,
            used: accepted > 0,
        },
        Stat::counter(format!("listener.{listener}.downstream_cx_total"), accepted),
        Stat::counter(
            format!("listener.{listener}.downstream_cx_overflow"),
            proxy.stats.connections_shed.load(Ordering::Relaxed),
        ),
        Stat::counter(
            format!("listener.{listener}.downstream_cx_max_duration_reached"),
            proxy.stats.connections_aged_out.load(Ordering::Relaxed),
        ),
    ];
    if let Some(x) = proxy.xds.get() {
        let v = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        out.extend([
            Stat::counter("listener_manager.lds.update_success", v(&x.lds_updates)),
            Stat::counter("listener_manager.lds.update_rejected", v(&x.lds_rejected)),
            Stat::counter("cluster_manager.cds.update_success", v(&x.cds_updates)),
            Stat::counter("cluster_manager.cds.update_rejected", v(&x.cds_rejected)),
            Stat::counter("cluster_manager.eds.update_success", v(&x.eds_updates)),
            Stat::counter("cluster_manager.eds.update_rejected", v(&x.eds_rejected)),
            Stat::gauge(
                "control_plane.connected_state",
                u64::from(x.connected.load(Ordering::Relaxed)),
            ),
        ]);
    }
    out
}

/// Applies Envoy's `/stats` query to `all`: `filter=<regex>` keeps the names the RE2-style
/// regex finds a match in (a search, not anchored), `usedonly` keeps stats ever set; the
/// lines are `name: value`, sorted by name.
pub fn filter_stats(all: &[Stat], query: &str) -> Result<String, String> {
    let mut filter = None;
    let mut used_only = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "filter" => {
                let v = percent_decode(v);
                filter = Some(
                    regex::Regex::new(&v).map_err(|e| format!("invalid filter regex: {e}\n"))?,
                );
            }
            "usedonly" => used_only = true,
            "format" | "type" => {}
            other => return Err(format!("unsupported /stats parameter {other:?}\n")),
        }
    }
    let mut kept: Vec<&Stat> = all
        .iter()
        .filter(|s| !used_only || s.used)
        .filter(|s| filter.as_ref().is_none_or(|re| re.is_match(&s.name)))
        .collect();
    kept.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(kept
        .into_iter()
        .map(|s| format!("{}: {}\n", s.name, s.value))
        .collect())
}

pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 3 <= bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b == b'+' { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `/server_info`, in Envoy's JSON shape (the fields istioctl and pilot-agent read).
pub fn server_info(proxy: &Proxy) -> String {
    let state = if proxy.ready() {
        "LIVE"
    } else {
        "PRE_INITIALIZING"
    };
    serde_json::json!({
        "version": format!("waypoint/{}", env!("CARGO_PKG_VERSION")),
        "state": state,
        "hot_restart_version": "disabled",
        "command_line_options": {
            "concurrency": 0,
            "drain_time": format!("{}s", proxy.options.drain_timeout.as_secs()),
        },
        // The bootstrap's node as Envoy prints it, else the Gateway's name.
        "node": proxy
            .node
            .get()
            .and_then(|n| xds::envoy::to_json("envoy.config.core.v3.Node", n).ok())
            .unwrap_or_else(|| serde_json::json!({
                "id": proxy.config.current().waypoint().gateway.to_string(),
            })),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::{filter_stats, Stat};

    #[test]
    fn filters_like_pilot_agent_asks() {
        let all = [
            Stat::gauge("server.state", 0),
            Stat::gauge("listener_manager.workers_started", 1),
            Stat::counter("cluster_manager.cds.update_success", 3),
            Stat::counter("cluster_manager.cds.update_rejected", 0),
            Stat::gauge("config.version", 7),
            Stat::gauge("listener.0.0.0.0_15008.downstream_cx_active", 2),
        ];
        // pilot-agent sends the regex unencoded; percent-encoded works too.
        for q in [
            "usedonly&filter=^(server\\.state|listener_manager\\.workers_started)",
            "usedonly&filter=%5E%28server%5C.state%7Clistener_manager%5C.workers_started%29",
        ] {
            assert_eq!(
                filter_stats(&all, q).unwrap(),
                "listener_manager.workers_started: 1\nserver.state: 0\n"
            );
        }
        let updates = "filter=^(cluster_manager\\.cds|listener_manager\\.lds)\\.(update_success|update_rejected)$";
        assert_eq!(
            filter_stats(&all, updates).unwrap(),
            "cluster_manager.cds.update_rejected: 0\ncluster_manager.cds.update_success: 3\n"
        );
        assert_eq!(
            filter_stats(&all, &format!("usedonly&{updates}")).unwrap(),
            "cluster_manager.cds.update_success: 3\n",
            "a counter never incremented is not used"
        );
        // A search, not a full match.
        assert_eq!(
            filter_stats(&all, "usedonly&filter=downstream_cx_active$").unwrap(),
            "listener.0.0.0.0_15008.downstream_cx_active: 2\n"
        );
        assert_eq!(filter_stats(&all, "").unwrap().lines().count(), all.len());
        assert!(filter_stats(&all, "filter=(").is_err());
    }
}
