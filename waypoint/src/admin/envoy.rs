//! Envoy's admin formats where pilot-agent and istioctl read them: the stats pilot-agent's
//! readiness probe asks for (`server.state`, `listener_manager.workers_started`, the
//! LDS/CDS update counters), `?filter=<regex>` and `?usedonly` on `/stats`, and
//! `/server_info`.

use std::sync::atomic::Ordering;

use crate::state::Proxy;

/// Envoy-named stats lines (`name: value`).
pub fn stats(proxy: &Proxy) -> Vec<String> {
    // Envoy's server.state: 0 LIVE, 1 DRAINING, 2 PRE_INITIALIZING.
    let state = if proxy.draining() {
        1
    } else if proxy.ready() {
        0
    } else {
        2
    };
    let mut out = vec![
        format!("server.state: {state}"),
        format!("server.live: {}", u8::from(proxy.ready())),
        format!(
            "listener_manager.workers_started: {}",
            u8::from(proxy.ready())
        ),
        format!(
            "server.total_connections: {}",
            proxy.stats.hbone_connections.load(Ordering::Relaxed)
        ),
    ];
    if let Some(x) = proxy.xds.get() {
        let v = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        out.extend([
            format!("listener_manager.lds.update_success: {}", v(&x.lds_updates)),
            format!(
                "listener_manager.lds.update_rejected: {}",
                v(&x.lds_rejected)
            ),
            format!("cluster_manager.cds.update_success: {}", v(&x.cds_updates)),
            format!(
                "cluster_manager.cds.update_rejected: {}",
                v(&x.cds_rejected)
            ),
            format!("cluster_manager.eds.update_success: {}", v(&x.eds_updates)),
            format!(
                "cluster_manager.eds.update_rejected: {}",
                v(&x.eds_rejected)
            ),
            format!(
                "control_plane.connected_state: {}",
                u8::from(x.connected.load(Ordering::Relaxed))
            ),
        ]);
    }
    out.into_iter().map(|l| l + "\n").collect()
}

/// Applies Envoy's `/stats` query: `filter=<regex>` keeps matching names; `usedonly` is
/// accepted (every stat listed is in use).
pub fn filter_stats(all: &str, query: &str) -> Result<String, String> {
    let mut filter = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "filter" => {
                let v = percent_decode(v);
                filter = Some(
                    regex::Regex::new(&v).map_err(|e| format!("invalid filter regex: {e}\n"))?,
                );
            }
            "usedonly" | "format" | "type" => {}
            other => return Err(format!("unsupported /stats parameter {other:?}\n")),
        }
    }
    Ok(match filter {
        None => all.to_string(),
        Some(re) => all
            .lines()
            .filter(|l| l.split(':').next().is_some_and(|name| re.is_match(name)))
            .map(|l| format!("{l}\n"))
            .collect(),
    })
}

fn percent_decode(s: &str) -> String {
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
        "node": {
            "id": proxy.config.current().waypoint().gateway.to_string(),
        },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn filters_like_pilot_agent_asks() {
        let all = "server.state: 0\nlistener_manager.workers_started: 1\ncluster_manager.cds.update_success: 3\nconfig.version: 7\n";
        let q = "usedonly&filter=%5E%28server%5C.state%7Clistener_manager%5C.workers_started%29";
        assert_eq!(
            super::filter_stats(all, q).unwrap(),
            "server.state: 0\nlistener_manager.workers_started: 1\n"
        );
        assert_eq!(super::filter_stats(all, "").unwrap(), all);
        assert!(super::filter_stats(all, "filter=(").is_err());
    }
}
