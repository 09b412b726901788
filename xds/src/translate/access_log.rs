//! The connection manager's `access_log` as istiod writes it (`pilot/pkg/model/
//! telemetry_logging.go`, `pilot/pkg/networking/core/accesslog.go`): file loggers (MeshConfig
//! `accessLogFile`, Telemetry `envoyFileAccessLog` providers) with a text or JSON format,
//! OpenTelemetry loggers (`envoyOtelAls` providers) exporting OTLP logs over gRPC to the
//! provider's cluster, and the filters istiod puts on them (Telemetry
//! `accessLogging.filter.expression` as a CEL extension filter; status-code and
//! response-flag filters, under `and`), access log service loggers (`envoyHttpAls`,
//! `envoyTcpAls` providers, [`super::grpc_access_log`]). Other sinks, filters and formatter extensions are
//! errors naming the field.

// The file logger's `format`/`json_format`, the text `text_format` and the OpenTelemetry
// logger's `common_config` are deprecated in Envoy's API but still accepted by Envoy;
// istiod sends `common_config`.
#![allow(deprecated)]

use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
use envoy_types::pb::envoy::config::accesslog::v3::access_log_filter::FilterSpecifier;
use envoy_types::pb::envoy::config::accesslog::v3::extension_filter::ConfigType as ExtConfig;
use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, AccessLogFilter, ComparisonFilter};
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
use envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::file_access_log::AccessLogFormat as FileFormat;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use envoy_types::pb::envoy::extensions::access_loggers::filters::cel::v3::ExpressionFilter;
use envoy_types::pb::envoy::extensions::access_loggers::open_telemetry::v3::OpenTelemetryAccessLogConfig;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stdout_access_log::AccessLogFormat as StdoutFormat;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::StdoutAccessLog;
use envoy_types::pb::google::protobuf::value::Kind;
use envoy_types::pb::opentelemetry::proto::common::v1::any_value::Value as OtelValue;
use envoy_types::pb::opentelemetry::proto::common::v1::KeyValueList;
use filters::cel::Expression;
use filters::model::telemetry::{
    AccessLog as Log, AccessLogConfig, AccessLogSink, Comparison, LogFilter, OtelLogConfig,
};
use prost::Message;

use super::Bad;

const FILE: &str = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
const OTEL: &str = "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig";
const CEL_FILTER: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter";

/// Envoy's format when a file logger names none.
const ENVOY_DEFAULT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// The log name when the logger sets none (istiod's default, `otel_envoy_accesslog`).
const OTEL_LOG_NAME: &str = "otel_envoy_accesslog";

/// The access logs of a connection manager, TCP proxy or listener (`at` is its place,
/// empty for the listener itself), in order.
pub fn convert(logs: &[AccessLog], at: &str) -> Result<Vec<Log>, Bad> {
    let dot = if at.is_empty() { "" } else { "." };
    logs.iter()
        .enumerate()
        .map(|(i, l)| one(l, &format!("{at}{dot}access_log[{i}]")))
        .collect()
}

fn one(log: &AccessLog, at: &str) -> Result<Log, Bad> {
    let filter = log
        .filter
        .as_ref()
        .map(|f| filter(f, &format!("{at}.filter")))
        .transpose()?;
    let any = match &log.config_type {
        Some(ConfigType::TypedConfig(a)) => a,
        None => return Err((at.into(), "a typed_config is required".into())),
    };
    let at = format!("{at}.typed_config");
    let decode_err = |e: prost::DecodeError| (at.clone(), e.to_string());
    let sink = match any.type_url.as_str() {
        FILE => {
            let f = FileAccessLog::decode(any.value.as_slice()).map_err(decode_err)?;
            if f.path.is_empty() {
                return Err((format!("{at}.path"), "a path is required".into()));
            }
            let format = match f.access_log_format {
                None => AccessLogConfig::Text(Some(ENVOY_DEFAULT.into())),
                Some(FileFormat::Format(s)) => AccessLogConfig::Text(Some(s)),
                Some(FileFormat::JsonFormat(s)) => json(&s, &format!("{at}.json_format"))?,
                Some(FileFormat::LogFormat(s)) => format(&s, &format!("{at}.log_format"))?,
                Some(FileFormat::TypedJsonFormat(_)) => {
                    return Err((
                        format!("{at}.typed_json_format"),
                        "typed JSON formats are not supported".into(),
                    ))
                }
            };
            AccessLogSink::File {
                path: f.path,
                format,
            }
        }
        STDOUT => {
            let f = StdoutAccessLog::decode(any.value.as_slice()).map_err(decode_err)?;
            let format = match f.access_log_format {
                None => AccessLogConfig::Text(Some(ENVOY_DEFAULT.into())),
                Some(StdoutFormat::LogFormat(s)) => format(&s, &format!("{at}.log_format"))?,
            };
            AccessLogSink::File {
                path: filters::model::telemetry::STDOUT.into(),
                format,
            }
        }
        OTEL => {
            let c = OpenTelemetryAccessLogConfig::decode(any.value.as_slice()).map_err(decode_err)?;
            AccessLogSink::OpenTelemetry(otel(c, &at)?)
        }
        super::grpc_access_log::HTTP_GRPC => {
            AccessLogSink::Grpc(super::grpc_access_log::http(&any.value, &at)?)
        }
        super::grpc_access_log::TCP_GRPC => {
            AccessLogSink::Grpc(super::grpc_access_log::tcp(&any.value, &at)?)
        }
        other => {
            return Err((
                at,
                format!(
                    "access logger {other} is not supported (file, stdout, OpenTelemetry and access log service loggers are)"
                ),
            ))
        }
    };
    // Formats are checked here so a bad operator is a NACK, not a silent line-less proxy.
    match &sink {
        AccessLogSink::File { format, .. } => {
            filters::access_log::Compiled::new(format).map_err(|e| (at.clone(), e.to_string()))?;
        }
        AccessLogSink::OpenTelemetry(o) => {
            for f in o.body.iter().chain(o.attributes.iter().map(|(_, v)| v)) {
                filters::access_log::Format::parse(f).map_err(|e| (at.clone(), e.to_string()))?;
            }
        }
        AccessLogSink::Grpc(_) => {}
    }
    Ok(Log { sink, filter })
}

/// An OpenTelemetry logger as istiod's `buildOpenTelemetryAccessLogConfig` writes it: the
/// gRPC service (in the deprecated `common_config`, or `grpc_service`), `body`,
/// `attributes`, `resource_attributes`, `disable_builtin_labels`.
fn otel(c: OpenTelemetryAccessLogConfig, at: &str) -> Result<OtelLogConfig, Bad> {
    let refuse = |field: &str, why: &str| Err((format!("{at}.{field}"), why.to_string()));
    if c.http_service.is_some() {
        return refuse(
            "http_service",
            "OTLP/HTTP log export is not supported (gRPC is)",
        );
    }
    if !c.resource_detectors.is_empty() {
        return refuse("resource_detectors", "resource detectors are not supported");
    }
    if !c.formatters.is_empty() {
        return refuse(
            "formatters",
            "formatter extensions (CEL, metadata...) are not supported",
        );
    }
    if !c.custom_tags.is_empty() {
        return refuse("custom_tags", "custom tags are not supported");
    }
    if !c.filter_state_objects_to_log.is_empty() {
        return refuse(
            "filter_state_objects_to_log",
            "filter state objects are not logged",
        );
    }
    if c.buffer_flush_interval.is_some() || c.buffer_size_bytes.is_some() {
        return refuse(
            "buffer_flush_interval",
            "buffer settings are not supported (records are batched every 500 ms or 512 records)",
        );
    }
    let (grpc, mut log_name, gat) = match (&c.common_config, &c.grpc_service) {
        (Some(_), Some(_)) => {
            return refuse(
                "grpc_service",
                "set grpc_service or common_config, not both",
            )
        }
        (Some(common), None) => {
            let cat = format!("{at}.common_config");
            if common.grpc_stream_retry_policy.is_some() {
                return Err((
                    format!("{cat}.grpc_stream_retry_policy"),
                    "retry policies are not supported".into(),
                ));
            }
            if !common.custom_tags.is_empty() {
                return Err((
                    format!("{cat}.custom_tags"),
                    "custom tags are not supported".into(),
                ));
            }
            if common.buffer_flush_interval.is_some() || common.buffer_size_bytes.is_some() {
                return Err((format!("{cat}.buffer_flush_interval"), "buffer settings are not supported (records are batched every 500 ms or 512 records)".into()));
            }
            // `transport_api_version` is V3 (or AUTO, which is V3); Envoy's OpenTelemetry
            // logger does not log `filter_state_objects_to_log` from the common
            // configuration (istiod sets it), so neither does the waypoint.
            if common.transport_api_version > 2 {
                return Err((
                    format!("{cat}.transport_api_version"),
                    "only V3 is supported".into(),
                ));
            }
            let Some(g) = &common.grpc_service else {
                return Err((
                    format!("{cat}.grpc_service"),
                    "a gRPC service is required".into(),
                ));
            };
            (g, common.log_name.clone(), cat)
        }
        (None, Some(g)) => (g, String::new(), at.to_string()),
        (None, None) => return refuse("grpc_service", "a gRPC service is required"),
    };
    if !c.log_name.is_empty() {
        log_name = c.log_name.clone();
    }
    if log_name.is_empty() {
        log_name = OTEL_LOG_NAME.into();
    }
    if grpc.retry_policy.is_some() {
        return Err((
            format!("{gat}.grpc_service.retry_policy"),
            "retry policies are not supported".into(),
        ));
    }
    let (collector, protocol, timeout) = super::tracing::grpc_exporter(grpc, &gat)?;
    let metadata = match protocol {
        filters::model::telemetry::OtlpProtocol::Grpc { metadata } => metadata,
        filters::model::telemetry::OtlpProtocol::Http { .. } => Vec::new(),
    };
    let authority = match &grpc.target_specifier {
        Some(
            envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier::EnvoyGrpc(e),
        ) => e.authority.clone(),
        _ => String::new(),
    };
    let body = match c.body.as_ref().and_then(|b| b.value.as_ref()) {
        None => None,
        Some(OtelValue::StringValue(s)) => Some(s.clone()),
        Some(_) => return refuse("body", "only a string body (a format string) is supported"),
    };
    let attributes = strings(c.attributes.as_ref(), &format!("{at}.attributes"))?;
    let resource_attributes = strings(
        c.resource_attributes.as_ref(),
        &format!("{at}.resource_attributes"),
    )?;
    Ok(OtelLogConfig {
        log_name,
        service: collector.host,
        port: collector.port,
        cluster: Some(collector.cluster),
        authority,
        body,
        attributes,
        resource_attributes,
        builtin_labels: !c.disable_builtin_labels,
        metadata,
        timeout,
    })
}

/// A key-value list whose values are strings.
fn strings(list: Option<&KeyValueList>, at: &str) -> Result<Vec<(String, String)>, Bad> {
    let mut out = Vec::new();
    for (i, kv) in list
        .map(|l| l.values.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
            Some(OtelValue::StringValue(s)) => out.push((kv.key.clone(), s.clone())),
            _ => {
                return Err((
                    format!("{at}.values[{i}]"),
                    format!("{:?}: only string values are supported", kv.key),
                ))
            }
        }
    }
    Ok(out)
}

/// An access log filter: the ones istiod writes (status code, response flags, CEL under
/// `and`), plus duration, `or` and not-health-check. Runtime keys are not read: the
/// default value is the value (a waypoint has no runtime layer; istiod sets a key that
/// never exists).
fn filter(f: &AccessLogFilter, at: &str) -> Result<LogFilter, Bad> {
    let Some(spec) = &f.filter_specifier else {
        return Err((at.into(), "an empty filter".into()));
    };
    Ok(match spec {
        FilterSpecifier::StatusCodeFilter(s) => {
            let (op, v) = comparison(s.comparison.as_ref(), &format!("{at}.status_code_filter"))?;
            LogFilter::Status(op, v)
        }
        FilterSpecifier::DurationFilter(d) => {
            let (op, v) = comparison(d.comparison.as_ref(), &format!("{at}.duration_filter"))?;
            LogFilter::Duration(op, v.into())
        }
        FilterSpecifier::NotHealthCheckFilter(_) => LogFilter::NotHealthCheck,
        FilterSpecifier::ResponseFlagFilter(r) => LogFilter::ResponseFlags(r.flags.clone()),
        FilterSpecifier::AndFilter(a) => LogFilter::And(
            a.filters
                .iter()
                .enumerate()
                .map(|(i, f)| filter(f, &format!("{at}.and_filter.filters[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        FilterSpecifier::OrFilter(o) => LogFilter::Or(
            o.filters
                .iter()
                .enumerate()
                .map(|(i, f)| filter(f, &format!("{at}.or_filter.filters[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        FilterSpecifier::ExtensionFilter(e) => {
            let eat = format!("{at}.extension_filter");
            let Some(ExtConfig::TypedConfig(any)) = &e.config_type else {
                return Err((eat, "a typed_config is required".into()));
            };
            if any.type_url != CEL_FILTER {
                return Err((
                    format!("{eat}.typed_config"),
                    format!(
                        "access log filter {} is not supported (CEL is)",
                        any.type_url
                    ),
                ));
            }
            let cel = ExpressionFilter::decode(any.value.as_slice())
                .map_err(|e| (format!("{eat}.typed_config"), e.to_string()))?;
            let expr = Expression::predicate(&cel.expression)
                .map_err(|e| (format!("{eat}.typed_config.expression"), e.to_string()))?;
            LogFilter::Cel(expr)
        }
        FilterSpecifier::TraceableFilter(_) => return unsupported(at, "traceable_filter"),
        FilterSpecifier::RuntimeFilter(_) => return unsupported(at, "runtime_filter"),
        FilterSpecifier::HeaderFilter(_) => return unsupported(at, "header_filter"),
        FilterSpecifier::GrpcStatusFilter(_) => return unsupported(at, "grpc_status_filter"),
        FilterSpecifier::MetadataFilter(_) => return unsupported(at, "metadata_filter"),
        FilterSpecifier::LogTypeFilter(_) => return unsupported(at, "log_type_filter"),
    })
}

fn unsupported<T>(at: &str, which: &str) -> Result<T, Bad> {
    Err((format!("{at}.{which}"), format!("{which} is not supported")))
}

fn comparison(c: Option<&ComparisonFilter>, at: &str) -> Result<(Comparison, u32), Bad> {
    use envoy_types::pb::envoy::config::accesslog::v3::comparison_filter::Op;
    let Some(c) = c else {
        return Err((
            format!("{at}.comparison"),
            "a comparison is required".into(),
        ));
    };
    let op = match Op::try_from(c.op) {
        Ok(Op::Eq) => Comparison::Eq,
        Ok(Op::Ge) => Comparison::Ge,
        Ok(Op::Le) => Comparison::Le,
        Ok(Op::Ne) => Comparison::Ne,
        Err(_) => {
            return Err((
                format!("{at}.comparison.op"),
                format!("unknown operator {}", c.op),
            ))
        }
    };
    let Some(v) = &c.value else {
        return Err((
            format!("{at}.comparison.value"),
            "a value is required".into(),
        ));
    };
    Ok((op, v.default_value))
}

fn format(s: &SubstitutionFormatString, at: &str) -> Result<AccessLogConfig, Bad> {
    if !s.formatters.is_empty() {
        return Err((
            format!("{at}.formatters"),
            "formatter extensions (CEL, metadata...) are not supported".into(),
        ));
    }
    if s.omit_empty_values {
        return Err((
            format!("{at}.omit_empty_values"),
            "omit_empty_values is not supported".into(),
        ));
    }
    match &s.format {
        None => Ok(AccessLogConfig::Text(Some(ENVOY_DEFAULT.into()))),
        Some(Format::TextFormat(t)) => Ok(AccessLogConfig::Text(Some(t.clone()))),
        Some(Format::TextFormatSource(d)) => match &d.specifier {
            Some(Specifier::InlineString(t)) => Ok(AccessLogConfig::Text(Some(t.clone()))),
            Some(Specifier::InlineBytes(b)) => Ok(AccessLogConfig::Text(Some(
                String::from_utf8_lossy(b).into_owned(),
            ))),
            _ => Err((
                format!("{at}.text_format_source"),
                "only inline formats are supported".into(),
            )),
        },
        Some(Format::JsonFormat(j)) => json(j, &format!("{at}.json_format")),
    }
}

/// A JSON format: every value must be a format string (nested objects and literals are
/// not supported), in key order as Envoy writes them.
fn json(s: &envoy_types::pb::google::protobuf::Struct, at: &str) -> Result<AccessLogConfig, Bad> {
    let mut keys: Vec<(&String, _)> = s.fields.iter().collect();
    keys.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(keys.len());
    for (k, v) in keys {
        match &v.kind {
            Some(Kind::StringValue(f)) => out.push((k.clone(), f.clone())),
            _ => {
                return Err((
                    format!("{at}.{k}"),
                    "only format strings are supported as JSON values".into(),
                ))
            }
        }
    }
    Ok(AccessLogConfig::Json(Some(out)))
}
