//! `/stats/prometheus`: Istio's standard metrics plus the proxy's own health metrics.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use filters::Snapshot;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use crate::state::Proxy;
use crate::telemetry::metrics::prometheus::{family, labels, sample, CONTENT_TYPE};

/// The metrics listener (`--metrics-addr`, 15020 by default).
pub struct Metrics {
    proxy: Arc<Proxy>,
}

impl Metrics {
    /// Metrics over the shared state.
    pub fn new(proxy: Arc<Proxy>) -> Self {
        Self { proxy }
    }
}

#[async_trait]
impl ServeHttp for Metrics {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let uri = &session.req_header().uri;
        match uri.path() {
            "/stats/prometheus" | "/metrics" => response(&self.proxy, uri.query().unwrap_or("")),
            _ => super::text(StatusCode::NOT_FOUND, "not found\n", "text/plain"),
        }
    }
}

/// The Prometheus page; with `filter=<regex>` in `query` (as Envoy's admin takes it), only
/// the metrics whose names match.
pub fn response(proxy: &Proxy, query: &str) -> Response<Vec<u8>> {
    let filter = query
        .split('&')
        .find_map(|p| p.strip_prefix("filter="))
        .map(|f| regex::Regex::new(&super::envoy::percent_decode(f)));
    match filter {
        None => super::text(StatusCode::OK, render(proxy), CONTENT_TYPE),
        Some(Ok(re)) => super::text(StatusCode::OK, filtered(&render(proxy), &re), CONTENT_TYPE),
        Some(Err(e)) => super::text(
            StatusCode::BAD_REQUEST,
            format!("invalid filter regex: {e}\n"),
            "text/plain",
        ),
    }
}

/// The lines of `page` (samples and their `# HELP`/`# TYPE`) of metrics whose names match.
fn filtered(page: &str, re: &regex::Regex) -> String {
    let name = |line: &str| -> String {
        match line.strip_prefix("# ") {
            Some(comment) => comment.split(' ').nth(1).unwrap_or_default().to_string(),
            None => line
                .split(['{', ' '])
                .next()
                .unwrap_or_default()
                .to_string(),
        }
    };
    page.lines()
        .filter(|l| re.is_match(&name(l)))
        .flat_map(|l| [l, "\n"])
        .collect()
}

/// Renders every metric family.
pub fn render(proxy: &Proxy) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let snapshot = proxy.config.current();
    proxy
        .telemetry
        .metrics
        .render(&mut out, &snapshot.telemetry().metric_overrides);
    render_gauges(&mut out, proxy, &snapshot);
    render_counters(&mut out, proxy);
    render_authz_decisions(&mut out);
    render_authz_policies(&mut out, &snapshot);
    out
}

/// The proxy's health gauges (connections, tunnels, in-flight requests, config version).
fn render_gauges(out: &mut String, proxy: &Proxy, snapshot: &Snapshot) {
    let t = &proxy.telemetry;
    let s = &proxy.stats;
    let u = &proxy.upstream;
    let gauges = [
        (
            "waypoint_hbone_connections",
            "Downstream HBONE connections open.",
            s.hbone_connections.load(Ordering::Relaxed) as u64,
        ),
        (
            "waypoint_hbone_tunnels",
            "Downstream CONNECT tunnels open.",
            s.tunnels.load(Ordering::Relaxed) as u64,
        ),
        (
            "waypoint_requests_in_flight",
            "HTTP requests in flight.",
            s.requests_in_flight.load(Ordering::Relaxed) as u64,
        ),
        (
            "waypoint_upstream_hbone_connections",
            "Pooled upstream HBONE connections.",
            u.hbone.open_connections() as u64,
        ),
        (
            "waypoint_config_version",
            "Version of the configuration in force.",
            snapshot.version(),
        ),
        (
            "waypoint_metrics_series",
            "Istio metric series held.",
            t.metrics.series() as u64,
        ),
    ];
    for (name, help, v) in gauges {
        family(out, name, "gauge", help);
        sample(out, name, "", v);
    }
    // Peers rebalancing by load recognize this replica by its id.
    let info = crate::inbound::rebalance::INSTANCE_INFO;
    family(
        out,
        info,
        "gauge",
        "This process's instance id (load rebalancing).",
    );
    let mut l = String::new();
    labels(
        &mut l,
        &[("instance", crate::inbound::rebalance::instance_id())],
    );
    sample(out, info, &l, 1);
}

/// The proxy's health counters (requests, upstream connects, config, logs, spans).
fn render_counters(out: &mut String, proxy: &Proxy) {
    let t = &proxy.telemetry;
    let s = &proxy.stats;
    let u = &proxy.upstream;
    let (logged, log_dropped) = t.access_log.counts();
    let counters = [
        (
            "waypoint_requests_total",
            "HTTP requests completed.",
            s.requests_total.load(Ordering::Relaxed),
        ),
        (
            "waypoint_upstream_hbone_handshakes_total",
            "Upstream HBONE TLS handshakes.",
            u.hbone.handshakes(),
        ),
        (
            "waypoint_upstream_http_connects_total",
            "Upstream HTTP connections opened.",
            u.http.connects(),
        ),
        (
            "waypoint_hbone_connections_rebalanced_total",
            "Downstream HBONE connections sent GOAWAY to rebalance load.",
            proxy.connections.shed.load(Ordering::Relaxed),
        ),
        (
            "waypoint_config_rejected_total",
            "Configurations rejected.",
            proxy.config.rejected(),
        ),
        (
            "waypoint_metrics_series_overflow_total",
            "Samples not recorded: their series would exceed the cap.",
            t.metrics.overflow(),
        ),
        (
            "waypoint_access_log_lines_total",
            "Access log lines written.",
            logged,
        ),
        (
            "waypoint_access_log_dropped_total",
            "Access log lines dropped (stdout blocked).",
            log_dropped,
        ),
        (
            "waypoint_spans_exported_total",
            "Spans accepted by the collector.",
            t.tracing.stats.exported.load(Ordering::Relaxed),
        ),
        (
            "waypoint_spans_dropped_total",
            "Spans dropped (queue full, export failed or timed out).",
            t.tracing.stats.dropped.load(Ordering::Relaxed),
        ),
        (
            "waypoint_span_export_failures_total",
            "Span export calls that failed.",
            t.tracing.stats.failed_exports.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, v) in counters {
        family(out, name, "counter", help);
        sample(out, name, "", v);
    }
    if let Some(n) = crate::alloc::allocations() {
        let name = "waypoint_allocations_total";
        family(
            out,
            name,
            "counter",
            "Heap allocations (counted by the measuring tools' allocator).",
        );
        sample(out, name, "", n);
    }
}

/// `waypoint_authz_decisions_total`, by decision.
fn render_authz_decisions(out: &mut String) {
    family(
        out,
        "waypoint_authz_decisions_total",
        "counter",
        "Authorization decisions.",
    );
    for (decision, v) in [
        (
            "allow",
            filters::authz::DECISIONS.allowed.load(Ordering::Relaxed),
        ),
        (
            "deny",
            filters::authz::DECISIONS.denied.load(Ordering::Relaxed),
        ),
    ] {
        let mut l = String::new();
        labels(&mut l, &[("decision", decision)]);
        sample(out, "waypoint_authz_decisions_total", &l, v);
    }
}

/// `waypoint_authz_policy_matched_total`, per policy in `snapshot`.
fn render_authz_policies(out: &mut String, snapshot: &Snapshot) {
    family(
        out,
        "waypoint_authz_policy_matched_total",
        "counter",
        "Requests each authorization policy matched.",
    );
    for p in snapshot.authz().all() {
        let mut l = String::new();
        labels(&mut l, &[("policy", &p.name.to_string())]);
        sample(
            out,
            "waypoint_authz_policy_matched_total",
            &l,
            p.matched.load(Ordering::Relaxed),
        );
    }
}
