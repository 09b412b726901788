//! OpenTelemetry access logs (Envoy's `envoy.access_loggers.open_telemetry`): each logged
//! request becomes an OTLP `LogRecord` (the request's start time, the formatted body and
//! attributes), queued without blocking and exported in batches with
//! `LogsService/Export` over gRPC, through the same path as spans: the provider's Service
//! is resolved in the snapshot ([`crate::upstream::dial`]) and reached through the
//! upstream pools (HBONE to mesh pods, plain TCP otherwise). A full queue or a failed
//! export drops records and counts them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use filters::model::telemetry::OtelLogConfig;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio::sync::mpsc;

use crate::state::Proxy;
use crate::telemetry::trace::export::{self, ExportError};
use crate::upstream::dial::{self, Destination};
use crate::upstream::grpc::PoolChannel;

/// Records queued before new ones are dropped.
const QUEUE: usize = 2048;

/// Export counters (across loggers).
#[derive(Debug, Default)]
pub struct OtlpStats {
    /// Records the collector accepted.
    pub exported: AtomicU64,
    /// Records dropped: the queue was full, or the export failed or timed out.
    pub dropped: AtomicU64,
}

/// One OpenTelemetry logger's queue; the export task ends when it is dropped.
pub struct OtlpLogger {
    tx: mpsc::Sender<LogRecord>,
    stats: Arc<OtlpStats>,
}

/// A string attribute.
pub fn kv(key: &str, value: String) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value)),
        }),
        ..Default::default()
    }
}

/// The record of one request.
pub fn record(start: SystemTime, body: Option<String>, attributes: Vec<KeyValue>) -> LogRecord {
    let nanos = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    };
    LogRecord {
        time_unix_nano: nanos(start),
        observed_time_unix_nano: nanos(SystemTime::now()),
        body: body.map(|b| AnyValue {
            value: Some(any_value::Value::StringValue(b)),
        }),
        attributes,
        ..Default::default()
    }
}

impl OtlpLogger {
    /// Starts the export task for `config`; every batch carries `resource`.
    pub fn start(
        config: &OtelLogConfig,
        resource: Vec<KeyValue>,
        proxy: Weak<Proxy>,
        stats: Arc<OtlpStats>,
    ) -> Result<Self, String> {
        for (k, v) in &config.metadata {
            tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(k.as_bytes())
                .map_err(|e| format!("metadata {k}: {e}"))?;
            tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(v.as_str())
                .map_err(|e| format!("metadata {k}: {e}"))?;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let exporter = Exporter {
            config: config.clone(),
            resource: Resource {
                attributes: resource,
                ..Default::default()
            },
            proxy,
        };
        tokio::spawn(run(exporter, rx, stats.clone()));
        Ok(Self { tx, stats })
    }

    /// Queues one record; drops (and counts) it when the queue is full.
    pub fn send(&self, record: LogRecord) {
        if self.tx.try_send(record).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

struct Exporter {
    config: OtelLogConfig,
    resource: Resource,
    proxy: Weak<Proxy>,
}

async fn run(exporter: Exporter, rx: mpsc::Receiver<LogRecord>, stats: Arc<OtlpStats>) {
    let exporter = &exporter;
    let export = |records| async move { exporter.export(records).await.map_err(|e| e.to_string()) };
    crate::telemetry::batch::run(rx, exporter.config.timeout, export, |n, outcome| match outcome {
        Ok(()) => {
            stats.exported.fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => {
            stats.dropped.fetch_add(n, Ordering::Relaxed);
            tracing::debug!(error = %e, records = n, collector = %exporter.config.endpoint(), log = %exporter.config.log_name, "access log export failed");
        }
    })
    .await
}

impl Exporter {
    async fn export(&self, records: Vec<LogRecord>) -> Result<(), ExportError> {
        let proxy = self.proxy.upgrade().ok_or(ExportError::Gone)?;
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource.clone()),
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let snapshot = proxy.config.current();
        let to = Destination {
            host: &self.config.service,
            port: self.config.port,
            cluster: self.config.cluster.as_deref(),
        };
        let endpoint = dial::resolve_as(&snapshot, to, &self.config.authority).await?;
        let mut client = LogsServiceClient::new(PoolChannel::new(proxy, endpoint));
        let req = export::grpc_request(request, &self.config.metadata)?;
        export::grpc_outcome(client.export(req).await)
    }
}
