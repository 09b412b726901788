//! `/logging`: the log level, read and changed at run time (Envoy's admin endpoint; Envoy's
//! per-component logger names have no counterpart here, so only `level=` is accepted).

use std::sync::{Mutex, OnceLock};

use http::{Response, StatusCode};

/// Applies a filter (`info`, `debug`, `waypoint=debug,h2=info`, ...).
pub type Apply = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

struct Control {
    apply: Apply,
    current: Mutex<String>,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Installs the function that changes the process's log filter (the binary does this when
/// it sets up logging).
pub fn install(current: &str, apply: Apply) {
    let _ = CONTROL.set(Control {
        apply,
        current: Mutex::new(current.to_string()),
    });
}

/// Envoy's level names as a tracing filter; `None` for a name Envoy does not have.
pub fn filter_for(level: &str) -> Option<&'static str> {
    Some(match level {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warning" | "warn" => "warn",
        "error" | "critical" => "error",
        "off" => "off",
        _ => return None,
    })
}

/// `GET` lists the level; `POST ?level=<level>` changes it.
pub fn handle(post: bool, query: &str) -> Response<Vec<u8>> {
    let Some(c) = CONTROL.get() else {
        return super::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "logging is not controllable in this process\n",
            "text/plain",
        );
    };
    if post {
        let level = query.split('&').find_map(|p| p.strip_prefix("level="));
        let Some(filter) = level.and_then(filter_for) else {
            return super::text(
                StatusCode::BAD_REQUEST,
                "usage: POST /logging?level=<trace|debug|info|warning|error|critical|off>\n",
                "text/plain",
            );
        };
        if let Err(e) = (c.apply)(filter) {
            return super::text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{e}\n"),
                "text/plain",
            );
        }
        *c.current.lock().unwrap_or_else(|e| e.into_inner()) = filter.to_string();
        tracing::info!(filter, "log level changed over the admin API");
    }
    let current = c.current.lock().unwrap_or_else(|e| e.into_inner()).clone();
    super::text(
        StatusCode::OK,
        format!("active loggers:\n  waypoint: {current}\n"),
        "text/plain",
    )
}
