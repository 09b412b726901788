//! Access logs: off by default; on when MeshConfig `accessLogFile` or a `Telemetry`
//! resource turns them on. One line per request to stdout, through a non-blocking writer.

mod writer;

use std::sync::{Arc, Mutex, OnceLock};

use filters::access_log::{Compiled, HttpRecord};
use filters::model::telemetry::AccessLogConfig;
use writer::LineWriter;

/// Writes access log lines for the configuration in force.
#[derive(Default)]
pub struct AccessLog {
    writer: OnceLock<LineWriter>,
    // The configuration the compiled format was built from.
    compiled: Mutex<Option<(AccessLogConfig, Arc<Compiled>)>>,
}

impl AccessLog {
    /// Logs `record` if `config` turns logging on.
    pub fn log(&self, config: Option<&AccessLogConfig>, record: &HttpRecord) {
        let Some(config) = config else { return };
        let Some(compiled) = self.compiled_for(config) else {
            return;
        };
        self.writer
            .get_or_init(LineWriter::stdout)
            .write(compiled.render(record));
    }

    fn compiled_for(&self, config: &AccessLogConfig) -> Option<Arc<Compiled>> {
        let mut slot = self.compiled.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((c, compiled)) = &*slot {
            if c == config {
                return Some(compiled.clone());
            }
        }
        match Compiled::new(config) {
            Ok(c) => {
                let c = Arc::new(c);
                *slot = Some((config.clone(), c.clone()));
                Some(c)
            }
            Err(e) => {
                // Configuration sources validate formats before publishing; this is a last
                // line of defence.
                tracing::warn!(error = %e, "access log disabled");
                None
            }
        }
    }

    /// `(written, dropped)` line counts.
    pub fn counts(&self) -> (u64, u64) {
        self.writer
            .get()
            .map(|w| (w.written(), w.dropped()))
            .unwrap_or((0, 0))
    }
}
