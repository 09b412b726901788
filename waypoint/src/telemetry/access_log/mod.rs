//! Access logs: off by default; on when MeshConfig `accessLogFile` or a `Telemetry`
//! resource (or the connection manager's `access_log` over xDS) turns them on. Each
//! configured log keeps the requests its filter lets through and writes them as lines to
//! stdout or a file ([`writer`], non-blocking), exports them as OTLP log records
//! ([`otlp`]), or streams them to an access log service ([`als`], entries from
//! [`als_entry`]). Formats and filters are compiled once per configuration snapshot.

mod als;
mod als_entry;
mod otlp;
mod writer;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use als::AlsLogger;
pub use als::AlsStats;
use filters::access_log::{keeps, Compiled, Format, HttpRecord};
use filters::cel::Activation;
use filters::model::telemetry::{
    AccessLog as LogConfig, AccessLogSink, GrpcLogConfig, GrpcLogKind, LogFilter, OtelLogConfig,
    STDOUT,
};
use filters::Snapshot;
use otlp::OtlpLogger;
pub use otlp::OtlpStats;
use writer::LineWriter;

/// One compiled access log.
enum Sink {
    Lines {
        filter: Option<LogFilter>,
        format: Compiled,
        writer: Arc<LineWriter>,
    },
    Otel {
        filter: Option<LogFilter>,
        body: Option<Format>,
        attributes: Vec<(String, Format)>,
        logger: Arc<OtlpLogger>,
    },
    Als {
        filter: Option<LogFilter>,
        config: GrpcLogConfig,
        logger: Arc<AlsLogger>,
    },
}

/// The compiled sinks of one snapshot version, by the address of the configured list.
type BySlice = HashMap<usize, Arc<[Sink]>>;

/// Writes access log entries for the configuration in force.
pub struct AccessLog {
    proxy: Weak<crate::state::Proxy>,
    node_id: String,
    // Writers by path; kept across configurations (a file stays open).
    writers: Mutex<HashMap<String, Arc<LineWriter>>>,
    // The compiled logs of one snapshot version, by the address of the configured list (a
    // snapshot has the waypoint's lists and those of Service ports with their own).
    active: Mutex<Option<(u64, BySlice)>>,
    // OpenTelemetry loggers in use, by settings (and service cluster): reused while a sink
    // holds them, so a configuration push does not restart an unchanged exporter.
    loggers: Mutex<Vec<(OtelLogConfig, String, Weak<OtlpLogger>)>>,
    // Access log service loggers in use, the same way.
    als_loggers: Mutex<Vec<(GrpcLogConfig, String, Weak<AlsLogger>)>>,
    /// OpenTelemetry export counters.
    pub otlp: Arc<OtlpStats>,
    /// Access log service counters.
    pub als: Arc<AlsStats>,
}

impl AccessLog {
    /// Access logs of the proxy `proxy` (its pools reach OpenTelemetry collectors), whose
    /// node id is `node_id` (Envoy's built-in `node_name` resource label).
    pub fn new(proxy: Weak<crate::state::Proxy>, node_id: &str) -> Self {
        Self {
            proxy,
            node_id: node_id.to_string(),
            writers: Mutex::default(),
            active: Mutex::default(),
            loggers: Mutex::default(),
            als_loggers: Mutex::default(),
            otlp: Arc::default(),
            als: Arc::default(),
        }
    }

    /// Logs `record` to every log of `logs` (the snapshot's) whose filter keeps it;
    /// `facts` answers CEL filters.
    pub fn log(
        &self,
        snapshot: &Snapshot,
        logs: &[LogConfig],
        record: &HttpRecord,
        facts: &dyn Activation,
    ) {
        if logs.is_empty() {
            return;
        }
        let sinks = self.sinks(snapshot, logs);
        for sink in sinks.iter() {
            match sink {
                Sink::Lines {
                    filter,
                    format,
                    writer,
                } => {
                    if filter.as_ref().is_none_or(|f| keeps(f, record, facts)) {
                        writer.write(format.render(record));
                    }
                }
                Sink::Otel {
                    filter,
                    body,
                    attributes,
                    logger,
                } => {
                    if filter.as_ref().is_none_or(|f| keeps(f, record, facts)) {
                        let attrs = attributes
                            .iter()
                            .map(|(k, f)| otlp::kv(k, f.render(record)))
                            .collect();
                        let body = body.as_ref().map(|f| f.render(record));
                        logger.send(otlp::record(record.start, body, attrs));
                    }
                }
                Sink::Als {
                    filter,
                    config,
                    logger,
                } => {
                    if filter.as_ref().is_none_or(|f| keeps(f, record, facts)) {
                        logger.send(match config.kind {
                            GrpcLogKind::Http => {
                                als::Entry::Http(Box::new(als_entry::http(config, record, facts)))
                            }
                            GrpcLogKind::Tcp => {
                                als::Entry::Tcp(Box::new(als_entry::tcp(config, record, facts)))
                            }
                        });
                    }
                }
            }
        }
    }

    fn sinks(&self, snapshot: &Snapshot, logs: &[LogConfig]) -> Arc<[Sink]> {
        let mut slot = self.active.lock().unwrap_or_else(|e| e.into_inner());
        // The previous version's sinks stay alive until the new ones are built, so that
        // unchanged OpenTelemetry loggers are reused.
        let stale = match &*slot {
            Some((version, _)) if *version == snapshot.version() => None,
            _ => slot.take(),
        };
        let (_, compiled) = slot.get_or_insert_with(|| (snapshot.version(), HashMap::new()));
        let key = logs.as_ptr() as usize;
        if let Some(sinks) = compiled.get(&key) {
            return sinks.clone();
        }
        let gw = &snapshot.waypoint().gateway;
        let service_cluster = format!("{}.{}", gw.name, gw.namespace);
        let mut loggers = self.loggers.lock().unwrap_or_else(|e| e.into_inner());
        let mut sinks = Vec::with_capacity(logs.len());
        for log in logs {
            match self.compile(log, &service_cluster, &mut loggers) {
                Ok(sink) => sinks.push(sink),
                Err(e) => {
                    // Configuration sources validate logs before publishing; this is a
                    // last line of defence.
                    tracing::warn!(error = %e, "access log disabled");
                }
            }
        }
        let sinks: Arc<[Sink]> = sinks.into();
        compiled.insert(key, sinks.clone());
        drop(stale);
        // Loggers no longer configured end when their last sink goes.
        loggers.retain(|(_, _, l)| l.strong_count() > 0);
        self.als_loggers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(_, _, l)| l.strong_count() > 0);
        sinks
    }

    fn compile(
        &self,
        log: &LogConfig,
        service_cluster: &str,
        loggers: &mut Vec<(OtelLogConfig, String, Weak<OtlpLogger>)>,
    ) -> Result<Sink, String> {
        let filter = log.filter.clone();
        match &log.sink {
            AccessLogSink::File { path, format } => {
                let format = Compiled::new(format).map_err(|e| e.to_string())?;
                let writer = self
                    .writers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(path.clone())
                    .or_insert_with(|| {
                        Arc::new(if path == STDOUT {
                            LineWriter::stdout()
                        } else {
                            LineWriter::file(path)
                        })
                    })
                    .clone();
                Ok(Sink::Lines {
                    filter,
                    format,
                    writer,
                })
            }
            AccessLogSink::OpenTelemetry(c) => {
                let parse = |f: &str| Format::parse(f).map_err(|e| e.to_string());
                let body = c.body.as_deref().map(parse).transpose()?;
                let attributes = c
                    .attributes
                    .iter()
                    .map(|(k, f)| Ok((k.clone(), parse(f)?)))
                    .collect::<Result<_, String>>()?;
                let existing = loggers
                    .iter()
                    .filter(|(cfg, sc, _)| cfg == c && sc == service_cluster)
                    .find_map(|(_, _, l)| l.upgrade());
                let logger = match existing {
                    Some(l) => l,
                    None => {
                        let l = OtlpLogger::start(
                            c,
                            self.resource(c, service_cluster),
                            self.proxy.clone(),
                            self.otlp.clone(),
                        )?;
                        tracing::info!(log = %c.log_name, collector = %c.endpoint(), "OpenTelemetry access log configured");
                        let l = Arc::new(l);
                        loggers.push((c.clone(), service_cluster.to_string(), Arc::downgrade(&l)));
                        l
                    }
                };
                Ok(Sink::Otel {
                    filter,
                    body,
                    attributes,
                    logger,
                })
            }
            AccessLogSink::Grpc(c) => {
                let mut loggers = self.als_loggers.lock().unwrap_or_else(|e| e.into_inner());
                let existing = loggers
                    .iter()
                    .filter(|(cfg, sc, _)| cfg == c && sc == service_cluster)
                    .find_map(|(_, _, l)| l.upgrade());
                let logger = match existing {
                    Some(l) => l,
                    None => {
                        let node = envoy_types::pb::envoy::config::core::v3::Node {
                            id: self.node_id.clone(),
                            cluster: service_cluster.to_string(),
                            ..Default::default()
                        };
                        let l = AlsLogger::start(c, node, self.proxy.clone(), self.als.clone())?;
                        tracing::info!(log = %c.log_name, service = %c.endpoint(), "access log service logger configured");
                        let l = Arc::new(l);
                        loggers.push((c.clone(), service_cluster.to_string(), Arc::downgrade(&l)));
                        l
                    }
                };
                Ok(Sink::Als {
                    filter,
                    config: c.clone(),
                    logger,
                })
            }
        }
    }

    /// Envoy's resource: the built-in labels (unless disabled), then the configured
    /// attributes, which win.
    fn resource(
        &self,
        c: &OtelLogConfig,
        service_cluster: &str,
    ) -> Vec<opentelemetry_proto::tonic::common::v1::KeyValue> {
        let mut attrs: Vec<(String, String)> = Vec::new();
        if c.builtin_labels {
            attrs.push(("log_name".into(), c.log_name.clone()));
            attrs.push(("zone_name".into(), String::new()));
            attrs.push(("cluster_name".into(), service_cluster.to_string()));
            attrs.push(("node_name".into(), self.node_id.clone()));
        }
        for (k, v) in &c.resource_attributes {
            attrs.retain(|(a, _)| a != k);
            attrs.push((k.clone(), v.clone()));
        }
        attrs.into_iter().map(|(k, v)| otlp::kv(&k, v)).collect()
    }

    /// `(written, dropped)` counts: lines, exported records and streamed entries.
    pub fn counts(&self) -> (u64, u64) {
        let writers = self.writers.lock().unwrap_or_else(|e| e.into_inner());
        let (mut written, mut dropped) = (
            self.otlp.exported.load(Ordering::Relaxed) + self.als.sent.load(Ordering::Relaxed),
            self.otlp.dropped.load(Ordering::Relaxed) + self.als.dropped.load(Ordering::Relaxed),
        );
        for w in writers.values() {
            written += w.stats().written.load(Ordering::Relaxed);
            dropped += w.stats().dropped.load(Ordering::Relaxed);
        }
        (written, dropped)
    }
}
