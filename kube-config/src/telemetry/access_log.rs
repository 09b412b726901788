//! Telemetry `accessLogging` and MeshConfig `accessLogFile` into the access log settings.

use filters::model::telemetry::AccessLogConfig;

use super::*;

pub(super) fn access_log(
    spec: Option<(&str, &Vec<AccessLoggingSpec>)>,
    mesh: &MeshConfig,
) -> Result<Option<AccessLogConfig>, LocalConfigError> {
    let config = match spec {
        Some((label, list)) => {
            let Some(a) = list.first() else {
                return Ok(None);
            };
            if a.disabled == Some(true) {
                return Ok(None);
            }
            if a.filter.is_some() {
                return Err(invalid(
                    label,
                    "spec.accessLogging[0].filter",
                    "CEL filters are not supported",
                ));
            }
            if a.match_.is_some() {
                return Err(invalid(
                    label,
                    "spec.accessLogging[0].match",
                    "matching by traffic mode is not supported",
                ));
            }
            let names: Vec<String> = if a.providers.is_empty() {
                mesh.default_providers.access_logging.clone()
            } else {
                a.providers.iter().map(|p| p.name.clone()).collect()
            };
            let Some(name) = names.first() else {
                return Ok(None);
            };
            let field = "spec.accessLogging[0].providers";
            match find_provider(mesh, name, label, field)? {
                None => mesh_format(mesh),
                Some((index, p)) => match &p.envoy_file_access_log {
                    Some(v) => {
                        let f: FileAccessLog = provider_settings(p, index, v)?;
                        if let Some(path) = f.path.as_deref().filter(|p| *p != "/dev/stdout") {
                            return Err(invalid(label, field, format!("provider {name:?} writes to {path}; only /dev/stdout is supported")));
                        }
                        match f.log_format {
                            Some(LogFormat {
                                text: Some(t),
                                labels: None,
                            }) => AccessLogConfig::Text(Some(t)),
                            Some(LogFormat {
                                text: None,
                                labels: Some(l),
                            }) => AccessLogConfig::Json(Some(l.into_iter().collect())),
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
                        }
                    }
                    None => {
                        return Err(invalid(
                            label,
                            field,
                            format!(
                                "provider {name:?} is {}; only envoyFileAccessLog is supported",
                                p.kind()
                            ),
                        ))
                    }
                },
            }
        }
        None => match mesh.access_log_file.as_deref() {
            None | Some("") => return Ok(None),
            Some("/dev/stdout") => mesh_format(mesh),
            Some(other) => {
                return Err(invalid(
                    "MeshConfig",
                    "accessLogFile",
                    format!("{other}: only /dev/stdout is supported"),
                ))
            }
        },
    };
    filters::access_log::Compiled::new(&config)
        .map_err(|e| invalid("access log", "format", e.to_string()))?;
    Ok(Some(config))
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
