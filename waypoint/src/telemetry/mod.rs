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
    /// Sinks reporting `cluster` as the cluster id when peers do not say.
    pub fn new(cluster: &str) -> Self {
        Self {
            metrics: metrics::Metrics::new(cluster, metrics::DEFAULT_SERIES_LIMIT),
            access_log: Default::default(),
            tracing: Default::default(),
        }
    }
}
