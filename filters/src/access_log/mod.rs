//! Access log lines: Envoy format strings (text, or JSON keys to format strings) rendered
//! from the facts of one finished request. Pure; the proxy owns the writer.

pub mod filter;
pub mod format;
pub mod record;

pub use filter::keeps;
pub use format::{Format, InvalidFormat, ISTIO_JSON, ISTIO_TEXT};
pub use record::HttpRecord;

use crate::model::telemetry::AccessLogConfig;

/// A compiled access log configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum Compiled {
    /// One format string.
    Text(Format),
    /// JSON object keys and the format of each value.
    Json(Vec<(String, Format)>),
}

impl Compiled {
    /// Compiles `config`, naming a bad operator.
    pub fn new(config: &AccessLogConfig) -> Result<Self, InvalidFormat> {
        Ok(match config {
            AccessLogConfig::Text(f) => {
                let mut s = f.clone().unwrap_or_else(|| ISTIO_TEXT.to_string());
                if !s.ends_with('\n') {
                    s.push('\n');
                }
                Compiled::Text(Format::parse(&s)?)
            }
            AccessLogConfig::Json(keys) => {
                let pairs: Vec<(String, String)> = match keys {
                    Some(k) => k.clone(),
                    None => ISTIO_JSON
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                };
                let mut out = Vec::with_capacity(pairs.len());
                for (k, v) in pairs {
                    out.push((k, Format::parse(&v)?));
                }
                Compiled::Json(out)
            }
        })
    }

    /// The line for `record`, newline-terminated.
    pub fn render(&self, record: &HttpRecord) -> String {
        match self {
            Compiled::Text(f) => f.render(record),
            Compiled::Json(keys) => {
                let mut map = serde_json::Map::with_capacity(keys.len());
                for (k, f) in keys {
                    map.insert(k.clone(), f.render_json(record));
                }
                let mut s = serde_json::Value::Object(map).to_string();
                s.push('\n');
                s
            }
        }
    }
}
