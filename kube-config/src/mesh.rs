//! MeshConfig, read from the `istio` ConfigMap in the root namespace (key `mesh`), as
//! istiod reads it: `extensionProviders` (external authorization, OpenTelemetry tracing,
//! file access logs), `defaultProviders` and the mesh-wide access log settings.
//!
//! Only the fields the waypoint uses are modelled; every other MeshConfig field is accepted
//! and ignored (MeshConfig has hundreds, most of them for other components).

use std::collections::BTreeMap;

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
    serde_path_to_error::deserialize(value).map_err(|e| LocalConfigError::Invalid {
        object: label.clone(),
        field: format!("data.mesh.{}", e.path()),
        message: e.into_inner().to_string(),
    })
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
    fn names_the_bad_field() {
        let maps = vec![cm("istio-system", "extensionProviders: {name: x}\n")];
        let err = mesh_config(&maps, "istio-system").unwrap_err().to_string();
        assert!(
            err.contains("ConfigMap istio-system/istio: data.mesh.extensionProviders"),
            "{err}"
        );
    }
}
