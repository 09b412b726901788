//! Telemetry: Istio's standard metrics ([`metrics`]), access logs ([`access_log`]) and
//! OpenTelemetry traces ([`trace`]); [`request`] drives all three for one HTTP request.

pub mod access_log;
pub mod labels;
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
    /// `series_limit` series per metric family.
    pub fn new(cluster: &str, series_limit: usize) -> Self {
        Self {
            metrics: metrics::Metrics::new(cluster, series_limit),
            access_log: Default::default(),
            tracing: Default::default(),
        }
    }
}
