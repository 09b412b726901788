//! `Telemetry` (`telemetry.istio.io/v1`) and MeshConfig into the telemetry settings.
//!
//! Scope, most specific first: a Telemetry whose `targetRefs` name the waypoint Gateway
//! (or the `istio-waypoint` GatewayClass from the root namespace); one without selector or
//! targetRefs in the waypoint's namespace; one without them in the root namespace. The
//! most specific Telemetry that sets `tracing` (or `accessLogging`) decides it; without
//! any, MeshConfig's `defaultProviders` and `accessLogFile` decide. Selector-based and
//! Service-targeted Telemetry are not applied by the waypoint (logged).

use std::time::Duration;

use filters::model::telemetry::{CustomTag, OtlpProtocol, TelemetryConfig, TracingConfig};
use filters::model::NamespacedName;
use serde::Deserialize;

use super::authz::{binding, Binding, TargetRef};
use super::mesh::{provider_settings, ExtensionProvider, MeshConfig};
use super::objects::ObjectMeta;
use super::LocalConfigError;

mod access_log;
mod metrics;

use access_log::access_logs;
use metrics::{metric_overrides, MetricsSpec};

/// A `Telemetry` object.
#[derive(Debug, Deserialize)]
pub struct Telemetry {
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// The spec.
    #[serde(default)]
    pub spec: TelemetrySpec,
}

/// `Telemetry.spec`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetrySpec {
    #[serde(default)]
    selector: Option<serde_yaml::Value>,
    #[serde(default)]
    target_ref: Option<TargetRef>,
    #[serde(default)]
    target_refs: Vec<TargetRef>,
    #[serde(default)]
    tracing: Option<Vec<TracingSpec>>,
    #[serde(default)]
    access_logging: Option<Vec<AccessLoggingSpec>>,
    #[serde(default)]
    metrics: Option<Vec<MetricsSpec>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProviderRef {
    name: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TracingSpec {
    #[serde(default)]
    providers: Vec<ProviderRef>,
    #[serde(default)]
    random_sampling_percentage: Option<f64>,
    #[serde(default)]
    disable_span_reporting: Option<bool>,
    #[serde(default)]
    custom_tags: std::collections::BTreeMap<String, CustomTagSpec>,
    #[serde(default, rename = "match")]
    match_: Option<serde_yaml::Value>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CustomTagSpec {
    #[serde(default)]
    literal: Option<Literal>,
    #[serde(default)]
    environment: Option<NamedDefault>,
    #[serde(default)]
    header: Option<NamedDefault>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Literal {
    value: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NamedDefault {
    name: String,
    #[serde(default)]
    default_value: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AccessLoggingSpec {
    #[serde(default)]
    providers: Vec<ProviderRef>,
    #[serde(default)]
    disabled: Option<bool>,
    #[serde(default)]
    filter: Option<AccessLogFilterSpec>,
    #[serde(default, rename = "match")]
    match_: Option<LogSelector>,
}

/// `accessLogging[].filter`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AccessLogFilterSpec {
    expression: String,
}

/// `accessLogging[].match`.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LogSelector {
    #[serde(default)]
    mode: Option<String>,
}

/// `envoyHttpAls` and `envoyTcpAls` provider settings (the TCP one has no headers).
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GrpcAls {
    service: String,
    port: u16,
    #[serde(default)]
    log_name: Option<String>,
    #[serde(default)]
    filter_state_objects_to_log: Vec<String>,
    #[serde(default)]
    additional_request_headers_to_log: Vec<String>,
    #[serde(default)]
    additional_response_headers_to_log: Vec<String>,
    #[serde(default)]
    additional_response_trailers_to_log: Vec<String>,
}

/// `envoyOtelAls` provider settings.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OtelAls {
    service: String,
    port: u16,
    #[serde(default)]
    log_name: Option<String>,
    #[serde(default)]
    log_format: Option<OtelLogFormat>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OtelLogFormat {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
}

/// `opentelemetry` provider settings.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct OtelProvider {
    service: String,
    port: u16,
    #[serde(default)]
    max_tag_length: Option<usize>,
    #[serde(default)]
    http: Option<OtelHttp>,
    #[serde(default)]
    grpc: Option<OtelGrpc>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct OtelHttp {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    headers: Vec<HeaderValue>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct OtelGrpc {
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    initial_metadata: Vec<HeaderValue>,
}

#[derive(Debug, Deserialize, Default)]
struct HeaderValue {
    name: String,
    value: String,
}

/// `envoyFileAccessLog` provider settings.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FileAccessLog {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    log_format: Option<LogFormat>,
    #[serde(default)]
    omit_empty_values: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LogFormat {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
}

/// Istio's default sampling when nothing sets it (MeshConfig `defaultConfig.tracing.sampling`).
const DEFAULT_SAMPLING: f64 = 1.0;
/// Istio's default `maxTagLength`.
const DEFAULT_MAX_TAG_LENGTH: usize = 256;
/// Export timeout when the provider sets none.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

fn invalid(object: &str, field: impl Into<String>, message: impl Into<String>) -> LocalConfigError {
    LocalConfigError::Invalid {
        object: object.to_string(),
        field: field.into(),
        message: message.into(),
    }
}

/// Builds the telemetry settings for the waypoint `gateway`.
pub fn build(
    telemetries: &[(String, Telemetry)],
    mesh: &MeshConfig,
    gateway: &NamespacedName,
    root_namespace: &str,
) -> Result<TelemetryConfig, LocalConfigError> {
    // (scope rank: 0 targeted, 1 namespace, 2 root; label; spec)
    let mut scoped: Vec<(u8, &str, &TelemetrySpec)> = Vec::new();
    for (label, t) in telemetries {
        let ns = t.metadata.namespace.as_deref().unwrap_or("default");
        let refs: Vec<&TargetRef> = t
            .spec
            .target_ref
            .iter()
            .chain(&t.spec.target_refs)
            .collect();
        let rank = if !refs.is_empty() {
            let ours = refs
                .iter()
                .any(|r| matches!(binding(r, ns, gateway, root_namespace), Binding::Waypoint));
            if !ours {
                tracing::info!(telemetry = %label, "Telemetry targets something other than this waypoint; not applied");
                continue;
            }
            0
        } else if t.spec.selector.is_some() {
            tracing::info!(telemetry = %label, "selector-based Telemetry is not applied by the waypoint");
            continue;
        } else if ns == gateway.namespace {
            1
        } else if ns == root_namespace {
            2
        } else {
            continue;
        };
        scoped.push((rank, label, &t.spec));
    }
    scoped.sort_by_key(|(rank, label, _)| (*rank, label.to_string()));
    let tracing_spec = scoped
        .iter()
        .find_map(|(_, label, s)| s.tracing.as_ref().map(|t| (*label, t)));
    let logging_spec = scoped
        .iter()
        .find_map(|(_, label, s)| s.access_logging.as_ref().map(|t| (*label, t)));
    let metrics_spec = scoped
        .iter()
        .find_map(|(_, label, s)| s.metrics.as_ref().map(|m| (*label, m)));
    // istiod gives TCP chains the same logs as HTTP ones (accesslog.go `setTCPAccessLog`).
    let logs = access_logs(logging_spec, mesh)?;
    let listener_logs = access_log::listener_logs(&logs, mesh);
    Ok(TelemetryConfig {
        tracing: tracing(tracing_spec, mesh)?,
        access_logs: logs.clone(),
        tcp_access_logs: logs,
        service_access_logs: Vec::new(),
        mesh_id: mesh
            .default_config
            .as_ref()
            .and_then(|d| d.mesh_id.clone())
            .or_else(|| mesh.trust_domain.clone())
            .unwrap_or_else(|| "cluster.local".into()),
        metric_overrides: metric_overrides(metrics_spec)?,
        service_metric_overrides: Vec::new(),
        listener_logs,
    })
}

fn find_provider<'a>(
    mesh: &'a MeshConfig,
    name: &str,
    object: &str,
    field: &str,
) -> Result<Option<(usize, &'a ExtensionProvider)>, LocalConfigError> {
    // Istio's built-in provider: Envoy's file access log to stdout.
    if name == "envoy" && !mesh.extension_providers.iter().any(|p| p.name == "envoy") {
        return Ok(None);
    }
    match mesh
        .extension_providers
        .iter()
        .enumerate()
        .find(|(_, p)| p.name == name)
    {
        Some(p) => Ok(Some(p)),
        None => Err(invalid(
            object,
            field,
            format!("no extensionProvider named {name:?} in MeshConfig"),
        )),
    }
}

fn tracing(
    spec: Option<(&str, &Vec<TracingSpec>)>,
    mesh: &MeshConfig,
) -> Result<Option<TracingConfig>, LocalConfigError> {
    let Some((object, names, t)) = tracing_entry(spec, mesh) else {
        return Ok(None);
    };
    let Some(name) = names.first() else {
        return Ok(None);
    };
    let (index, otel) = otel_provider(mesh, name, &object)?;
    let provider_object = format!("MeshConfig extensionProviders[{index}] ({name})");
    let protocol = otlp_protocol(&otel, &provider_object)?;
    let timeout = export_timeout(&otel, &provider_object)?;
    let custom_tags = match t {
        Some(t) => custom_tags(t, &object)?,
        None => Vec::new(),
    };
    let sampling = t
        .and_then(|t| t.random_sampling_percentage)
        .unwrap_or(DEFAULT_SAMPLING);
    if !(0.0..=100.0).contains(&sampling) {
        return Err(invalid(
            &object,
            "spec.tracing[0].randomSamplingPercentage",
            "must be between 0 and 100",
        ));
    }
    Ok(Some(TracingConfig {
        provider: name.clone(),
        service: otel.service.clone(),
        port: otel.port,
        cluster: None,
        service_name: None,
        protocol,
        timeout,
        sampling_percentage: sampling,
        custom_tags,
        max_tag_length: otel.max_tag_length.unwrap_or(DEFAULT_MAX_TAG_LENGTH),
    }))
}

/// The tracing entry that applies: object label, provider names, entry (`None`: tracing off).
fn tracing_entry<'a>(
    spec: Option<(&str, &'a Vec<TracingSpec>)>,
    mesh: &MeshConfig,
) -> Option<(String, Vec<String>, Option<&'a TracingSpec>)> {
    match spec {
        Some((label, list)) => {
            let t = list.first()?;
            if list.len() > 1 {
                tracing::info!(telemetry = %label, "only the first tracing entry is applied");
            }
            if t.match_.is_some() {
                tracing::info!(telemetry = %label, "tracing.match is not supported; the entry applies to all traffic");
            }
            if t.disable_span_reporting == Some(true) {
                return None;
            }
            let names: Vec<String> = if t.providers.is_empty() {
                mesh.default_providers.tracing.clone()
            } else {
                t.providers.iter().map(|p| p.name.clone()).collect()
            };
            Some((label.to_string(), names, Some(t)))
        }
        None if mesh.enable_tracing != Some(false) => Some((
            "MeshConfig".to_string(),
            mesh.default_providers.tracing.clone(),
            None,
        )),
        None => None,
    }
}

/// The `opentelemetry` settings of the MeshConfig provider `name`, with its index.
fn otel_provider(
    mesh: &MeshConfig,
    name: &str,
    object: &str,
) -> Result<(usize, OtelProvider), LocalConfigError> {
    let field = "spec.tracing[0].providers";
    let Some((index, provider)) = find_provider(mesh, name, object, field)? else {
        return Err(invalid(
            object,
            field,
            format!("{name:?} is not a tracing provider"),
        ));
    };
    let Some(settings) = &provider.opentelemetry else {
        return Err(invalid(
            object,
            field,
            format!(
                "provider {name:?} is {}; only opentelemetry tracing is supported",
                provider.kind()
            ),
        ));
    };
    Ok((index, provider_settings(provider, index, settings)?))
}

/// The OTLP transport (HTTP with its path and headers, or gRPC with its metadata).
fn otlp_protocol(
    otel: &OtelProvider,
    provider_object: &str,
) -> Result<OtlpProtocol, LocalConfigError> {
    Ok(match (&otel.http, &otel.grpc) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                provider_object,
                "opentelemetry",
                "set http or grpc, not both",
            ))
        }
        (Some(h), None) => OtlpProtocol::Http {
            path: h
                .path
                .clone()
                .map(|p| {
                    if p.starts_with('/') {
                        p
                    } else {
                        format!("/{p}")
                    }
                })
                .unwrap_or_else(|| "/v1/traces".into()),
            headers: h
                .headers
                .iter()
                .map(|kv| (kv.name.clone(), kv.value.clone()))
                .collect(),
        },
        (None, g) => OtlpProtocol::Grpc {
            metadata: g
                .iter()
                .flat_map(|g| &g.initial_metadata)
                .map(|kv| (kv.name.clone(), kv.value.clone()))
                .collect(),
        },
    })
}

/// The export timeout of the HTTP or gRPC settings ([`DEFAULT_TIMEOUT`] when unset).
fn export_timeout(
    otel: &OtelProvider,
    provider_object: &str,
) -> Result<Duration, LocalConfigError> {
    let duration = |v: &Option<String>, f: &str| -> Result<Duration, LocalConfigError> {
        match v {
            None => Ok(DEFAULT_TIMEOUT),
            Some(s) => {
                filters::duration::parse(s).map_err(|e| invalid(provider_object, f, e.to_string()))
            }
        }
    };
    match (&otel.http, &otel.grpc) {
        (Some(h), _) => duration(&h.timeout, "opentelemetry.http.timeout"),
        (_, Some(g)) => duration(&g.timeout, "opentelemetry.grpc.timeout"),
        _ => Ok(DEFAULT_TIMEOUT),
    }
}

/// The entry's `customTags`, each exactly one of literal, environment or header.
fn custom_tags(
    t: &TracingSpec,
    object: &str,
) -> Result<Vec<(String, CustomTag)>, LocalConfigError> {
    let mut custom_tags = Vec::new();
    for (k, v) in &t.custom_tags {
        let tag = match (&v.literal, &v.environment, &v.header) {
            (Some(l), None, None) => CustomTag::Literal(l.value.clone()),
            (None, Some(e), None) => CustomTag::Environment {
                name: e.name.clone(),
                default: e.default_value.clone(),
            },
            (None, None, Some(h)) => CustomTag::Header {
                name: h.name.to_ascii_lowercase(),
                default: h.default_value.clone(),
            },
            _ => {
                return Err(invalid(
                    object,
                    format!("spec.tracing[0].customTags.{k}"),
                    "exactly one of literal, environment or header is required",
                ))
            }
        };
        custom_tags.push((k.clone(), tag));
    }
    Ok(custom_tags)
}

#[cfg(test)]
mod tests;
