//! MeshConfig, read from the `istio` ConfigMap in the root namespace (key `mesh`), as
//! istiod reads it: `extensionProviders` (external authorization, OpenTelemetry tracing,
//! file access logs), `defaultProviders` and the mesh-wide access log settings.
//!
//! Only the fields the waypoint uses are modelled; every other MeshConfig field is accepted
//! and ignored (MeshConfig has hundreds, most of them for other components).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::objects::ObjectMeta;
use super::LocalConfigError;

/// The name of the ConfigMap holding MeshConfig (Istio's default revision).
pub const MESH_CONFIGMAP: &str = "istio";

/// A core/v1 ConfigMap.
#[derive(Debug, Clone, Deserialize)]
pub struct ConfigMap {
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// String data.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

/// The subset of MeshConfig the waypoint reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    /// Named providers that AuthorizationPolicy CUSTOM and Telemetry refer to.
    #[serde(default)]
    pub extension_providers: Vec<ExtensionProvider>,
    /// Providers used when a Telemetry resource does not name one.
    #[serde(default)]
    pub default_providers: DefaultProviders,
    /// `/dev/stdout` turns access logging on mesh-wide (Envoy's file access log).
    #[serde(default)]
    pub access_log_file: Option<String>,
    /// `TEXT` (default) or `JSON`.
    #[serde(default)]
    pub access_log_encoding: Option<String>,
    /// A custom Envoy format string; empty means Istio's default.
    #[serde(default)]
    pub access_log_format: Option<String>,
    /// No listener access log (`main_internal`'s `NR` log), as istiod then writes none.
    #[serde(default)]
    pub disable_envoy_listener_log: bool,
    /// Whether tracing is on when no Telemetry resource configures it.
    #[serde(default)]
    pub enable_tracing: Option<bool>,
    /// Mesh id reported in telemetry (`istio.mesh_id`).
    #[serde(default)]
    pub default_config: Option<ProxyConfig>,
    /// Trust domain (informational; the command line decides).
    #[serde(default)]
    pub trust_domain: Option<String>,
    /// What `defaultConfig` gives the connection manager, checked by [`mesh_config`].
    #[serde(skip)]
    pub connection_manager: ConnectionManager,
}

/// The connection manager settings `defaultConfig` gives the waypoint, as istiod derives
/// them for the `main_internal` connection managers (`buildHTTPConnectionManager`,
/// listener_builder.go; `buildWaypointInboundHTTPFilters`, listener_waypoint.go;
/// `applyConnectionSettingsToHCM`, connection_settings.go).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionManager {
    /// `proxyMetadata.ISTIO_META_HTTP10: "1"` (the `HTTP10` node metadata): HTTP/1.0
    /// requests are served (`accept_http_10`).
    pub accept_http_10: bool,
    /// `connectionSettings.httpIdleTimeout`, else `proxyMetadata.ISTIO_META_IDLE_TIMEOUT`
    /// (the `IDLE_TIMEOUT` node metadata); zero is none.
    pub idle_timeout: Option<Duration>,
    /// `connectionSettings.httpStreamIdleTimeout` (istiod's default `0s`: none).
    pub stream_idle_timeout: Option<Duration>,
    /// `connectionSettings.httpMaxConnectionDuration`; zero is none.
    pub max_connection_duration: Option<Duration>,
    /// `connectionSettings.httpMaxStreamDuration`; zero is none.
    pub max_stream_duration: Option<Duration>,
    /// `connectionSettings.httpHeadersWithUnderscoresAction`.
    pub underscore_headers: filters::model::UnderscoreHeaders,
}

/// The part of `defaultConfig` (ProxyConfig) the waypoint reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    /// `ISTIO_META_MESH_ID` and friends arrive as proxy metadata.
    #[serde(default)]
    pub mesh_id: Option<String>,
    /// `proxyHeaders`: only `preserveHttp1HeaderCase` is read.
    #[serde(default)]
    pub proxy_headers: Option<ProxyHeaders>,
    /// Environment of the proxy; `ISTIO_META_*` entries become its node metadata, of
    /// which `ISTIO_META_HTTP10` and `ISTIO_META_IDLE_TIMEOUT` are read.
    #[serde(default)]
    pub proxy_metadata: BTreeMap<String, String>,
    /// `connectionSettings`: the timeouts the waypoint implements; any other setting is
    /// refused by name.
    #[serde(default)]
    pub connection_settings: Option<ConnectionSettings>,
}

/// ProxyConfig `connectionSettings`: the fields the waypoint implements, and those istiod
/// writes nowhere into a waypoint's configuration (accepted without effect). Strict: the
/// others (`httpRequestTimeout`, `httpDrainTimeout`, HTTP/2 window sizes, ...) are refused,
/// as the connection manager fields istiod writes for them are over xDS;
/// `globalDownstreamConnectionLimit` (a bootstrap setting) too.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionSettings {
    /// The connection manager's `common_http_protocol_options.idle_timeout`.
    #[serde(default)]
    pub http_idle_timeout: Option<String>,
    /// The connection manager's `stream_idle_timeout`.
    #[serde(default)]
    pub http_stream_idle_timeout: Option<String>,
    /// The connection manager's `common_http_protocol_options.max_connection_duration`.
    #[serde(default)]
    pub http_max_connection_duration: Option<String>,
    /// The connection manager's `common_http_protocol_options.max_stream_duration`.
    #[serde(default)]
    pub http_max_stream_duration: Option<String>,
    /// The connection manager's `common_http_protocol_options
    /// .headers_with_underscores_action`: `HEADERS_WITH_UNDERSCORES_ALLOW`,
    /// `_REJECT_REQUEST`, `_DROP_HEADER` (`_UNSPECIFIED`: unset).
    #[serde(default)]
    pub http_headers_with_underscores_action: Option<String>,
    /// Accepted without effect: the `EDGE` profile's defaults apply to gateways only
    /// (`applyEdgeProfileDefaults`, connection_settings.go).
    #[serde(default)]
    pub profile: Option<serde_yaml::Value>,
    /// Accepted without effect: istiod applies it to gateway listeners only (gateway.go).
    #[serde(default)]
    pub listener_per_connection_buffer_limit_bytes: Option<serde_yaml::Value>,
    /// Accepted without effect: istiod validates it and writes it nowhere.
    #[serde(default)]
    pub cluster_per_connection_buffer_limit_bytes: Option<serde_yaml::Value>,
    /// Accepted without effect: istiod validates it and writes it nowhere.
    #[serde(default)]
    pub listener_connection_limit: Option<serde_yaml::Value>,
}

/// The `ISTIO_META_*` node metadata keys istiod reads for the connection manager.
const META_HTTP10: &str = "ISTIO_META_HTTP10";
const META_IDLE_TIMEOUT: &str = "ISTIO_META_IDLE_TIMEOUT";

impl ProxyConfig {
    /// The connection manager settings, or the field (under `defaultConfig`) and why it is
    /// invalid.
    fn connection_manager(&self) -> Result<ConnectionManager, (String, String)> {
        let parse = |v: &str, field: &str| {
            filters::duration::parse(v)
                .map(|d| (!d.is_zero()).then_some(d))
                .map_err(|e| (field.to_string(), e.to_string()))
        };
        // istiod reads `IDLE_TIMEOUT` with Go's time.ParseDuration (`parseDuration`,
        // listener_builder.go) and drops a value it cannot parse; here it is refused.
        let mut idle_timeout = match self.proxy_metadata.get(META_IDLE_TIMEOUT) {
            Some(v) => parse(v, &format!("proxyMetadata.{META_IDLE_TIMEOUT}"))?,
            None => None,
        };
        let mut stream_idle_timeout = None;
        let mut max_connection_duration = None;
        let mut max_stream_duration = None;
        let mut underscore_headers = filters::model::UnderscoreHeaders::Allow;
        if let Some(cs) = &self.connection_settings {
            if let Some(v) = &cs.http_headers_with_underscores_action {
                use filters::model::UnderscoreHeaders as U;
                // toEnvoyHeadersWithUnderscoresAction (connection_settings.go).
                underscore_headers = match v.as_str() {
                    "HEADERS_WITH_UNDERSCORES_UNSPECIFIED" | "HEADERS_WITH_UNDERSCORES_ALLOW" => {
                        U::Allow
                    }
                    "HEADERS_WITH_UNDERSCORES_REJECT_REQUEST" => U::RejectRequest,
                    "HEADERS_WITH_UNDERSCORES_DROP_HEADER" => U::DropHeader,
                    other => {
                        return Err((
                            "connectionSettings.httpHeadersWithUnderscoresAction".into(),
                            format!("unknown value {other:?}"),
                        ))
                    }
                };
            }
            if let Some(v) = &cs.http_max_stream_duration {
                max_stream_duration = parse(v, "connectionSettings.httpMaxStreamDuration")?;
            }
            if let Some(v) = &cs.http_max_connection_duration {
                max_connection_duration = parse(v, "connectionSettings.httpMaxConnectionDuration")?;
            }
            if let Some(v) = &cs.http_idle_timeout {
                idle_timeout = parse(v, "connectionSettings.httpIdleTimeout")?;
            }
            if let Some(v) = &cs.http_stream_idle_timeout {
                stream_idle_timeout = parse(v, "connectionSettings.httpStreamIdleTimeout")?;
            }
        }
        Ok(ConnectionManager {
            // `enableHTTP10` (listener.go): exactly "1".
            accept_http_10: self.proxy_metadata.get(META_HTTP10).map(String::as_str) == Some("1"),
            idle_timeout,
            stream_idle_timeout,
            max_connection_duration,
            max_stream_duration,
            underscore_headers,
        })
    }
}

impl MeshConfig {
    /// ProxyConfig `proxyHeaders.preserveHttp1HeaderCase` of `defaultConfig`.
    pub fn preserve_http1_header_case(&self) -> bool {
        self.default_config
            .as_ref()
            .and_then(|c| c.proxy_headers.as_ref())
            .and_then(|h| h.preserve_http1_header_case)
            .unwrap_or(false)
    }
}

/// ProxyConfig `proxyHeaders`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyHeaders {
    /// HTTP/1.1 header names keep their case through the waypoint.
    #[serde(default)]
    pub preserve_http1_header_case: Option<bool>,
}

/// `defaultProviders`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefaultProviders {
    /// Tracing provider names.
    #[serde(default)]
    pub tracing: Vec<String>,
    /// Access logging provider names.
    #[serde(default)]
    pub access_logging: Vec<String>,
    /// Metrics provider names.
    #[serde(default)]
    pub metrics: Vec<String>,
}

/// One entry of `extensionProviders`: a name and exactly one provider kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProvider {
    /// The name policies and Telemetry resources refer to.
    pub name: String,
    /// ext_authz over gRPC (`envoy.service.auth.v3.Authorization`).
    #[serde(default)]
    pub envoy_ext_authz_grpc: Option<serde_yaml::Value>,
    /// ext_authz over HTTP.
    #[serde(default)]
    pub envoy_ext_authz_http: Option<serde_yaml::Value>,
    /// OpenTelemetry tracing over OTLP.
    #[serde(default)]
    pub opentelemetry: Option<serde_yaml::Value>,
    /// Envoy file access log.
    #[serde(default)]
    pub envoy_file_access_log: Option<serde_yaml::Value>,
    /// Envoy OpenTelemetry access log (OTLP logs over gRPC).
    #[serde(default)]
    pub envoy_otel_als: Option<serde_yaml::Value>,
    /// Envoy HTTP access log service logger (`envoy.service.accesslog.v3`).
    #[serde(default)]
    pub envoy_http_als: Option<serde_yaml::Value>,
    /// Envoy TCP access log service logger.
    #[serde(default)]
    pub envoy_tcp_als: Option<serde_yaml::Value>,
    /// Any other provider kind (zipkin, skywalking, prometheus, ...), kept so that a
    /// reference to it can be reported as unsupported rather than unknown.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

impl ExtensionProvider {
    /// The provider kind's field name, e.g. `envoyExtAuthzGrpc`.
    pub fn kind(&self) -> &str {
        if self.envoy_ext_authz_grpc.is_some() {
            "envoyExtAuthzGrpc"
        } else if self.envoy_ext_authz_http.is_some() {
            "envoyExtAuthzHttp"
        } else if self.opentelemetry.is_some() {
            "opentelemetry"
        } else if self.envoy_file_access_log.is_some() {
            "envoyFileAccessLog"
        } else if self.envoy_otel_als.is_some() {
            "envoyOtelAls"
        } else if self.envoy_http_als.is_some() {
            "envoyHttpAls"
        } else if self.envoy_tcp_als.is_some() {
            "envoyTcpAls"
        } else {
            self.other
                .keys()
                .next()
                .map(String::as_str)
                .unwrap_or("<none>")
        }
    }
}

/// Deserializes one provider's settings, naming the provider and field on error.
pub fn provider_settings<T: serde::de::DeserializeOwned>(
    provider: &ExtensionProvider,
    index: usize,
    value: &serde_yaml::Value,
) -> Result<T, LocalConfigError> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| LocalConfigError::Invalid {
        object: format!("MeshConfig extensionProviders[{index}] ({})", provider.name),
        field: format!("{}.{}", provider.kind(), e.path()),
        message: e.into_inner().to_string(),
    })
}

/// Finds and parses MeshConfig among the ConfigMaps: `istio` in `root_namespace`, key
/// `mesh`. No such ConfigMap means Istio's defaults.
pub fn mesh_config(
    config_maps: &[(String, ConfigMap)],
    root_namespace: &str,
) -> Result<MeshConfig, LocalConfigError> {
    let Some((label, cm)) = config_maps.iter().find(|(_, cm)| {
        cm.metadata.name == MESH_CONFIGMAP
            && cm.metadata.namespace.as_deref().unwrap_or("default") == root_namespace
    }) else {
        return Ok(MeshConfig::default());
    };
    let Some(text) = cm.data.get("mesh") else {
        return Ok(MeshConfig::default());
    };
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| LocalConfigError::Invalid {
            object: label.clone(),
            field: "data.mesh".into(),
            message: format!("invalid YAML: {e}"),
        })?;
    if value.is_null() {
        return Ok(MeshConfig::default());
    }
    let mut mesh: MeshConfig =
        serde_path_to_error::deserialize(value).map_err(|e| LocalConfigError::Invalid {
            object: label.clone(),
            field: format!("data.mesh.{}", e.path()),
            message: e.into_inner().to_string(),
        })?;
    if let Some(pc) = &mesh.default_config {
        mesh.connection_manager =
            pc.connection_manager()
                .map_err(|(field, message)| LocalConfigError::Invalid {
                    object: label.clone(),
                    field: format!("data.mesh.defaultConfig.{field}"),
                    message,
                })?;
    }
    Ok(mesh)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(ns: &str, mesh: &str) -> (String, ConfigMap) {
        let meta = ObjectMeta {
            name: "istio".into(),
            namespace: Some(ns.into()),
            ..Default::default()
        };
        let data = BTreeMap::from([("mesh".to_string(), mesh.to_string())]);
        (
            format!("ConfigMap {ns}/istio"),
            ConfigMap {
                metadata: meta,
                data,
            },
        )
    }

    #[test]
    fn reads_providers_from_the_root_namespace_only() {
        let maps = vec![
            cm("other", "accessLogFile: /dev/stdout\n"),
            cm(
                "istio-system",
                "accessLogFile: /dev/stdout\nextensionProviders:\n- name: otel\n  opentelemetry: {service: c.ns.svc, port: 4317}\n- name: z\n  zipkin: {service: z, port: 9411}\n",
            ),
        ];
        let mesh = mesh_config(&maps, "istio-system").unwrap();
        assert_eq!(mesh.access_log_file.as_deref(), Some("/dev/stdout"));
        assert_eq!(mesh.extension_providers[0].kind(), "opentelemetry");
        assert_eq!(mesh.extension_providers[1].kind(), "zipkin");
        assert!(mesh_config(&maps, "nowhere")
            .unwrap()
            .access_log_file
            .is_none());
    }

    #[test]
    fn proxy_metadata_and_connection_settings_set_the_connection_manager() {
        let read = |yaml: &str| {
            mesh_config(&[cm("istio-system", yaml)], "istio-system").map(|m| m.connection_manager)
        };
        assert_eq!(read("{}\n").unwrap(), ConnectionManager::default());
        let m = read(
            "defaultConfig:\n  proxyMetadata:\n    ISTIO_META_HTTP10: \"1\"\n    ISTIO_META_IDLE_TIMEOUT: 1m30s\n",
        )
        .unwrap();
        assert!(m.accept_http_10);
        assert_eq!(m.idle_timeout, Some(Duration::from_secs(90)));
        // Only "1" turns HTTP/1.0 on (enableHTTP10, listener.go); connectionSettings wins
        // over IDLE_TIMEOUT (applyConnectionSettingsToHCM runs last); zero is none.
        let m = read(
            "defaultConfig:\n  proxyMetadata:\n    ISTIO_META_HTTP10: \"true\"\n    ISTIO_META_IDLE_TIMEOUT: 10s\n  connectionSettings:\n    httpIdleTimeout: 0s\n    httpStreamIdleTimeout: 5s\n    httpMaxConnectionDuration: 1h\n",
        )
        .unwrap();
        assert_eq!(
            m,
            ConnectionManager {
                accept_http_10: false,
                idle_timeout: None,
                stream_idle_timeout: Some(Duration::from_secs(5)),
                max_connection_duration: Some(Duration::from_secs(3600)),
                max_stream_duration: None,
                underscore_headers: filters::model::UnderscoreHeaders::Allow,
            }
        );
        let m = read(
            "defaultConfig:\n  connectionSettings:\n    httpHeadersWithUnderscoresAction: HEADERS_WITH_UNDERSCORES_DROP_HEADER\n",
        )
        .unwrap();
        assert_eq!(
            m.underscore_headers,
            filters::model::UnderscoreHeaders::DropHeader
        );
        // What istiod applies only to gateways is accepted.
        assert_eq!(
            read("defaultConfig:\n  connectionSettings:\n    profile: EDGE\n    listenerPerConnectionBufferLimitBytes: 1024\n")
                .unwrap(),
            ConnectionManager::default()
        );
        let err = read("defaultConfig:\n  connectionSettings:\n    httpRequestTimeout: 5s\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data.mesh.defaultConfig.connectionSettings.httpRequestTimeout"),
            "{err}"
        );
        let err = read("defaultConfig:\n  connectionSettings:\n    httpIdleTimeout: soon\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data.mesh.defaultConfig.connectionSettings.httpIdleTimeout"),
            "{err}"
        );
    }

    #[test]
    fn names_the_bad_field() {
        let maps = vec![cm("istio-system", "extensionProviders: {name: x}\n")];
        let err = mesh_config(&maps, "istio-system").unwrap_err().to_string();
        assert!(
            err.contains("ConfigMap istio-system/istio: data.mesh.extensionProviders"),
            "{err}"
        );
    }
}
