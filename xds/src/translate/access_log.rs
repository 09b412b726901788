//! The connection manager's `access_log` as istiod writes it for MeshConfig
//! `accessLogFile: /dev/stdout` or a Telemetry `accessLogging` with the envoy file provider:
//! one file logger to the proxy's stdout, with a text or JSON format. The waypoint writes
//! the same lines to its stdout. Other sinks, access log filters, and formats the waypoint
//! cannot reproduce are errors naming the field.

// The file logger's `format`/`json_format` and the text `text_format` are deprecated in
// Envoy's API but still accepted by Envoy; a control plane may send them.
#![allow(deprecated)]

use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType;
use envoy_types::pb::envoy::config::accesslog::v3::AccessLog;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
use envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::file_access_log::AccessLogFormat as FileFormat;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::FileAccessLog;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stdout_access_log::AccessLogFormat as StdoutFormat;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::StdoutAccessLog;
use envoy_types::pb::google::protobuf::value::Kind;
use filters::model::telemetry::AccessLogConfig;
use prost::Message;

use super::Bad;

const FILE: &str = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";
const STDOUT: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";

/// Envoy's format when a file logger names none.
const ENVOY_DEFAULT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// The access log of a connection manager (`at` is its place), or `None` without one.
pub fn convert(logs: &[AccessLog], at: &str) -> Result<Option<AccessLogConfig>, Bad> {
    let Some(first) = logs.first() else {
        return Ok(None);
    };
    if logs.len() > 1 {
        return Err((
            format!("{at}.access_log[1]"),
            "one access log is supported (the proxy's stdout)".into(),
        ));
    }
    let at = format!("{at}.access_log[0]");
    if first.filter.is_some() {
        return Err((
            format!("{at}.filter"),
            "access log filters are not supported".into(),
        ));
    }
    let any = match &first.config_type {
        Some(ConfigType::TypedConfig(a)) => a,
        None => return Err((at, "a typed_config is required".into())),
    };
    let decode_err = |e: prost::DecodeError| (format!("{at}.typed_config"), e.to_string());
    let config = match any.type_url.as_str() {
        FILE => {
            let f = FileAccessLog::decode(any.value.as_slice()).map_err(decode_err)?;
            if f.path != "/dev/stdout" {
                return Err((
                    format!("{at}.typed_config.path"),
                    format!("{:?}: only /dev/stdout is supported", f.path),
                ));
            }
            match f.access_log_format {
                None => AccessLogConfig::Text(Some(ENVOY_DEFAULT.into())),
                Some(FileFormat::Format(s)) => AccessLogConfig::Text(Some(s)),
                Some(FileFormat::JsonFormat(s)) => {
                    json(&s, &format!("{at}.typed_config.json_format"))?
                }
                Some(FileFormat::LogFormat(s)) => {
                    format(&s, &format!("{at}.typed_config.log_format"))?
                }
                Some(FileFormat::TypedJsonFormat(_)) => {
                    return Err((
                        format!("{at}.typed_config.typed_json_format"),
                        "typed JSON formats are not supported".into(),
                    ))
                }
            }
        }
        STDOUT => {
            let f = StdoutAccessLog::decode(any.value.as_slice()).map_err(decode_err)?;
            match f.access_log_format {
                None => AccessLogConfig::Text(Some(ENVOY_DEFAULT.into())),
                Some(StdoutFormat::LogFormat(s)) => {
                    format(&s, &format!("{at}.typed_config.log_format"))?
                }
            }
        }
        other => {
            return Err((
                format!("{at}.typed_config"),
                format!(
                    "access logger {other} is not supported (only a file logger to /dev/stdout)"
                ),
            ))
        }
    };
    // Formats are checked here so a bad operator is a NACK, not a silent line-less proxy.
    filters::access_log::Compiled::new(&config).map_err(|e| (at.clone(), e.to_string()))?;
    Ok(Some(config))
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
