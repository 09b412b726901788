//! Telemetry `accessLogging` and MeshConfig `accessLogFile` into the access logs, as
//! istiod builds them (`pilot/pkg/model/telemetry_logging.go`, `telemetryAccessLog`;
//! `pilot/pkg/model/telemetry.go`, `mergeLogs`; `pilot/pkg/networking/core/accesslog.go`,
//! `buildAccessLogFilterFromTelemetry`): one log per provider (the built-in `envoy`
//! provider with MeshConfig's format, `envoyFileAccessLog` to its path, `envoyOtelAls` as
//! OTLP logs, `envoyHttpAls` / `envoyTcpAls` streamed to an access log service), each
//! behind the entry's CEL `filter`.

use filters::cel::Expression;
use filters::model::telemetry::{
    AccessLog, AccessLogConfig, AccessLogSink, Comparison, GrpcLogConfig, GrpcLogKind,
    ListenerLogs, LogFilter, OtelLogConfig, STDOUT,
};

use super::*;

/// The built-in listeners' logs as istiod derives them from the same logs
/// (`accesslog.go`): `connect_terminate` keeps status >= 400, `connect_originate` `UF`,
/// `main_internal`'s listener log `NR` (none with MeshConfig `disableEnvoyListenerLog`),
/// each and-ed with the log's own filter.
pub(super) fn listener_logs(logs: &[AccessLog], mesh: &MeshConfig) -> ListenerLogs {
    let with = |filter: LogFilter| -> Vec<AccessLog> {
        logs.iter()
            .map(|l| AccessLog {
                sink: l.sink.clone(),
                filter: Some(match &l.filter {
                    None => filter.clone(),
                    Some(own) => LogFilter::And(vec![filter.clone(), own.clone()]),
                }),
            })
            .collect()
    };
    let flag = |f: &str| LogFilter::ResponseFlags(vec![f.to_string()]);
    ListenerLogs {
        connect_terminate: with(LogFilter::Status(Comparison::Ge, 400)),
        connect_originate: with(flag("UF")),
        no_chain: if mesh.disable_envoy_listener_log {
            Vec::new()
        } else {
            with(flag("NR"))
        },
    }
}

/// istiod's default OpenTelemetry log name.
const OTEL_LOG_NAME: &str = "otel_envoy_accesslog";

pub(super) fn access_logs(
    spec: Option<(&str, &Vec<AccessLoggingSpec>)>,
    mesh: &MeshConfig,
) -> Result<Vec<AccessLog>, LocalConfigError> {
    let logs = match spec {
        Some((label, list)) => {
            // Provider name -> filter, in the order providers first appear; a later entry
            // replaces an earlier one's filter, `disabled` removes the provider.
            let mut chosen: Vec<(String, Option<LogFilter>)> = Vec::new();
            for (i, a) in list.iter().enumerate() {
                let at = |f: &str| format!("spec.accessLogging[{i}]{f}");
                match a.match_.as_ref().and_then(|m| m.mode.as_deref()) {
                    None | Some("CLIENT_AND_SERVER") | Some("SERVER") => {}
                    // A waypoint reports as the server: client-only logging is not for it.
                    Some("CLIENT") => continue,
                    Some(other) => {
                        return Err(invalid(
                            label,
                            at(".match.mode"),
                            format!("unknown mode {other:?}"),
                        ))
                    }
                }
                let filter = match &a.filter {
                    None => None,
                    Some(f) => Some(LogFilter::Cel(
                        Expression::predicate(&f.expression)
                            .map_err(|e| invalid(label, at(".filter.expression"), e.to_string()))?,
                    )),
                };
                let names: Vec<String> = if a.providers.is_empty() {
                    mesh.default_providers.access_logging.clone()
                } else {
                    a.providers.iter().map(|p| p.name.clone()).collect()
                };
                for name in names {
                    chosen.retain(|(n, _)| *n != name);
                    if a.disabled != Some(true) {
                        chosen.push((name, filter.clone()));
                    }
                }
            }
            let mut logs = Vec::with_capacity(chosen.len());
            for (name, filter) in chosen {
                let sink = provider_sink(mesh, &name, label)?;
                logs.push(AccessLog { sink, filter });
            }
            logs
        }
        None => match mesh.access_log_file.as_deref() {
            None | Some("") => Vec::new(),
            Some(path) => vec![AccessLog {
                sink: AccessLogSink::File {
                    path: path.to_string(),
                    format: mesh_format(mesh),
                },
                filter: None,
            }],
        },
    };
    for log in &logs {
        check_formats(&log.sink)?;
    }
    Ok(logs)
}

/// Formats are checked here so that a bad operator refuses the configuration.
fn check_formats(sink: &AccessLogSink) -> Result<(), LocalConfigError> {
    let bad =
        |e: filters::access_log::InvalidFormat| invalid("access log", "format", e.to_string());
    match sink {
        AccessLogSink::File { format, .. } => {
            filters::access_log::Compiled::new(format).map_err(bad)?;
        }
        AccessLogSink::OpenTelemetry(o) => {
            for f in o.body.iter().chain(o.attributes.iter().map(|(_, v)| v)) {
                filters::access_log::Format::parse(f).map_err(bad)?;
            }
        }
        AccessLogSink::Grpc(_) => {}
    }
    Ok(())
}

/// The sink of the MeshConfig provider `name`.
fn provider_sink(
    mesh: &MeshConfig,
    name: &str,
    label: &str,
) -> Result<AccessLogSink, LocalConfigError> {
    let field = "spec.accessLogging.providers";
    let Some((index, p)) = find_provider(mesh, name, label, field)? else {
        // The built-in `envoy` provider: stdout in MeshConfig's format.
        return Ok(AccessLogSink::File {
            path: STDOUT.into(),
            format: mesh_format(mesh),
        });
    };
    if let Some(v) = &p.envoy_file_access_log {
        let f: FileAccessLog = provider_settings(p, index, v)?;
        if f.omit_empty_values == Some(true) {
            return Err(invalid(
                &format!("MeshConfig extensionProviders[{index}] ({name})"),
                "envoyFileAccessLog.omitEmptyValues",
                "not supported",
            ));
        }
        let format = match f.log_format {
            Some(LogFormat {
                text: Some(t),
                labels: None,
            }) => AccessLogConfig::Text(Some(t)),
            Some(LogFormat {
                text: None,
                labels: Some(l),
            }) if !l.is_empty() => AccessLogConfig::Json(Some(l.into_iter().collect())),
            // Empty labels are Istio's default JSON keys.
            Some(LogFormat {
                text: None,
                labels: Some(_),
            }) => AccessLogConfig::Json(None),
            // The built-in provider without a format falls back to MeshConfig's.
            None if name == "envoy" => mesh_format(mesh),
            Some(LogFormat {
                text: None,
                labels: None,
            })
            | None => AccessLogConfig::Text(None),
            Some(_) => {
                return Err(invalid(
                    label,
                    field,
                    "logFormat: set text or labels, not both",
                ))
            }
        };
        let path = f
            .path
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| STDOUT.into());
        return Ok(AccessLogSink::File { path, format });
    }
    if let Some(v) = &p.envoy_otel_als {
        let o: OtelAls = provider_settings(p, index, v)?;
        let format = o.log_format.unwrap_or_default();
        let host = o
            .service
            .split_once('/')
            .map(|(_, h)| h)
            .unwrap_or(&o.service)
            .to_string();
        return Ok(AccessLogSink::OpenTelemetry(OtelLogConfig {
            log_name: o
                .log_name
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| OTEL_LOG_NAME.into()),
            authority: host,
            service: o.service,
            port: o.port,
            cluster: None,
            body: Some(
                format
                    .text
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| filters::access_log::ISTIO_TEXT.into()),
            ),
            attributes: format.labels.unwrap_or_default().into_iter().collect(),
            resource_attributes: Vec::new(),
            // istiod sets `disable_builtin_labels`.
            builtin_labels: false,
            metadata: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }));
    }
    let als = [
        (&p.envoy_http_als, GrpcLogKind::Http),
        (&p.envoy_tcp_als, GrpcLogKind::Tcp),
    ];
    if let Some((v, kind)) = als
        .into_iter()
        .find_map(|(v, k)| v.as_ref().map(|v| (v, k)))
    {
        return grpc_als(p, index, v, kind);
    }
    Err(invalid(
        label,
        field,
        format!(
            "provider {name:?} is {}; envoyFileAccessLog, envoyOtelAls, envoyHttpAls and envoyTcpAls are supported",
            p.kind()
        ),
    ))
}

/// An `envoyHttpAls` / `envoyTcpAls` provider as istiod writes its logger
/// (`httpGrpcAccessLogFromTelemetry`, `tcpGrpcAccessLogFromTelemetry`): its log name
/// (`http_envoy_accesslog` / `tcp_envoy_accesslog` by default), the filter state objects
/// (`upstream_peer`, `downstream_peer` by default) and, for HTTP, the extra headers.
fn grpc_als(
    p: &crate::mesh::ExtensionProvider,
    index: usize,
    v: &serde_yaml::Value,
    kind: GrpcLogKind,
) -> Result<AccessLogSink, LocalConfigError> {
    let a: GrpcAls = provider_settings(p, index, v)?;
    let object = format!("MeshConfig extensionProviders[{index}] ({})", p.name);
    let (kind_field, default_name) = match kind {
        GrpcLogKind::Http => ("envoyHttpAls", "http_envoy_accesslog"),
        GrpcLogKind::Tcp => ("envoyTcpAls", "tcp_envoy_accesslog"),
    };
    let headers_set = !a.additional_request_headers_to_log.is_empty()
        || !a.additional_response_headers_to_log.is_empty()
        || !a.additional_response_trailers_to_log.is_empty();
    if kind == GrpcLogKind::Tcp && headers_set {
        return Err(invalid(
            &object,
            format!("{kind_field}.additionalRequestHeadersToLog"),
            "a TCP logger logs no headers",
        ));
    }
    if !a.additional_response_trailers_to_log.is_empty() {
        return Err(invalid(
            &object,
            format!("{kind_field}.additionalResponseTrailersToLog"),
            "response trailers are not logged",
        ));
    }
    let names = |list: Vec<String>, field: &str| -> Result<Vec<String>, LocalConfigError> {
        list.into_iter()
            .map(|n| {
                let lower = n.to_ascii_lowercase();
                match http::HeaderName::from_bytes(lower.as_bytes()) {
                    Ok(_) => Ok(lower),
                    Err(_) => Err(invalid(
                        &object,
                        format!("{kind_field}.{field}"),
                        format!("{n:?} is not a header name"),
                    )),
                }
            })
            .collect()
    };
    let host = a
        .service
        .split_once('/')
        .map(|(_, h)| h)
        .unwrap_or(&a.service)
        .to_string();
    Ok(AccessLogSink::Grpc(GrpcLogConfig {
        kind,
        log_name: a
            .log_name
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| default_name.into()),
        authority: host,
        service: a.service,
        port: a.port,
        cluster: None,
        request_headers: names(
            a.additional_request_headers_to_log,
            "additionalRequestHeadersToLog",
        )?,
        response_headers: names(
            a.additional_response_headers_to_log,
            "additionalResponseHeadersToLog",
        )?,
        filter_state_objects: if a.filter_state_objects_to_log.is_empty() {
            vec!["upstream_peer".into(), "downstream_peer".into()]
        } else {
            a.filter_state_objects_to_log
        },
        metadata: Vec::new(),
        stream_timeout: None,
    }))
}

/// MeshConfig's `accessLogEncoding` and `accessLogFormat`.
fn mesh_format(mesh: &MeshConfig) -> AccessLogConfig {
    let custom = mesh.access_log_format.clone().filter(|f| !f.is_empty());
    match mesh.access_log_encoding.as_deref() {
        Some("JSON") => AccessLogConfig::Json(custom.and_then(|f| {
            serde_json::from_str::<std::collections::BTreeMap<String, String>>(&f)
                .ok()
                .map(|m| m.into_iter().collect())
        })),
        _ => AccessLogConfig::Text(custom),
    }
}
