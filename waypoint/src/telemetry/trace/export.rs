//! Span export: a bounded queue in front of the OTLP exporter, drained by one task in
//! batches. Ending a span never waits: when the queue is full (a slow or dead collector)
//! the span is dropped and counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use filters::model::telemetry::{OtlpProtocol, TracingConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter, SpanProcessor};
use tokio::sync::mpsc;

/// Spans queued before new ones are dropped.
pub const QUEUE: usize = 2048;
/// Spans per export call.
const BATCH: usize = 512;
/// Longest a span waits for its batch to fill.
const LINGER: Duration = Duration::from_millis(500);

/// Export counters.
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans dropped: the queue was full, or the export failed or timed out.
    pub dropped: AtomicU64,
    /// Export calls that failed or timed out.
    pub failed_exports: AtomicU64,
}

/// The span processor: hands finished spans to the export task without blocking.
#[derive(Debug)]
pub struct QueueProcessor {
    tx: mpsc::Sender<SpanData>,
    stats: Arc<ExportStats>,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.tx.try_send(span).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Builds the OTLP exporter for `config`.
fn exporter(config: &TracingConfig) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
    match &config.protocol {
        OtlpProtocol::Grpc { metadata } => {
            let mut map = tonic::metadata::MetadataMap::new();
            for (k, v) in metadata {
                let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())
                    .map_err(|e| format!("metadata {k}: {e}"))?;
                let value = v.parse().map_err(|e| format!("metadata {k}: {e}"))?;
                map.insert(key, value);
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(format!("http://{}", config.endpoint))
                .with_timeout(config.timeout)
                .with_metadata(map)
                .build()
                .map_err(|e| e.to_string())
        }
        OtlpProtocol::Http { path, headers } => {
            let client = opentelemetry_http::hyper::HyperClient::with_default_connector(
                config.timeout,
                None,
            );
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_endpoint(format!("http://{}{}", config.endpoint, path))
                .with_timeout(config.timeout)
                .with_headers(headers.iter().cloned().collect())
                .build()
                .map_err(|e| e.to_string())
        }
    }
}

/// Starts the export task for `config` and returns the processor feeding it. The task
/// ends when the processor (and so the tracer provider) is dropped.
pub fn start(config: &TracingConfig, stats: Arc<ExportStats>) -> Result<QueueProcessor, String> {
    let exporter = exporter(config)?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let timeout = config.timeout;
    tokio::spawn(run(exporter, rx, stats.clone(), timeout));
    Ok(QueueProcessor { tx, stats })
}

async fn run(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    stats: Arc<ExportStats>,
    timeout: Duration,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let spans = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
        match tokio::time::timeout(timeout, exporter.export(spans)).await {
            Ok(Ok(())) => {
                stats.exported.fetch_add(n, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                stats.dropped.fetch_add(n, Ordering::Relaxed);
                stats.failed_exports.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, spans = n, "span export failed");
            }
            Err(_) => {
                stats.dropped.fetch_add(n, Ordering::Relaxed);
                stats.failed_exports.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(spans = n, "span export timed out");
            }
        }
    }
}
