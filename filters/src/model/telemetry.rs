//! Telemetry settings: access logs and tracing, as MeshConfig and `Telemetry` resources (or
//! the HTTP connection manager's configuration over xDS) describe them.

use serde::Serialize;

/// Telemetry settings in force for this waypoint.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TelemetryConfig {
    /// Access logging; `None` is off (the default).
    pub access_log: Option<AccessLogConfig>,
    /// Tracing; `None` is off.
    pub tracing: Option<TracingConfig>,
    /// `istio.mesh_id` reported in spans.
    pub mesh_id: String,
    /// Changes to Istio's standard metrics (Telemetry `metrics.overrides`), in order.
    pub metric_overrides: Vec<MetricOverride>,
}

/// A change to Istio's standard metrics: labels removed from, or the dropping of, one
/// metric or all of them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct MetricOverride {
    /// The metric, as Istio names it without its `istio_` prefix (`requests_total`,
    /// `request_duration_milliseconds`, `tcp_sent_bytes_total`...); `None` for every one.
    pub metric: Option<String>,
    /// Labels removed (series that differ only in them are added together).
    pub tags_to_remove: Vec<String>,
    /// Not reported at all.
    pub drop: bool,
}

impl MetricOverride {
    /// Whether this override applies to the metric family `family` (`istio_requests_total`).
    pub fn applies_to(&self, family: &str) -> bool {
        match &self.metric {
            None => true,
            Some(m) => family.strip_prefix("istio_") == Some(m.as_str()),
        }
    }
}

/// How access log lines are written (always to stdout).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum AccessLogConfig {
    /// Envoy's text format; `None` is Istio's default format string.
    Text(Option<String>),
    /// JSON; `None` is Istio's default JSON keys, else `key -> Envoy format string`.
    Json(Option<Vec<(String, String)>>),
}

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TracingConfig {
    /// The MeshConfig provider name.
    pub provider: String,
    /// The collector's Service hostname (optionally `ns/hostname`), IP literal or DNS name,
    /// reached as `upstream::dial` says: its endpoints when the snapshot has the Service.
    pub service: String,
    /// The collector's port.
    pub port: u16,
    /// Over xDS, the `outbound|<port>||<host>` cluster istiod named for the collector: only
    /// the snapshot's Service `service` is reached then (no DNS). `None` from MeshConfig.
    pub cluster: Option<String>,
    /// The resource's `service.name` (Envoy's `OpenTelemetryConfig.service_name`); `None`
    /// is the proxy's service cluster, `<gateway>.<namespace>`, which istiod writes there.
    pub service_name: Option<String>,
    /// gRPC (`opentelemetry.proto.collector.trace.v1.TraceService/Export`) or HTTP.
    pub protocol: OtlpProtocol,
    /// Export timeout.
    pub timeout: std::time::Duration,
    /// Percentage (0 to 100) of requests without a sampling decision that are traced.
    pub sampling_percentage: f64,
    /// Extra span attributes.
    pub custom_tags: Vec<(String, CustomTag)>,
    /// Longest attribute value; longer values are truncated.
    pub max_tag_length: usize,
}

impl TracingConfig {
    /// The collector as `host:port`, for logs.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.service, self.port)
    }
}

/// The OTLP transport.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum OtlpProtocol {
    /// OTLP/gRPC.
    Grpc {
        /// Metadata sent with each export.
        metadata: Vec<(String, String)>,
    },
    /// OTLP/HTTP (protobuf) to `path`.
    Http {
        /// The request path, `/v1/traces` by default.
        path: String,
        /// Headers sent with each export.
        headers: Vec<(String, String)>,
    },
}

/// A custom span attribute's value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum CustomTag {
    /// A fixed value.
    Literal(String),
    /// An environment variable of the proxy, with a default.
    Environment {
        /// Variable name.
        name: String,
        /// Used when it is unset.
        default: Option<String>,
    },
    /// A request header, with a default.
    Header {
        /// Header name.
        name: String,
        /// Used when the header is absent.
        default: Option<String>,
    },
}
