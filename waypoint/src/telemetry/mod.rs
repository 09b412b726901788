//! Telemetry: Istio's standard metrics ([`metrics`]), access logs ([`access_log`]) and
//! OpenTelemetry traces ([`trace`]); [`request`] drives all three for one HTTP request.

pub mod access_log;
pub mod attributes;
pub mod batch;
pub mod labels;
pub mod listener_log;
pub mod metrics;
pub mod request;
pub mod trace;

/// The proxy's telemetry sinks.
pub struct Telemetry {
    /// Istio standard metrics.
    pub metrics: metrics::Metrics,
    /// The access log writer.
    pub access_log: access_log::AccessLog,
    /// The tracer.
    pub tracing: trace::Tracing,
}

impl Telemetry {
    /// Sinks reporting `cluster` as the cluster id when peers do not say, holding at most
    /// `series_limit` series per metric family; spans carry `node_id` and are exported
    /// through `proxy`'s pools.
    pub fn new(
        cluster: &str,
        node_id: &str,
        series_limit: usize,
        proxy: std::sync::Weak<crate::state::Proxy>,
    ) -> Self {
        let facts = trace::ProxyFacts {
            node_id: node_id.to_string(),
            cluster_id: cluster.to_string(),
        };
        Self {
            metrics: metrics::Metrics::new(cluster, series_limit),
            access_log: access_log::AccessLog::new(proxy.clone(), node_id),
            tracing: trace::Tracing::new(proxy, facts),
        }
    }
}
