//! Telemetry settings: access logs and tracing, as MeshConfig and `Telemetry` resources (or
//! the HTTP connection manager's configuration over xDS) describe them.

use serde::Serialize;

use crate::cel::Expression;

/// Telemetry settings in force for this waypoint.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TelemetryConfig {
    /// Access logs, each written for every request its filter lets through; empty is off
    /// (the default).
    pub access_logs: Vec<AccessLog>,
    /// Access logs of TCP tunnels (the TCP proxy's `access_log`; from a Telemetry, the
    /// same as HTTP's, as istiod gives both).
    pub tcp_access_logs: Vec<AccessLog>,
    /// Service ports whose chain has access logs other than the two above (a Telemetry
    /// targeting the Service), sorted by namespace, name and port.
    pub service_access_logs: Vec<ServiceAccessLogs>,
    /// Tracing; `None` is off.
    pub tracing: Option<TracingConfig>,
    /// `istio.mesh_id` reported in spans.
    pub mesh_id: String,
    /// Changes to Istio's standard metrics (Telemetry `metrics.overrides`), in order.
    pub metric_overrides: Vec<MetricOverride>,
    /// Service ports whose chain's `istio.stats` overrides differ from `metric_overrides`
    /// (a Telemetry targeting the Service), sorted by namespace, name and port.
    pub service_metric_overrides: Vec<ServiceMetricOverrides>,
    /// The access logs istiod puts on the waypoint's built-in listeners.
    pub listener_logs: ListenerLogs,
}

/// The access logs of istiod's built-in waypoint listeners (`accesslog.go`), which record
/// connection-level events rather than requests. Each keeps what its own filter lets
/// through (istiod's are status >= 400, `UF` and `NR`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ListenerLogs {
    /// `connect_terminate`'s connection manager: CONNECT requests the HBONE listener
    /// refuses.
    pub connect_terminate: Vec<AccessLog>,
    /// `connect_originate`'s TCP proxy: HBONE tunnels towards pods that cannot be opened.
    pub connect_originate: Vec<AccessLog>,
    /// `main_internal`'s listener: tunnels to an address no filter chain serves.
    pub no_chain: Vec<AccessLog>,
}

/// The access logs of one Service port's chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceAccessLogs {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The port.
    pub port: u16,
    /// Its access logs (HTTP or TCP, as the port's chain is).
    pub logs: Vec<AccessLog>,
}

/// The metric overrides of one Service port's chain: shared, so that the series of its
/// requests carry them (compared by identity).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceMetricOverrides {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The port.
    pub port: u16,
    /// Its overrides.
    pub overrides: OverrideSet,
}

/// A shared list of metric overrides: equal by content, hashed and compared by identity
/// where it keys metric series.
#[derive(Debug, Clone, Default)]
pub struct OverrideSet(pub std::sync::Arc<Vec<MetricOverride>>);

impl PartialEq for OverrideSet {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl Serialize for OverrideSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// Finds the entry of `target`'s Service port in a list sorted by namespace, name, port.
fn for_port<'a, T>(
    list: &'a [T],
    key: impl Fn(&T) -> (&str, &str, u16),
    target: &crate::model::Target,
) -> Option<&'a T> {
    let crate::model::Target::Service { service, port } = target else {
        return None;
    };
    if list.is_empty() {
        return None;
    }
    let want = (
        service.name.namespace.as_str(),
        service.name.name.as_str(),
        *port,
    );
    list.binary_search_by(|e| key(e).cmp(&want))
        .ok()
        .map(|i| &list[i])
}

impl TelemetryConfig {
    /// The metric overrides of requests to `target`: its Service port's own (`Some`), else
    /// the waypoint's.
    pub fn metric_overrides_for(
        &self,
        target: &crate::model::Target,
    ) -> (&[MetricOverride], Option<&OverrideSet>) {
        match for_port(
            &self.service_metric_overrides,
            |e| (e.namespace.as_str(), e.name.as_str(), e.port),
            target,
        ) {
            Some(e) => (&e.overrides.0, Some(&e.overrides)),
            None => (&self.metric_overrides, None),
        }
    }

    /// The access logs of requests (or, with `tcp`, TCP tunnels) to `target`: its Service
    /// port's own, else the waypoint's.
    pub fn access_logs_for(&self, target: &crate::model::Target, tcp: bool) -> &[AccessLog] {
        if let Some(e) = for_port(
            &self.service_access_logs,
            |e| (e.namespace.as_str(), e.name.as_str(), e.port),
            target,
        ) {
            return &e.logs;
        }
        if tcp {
            &self.tcp_access_logs
        } else {
            &self.access_logs
        }
    }

    /// Whether any metric override (the waypoint's or a Service port's) adds or rewrites
    /// labels from request attributes.
    pub fn has_dimensions(&self) -> bool {
        let any = |list: &[MetricOverride]| list.iter().any(|o| !o.dimensions.is_empty());
        any(&self.metric_overrides)
            || self
                .service_metric_overrides
                .iter()
                .any(|e| any(&e.overrides.0))
    }
}

/// A change to Istio's standard metrics: labels removed from, added to or rewritten in,
/// or the dropping of, one metric or all of them (the `istio.stats` filter's
/// `MetricConfig`).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct MetricOverride {
    /// The metric, as Istio names it without its `istio_` prefix (`requests_total`,
    /// `request_duration_milliseconds`, `tcp_sent_bytes_total`...); `None` for every one.
    pub metric: Option<String>,
    /// Labels removed (series that differ only in them are added together).
    pub tags_to_remove: Vec<String>,
    /// Labels whose value is a CEL expression over the request's attributes, in name
    /// order: a standard label's value is replaced, another label is added. A value that
    /// cannot be computed for a request (a missing header) is `unknown`, as in Istio.
    pub dimensions: Vec<(String, Expression)>,
    /// When set, the dimensions apply only to requests for which it is true; for the
    /// others a rewritten standard label keeps its value and an added one is empty.
    pub when: Option<Expression>,
    /// Not reported at all.
    pub drop: bool,
}

/// Whether `name` can be a Prometheus label name (`[a-zA-Z_][a-zA-Z0-9_]*`).
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
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

/// One access log: where lines go, and which requests are logged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessLog {
    /// Where and how.
    pub sink: AccessLogSink,
    /// Only requests it lets through are logged; `None` logs every request.
    pub filter: Option<LogFilter>,
}

impl AccessLog {
    /// Every request, as lines in `format` on the proxy's stdout.
    pub fn stdout(format: AccessLogConfig) -> Self {
        Self {
            sink: AccessLogSink::File {
                path: STDOUT.into(),
                format,
            },
            filter: None,
        }
    }
}

/// The path that means the proxy's standard output.
pub const STDOUT: &str = "/dev/stdout";

/// Where access log entries go.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum AccessLogSink {
    /// Lines appended to a file (`/dev/stdout` is the proxy's standard output).
    File {
        /// The file.
        path: String,
        /// The line format.
        format: AccessLogConfig,
    },
    /// OTLP log records exported over gRPC (Envoy's `envoy.access_loggers.open_telemetry`).
    OpenTelemetry(OtelLogConfig),
    /// Entries streamed to an access log service (Envoy's `envoy.access_loggers.http_grpc`
    /// and `envoy.access_loggers.tcp_grpc`: `envoy.service.accesslog.v3.AccessLogService`).
    Grpc(GrpcLogConfig),
}

/// Which entries a gRPC access log streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum GrpcLogKind {
    /// `HTTPAccessLogEntry`s (`envoy.access_loggers.http_grpc`).
    Http,
    /// `TCPAccessLogEntry`s (`envoy.access_loggers.tcp_grpc`).
    Tcp,
}

/// An access log service logger: one stream to the service, opened with an identifier
/// (the node and `log_name`), then batches of entries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GrpcLogConfig {
    /// HTTP or TCP entries.
    pub kind: GrpcLogKind,
    /// The log name sent in the stream's identifier.
    pub log_name: String,
    /// The service's hostname (optionally `ns/hostname`), or IP literal.
    pub service: String,
    /// The service's port.
    pub port: u16,
    /// Over xDS, the `outbound|<port>||<host>` cluster istiod named for the service.
    pub cluster: Option<String>,
    /// The `:authority` of the stream; the service host when empty.
    pub authority: String,
    /// Request headers logged in `request_headers` (lower case).
    pub request_headers: Vec<String>,
    /// Response headers logged in `response_headers` (lower case).
    pub response_headers: Vec<String>,
    /// Filter state objects logged when the request has them (`downstream_peer` and
    /// `upstream_peer`, the peers' workload metadata, are the ones a waypoint has).
    pub filter_state_objects: Vec<String>,
    /// gRPC metadata sent when the stream opens.
    pub metadata: Vec<(String, String)>,
    /// Longest life of one stream (the gRPC service's `timeout`): a stream is closed then
    /// and the next entries open a new one. `None` keeps it open.
    pub stream_timeout: Option<std::time::Duration>,
}

impl GrpcLogConfig {
    /// The service as `host:port`, for logs.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.service, self.port)
    }
}

/// An OpenTelemetry access log: each request becomes an OTLP `LogRecord`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OtelLogConfig {
    /// The log name (`log_name` of the common configuration).
    pub log_name: String,
    /// The collector's Service hostname (optionally `ns/hostname`), or IP literal.
    pub service: String,
    /// The collector's port.
    pub port: u16,
    /// Over xDS, the `outbound|<port>||<host>` cluster istiod named for the collector.
    pub cluster: Option<String>,
    /// The `:authority` of export calls; the service host when empty.
    pub authority: String,
    /// The record body: an Envoy format string; `None` leaves the body empty.
    pub body: Option<String>,
    /// Record attributes: name and Envoy format string, in order.
    pub attributes: Vec<(String, String)>,
    /// Resource attributes added to the built-in ones.
    pub resource_attributes: Vec<(String, String)>,
    /// gRPC metadata sent with each export.
    pub metadata: Vec<(String, String)>,
    /// Whether the resource carries Envoy's built-in `log_name`, `zone_name`,
    /// `cluster_name` and `node_name` labels.
    pub builtin_labels: bool,
    /// Export timeout.
    pub timeout: std::time::Duration,
}

impl OtelLogConfig {
    /// The collector as `host:port`, for logs.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.service, self.port)
    }
}

/// Which requests an access log keeps (Envoy's `AccessLogFilter`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum LogFilter {
    /// The response status compared with a value.
    Status(Comparison, u32),
    /// The request's duration in milliseconds compared with a value.
    Duration(Comparison, u64),
    /// Requests that are not health checks (the waypoint answers none itself: all).
    NotHealthCheck,
    /// Requests with any of these response flags; any flag at all when empty.
    ResponseFlags(Vec<String>),
    /// All of these.
    And(Vec<LogFilter>),
    /// Any of these.
    Or(Vec<LogFilter>),
    /// A CEL predicate (`envoy.access_loggers.extension_filters.cel`).
    Cel(Expression),
}

/// A comparison operator of a status or duration filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Comparison {
    /// Equal.
    Eq,
    /// Greater or equal.
    Ge,
    /// Less or equal.
    Le,
    /// Not equal.
    Ne,
}

impl Comparison {
    /// Whether `value` compares so with `against`.
    pub fn holds(self, value: u64, against: u64) -> bool {
        match self {
            Comparison::Eq => value == against,
            Comparison::Ge => value >= against,
            Comparison::Le => value <= against,
            Comparison::Ne => value != against,
        }
    }
}

/// An access log line format.
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
