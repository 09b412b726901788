//! Span export: a bounded queue in front of the OTLP client, drained by one task in
//! batches. Ending a span never waits: when the queue is full (a slow or dead collector)
//! the span is dropped and counted.
//!
//! The collector is reached as Envoy reaches its cluster: the provider's Service through
//! the snapshot ([`crate::upstream::dial`]: its endpoints over HBONE when the collector
//! pod is in the mesh, plain TCP otherwise; DNS only for a name the registry does not
//! have), with the upstream pools. Each batch resolves the endpoint again, so it follows
//! the snapshot's endpoints. OTLP/gRPC is `TraceService/Export` over HTTP/2; OTLP/HTTP is
//! a protobuf `POST` to the provider's path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use filters::model::telemetry::{OtlpProtocol, TracingConfig};
use filters::ProxyError;
use http::{header, Uri, Version};
use http_body_util::{BodyExt, Limited};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};
use prost::Message;
use tokio::sync::mpsc;

use crate::state::Proxy;
use crate::upstream::dial::{self, Destination, DialError};
use crate::upstream::grpc::PoolChannel;

/// Spans queued before new ones are dropped.
pub const QUEUE: usize = 2048;
/// Largest collector reply read (OTLP/HTTP).
const MAX_REPLY_BYTES: usize = 64 * 1024;

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

/// Why one export call failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The proxy is shutting down.
    #[error("the proxy is gone")]
    Gone,
    /// The collector cannot be reached.
    #[error("collector unreachable: {0}")]
    Dial(#[from] DialError),
    /// The connection or the request failed.
    #[error("{0}")]
    Upstream(#[from] ProxyError),
    /// The collector answered with a gRPC error (or the call failed on its way).
    #[error("gRPC status {code:?}: {message}")]
    Grpc {
        /// The status code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The collector answered with an HTTP error.
    #[error("HTTP status {0}")]
    Http(http::StatusCode),
    /// A header or URI from the configuration is not valid.
    #[error("invalid request: {0}")]
    Request(String),
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

/// One exporter: the settings, the resource every batch carries, the proxy whose
/// snapshot and pools it uses.
struct Exporter {
    config: TracingConfig,
    resource: ResourceAttributesWithSchema,
    proxy: Weak<Proxy>,
}

/// Checks `config`'s headers and metadata (so a bad one disables tracing at once rather
/// than failing every export).
fn validate(config: &TracingConfig) -> Result<(), String> {
    match &config.protocol {
        OtlpProtocol::Grpc { metadata } => {
            for (k, v) in metadata {
                tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(k.as_bytes())
                    .map_err(|e| format!("metadata {k}: {e}"))?;
                tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(v.as_str())
                    .map_err(|e| format!("metadata {k}: {e}"))?;
            }
        }
        OtlpProtocol::Http { path, headers } => {
            path.parse::<http::uri::PathAndQuery>()
                .map_err(|e| format!("path {path}: {e}"))?;
            for (k, v) in headers {
                header::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|e| format!("header {k}: {e}"))?;
                header::HeaderValue::from_str(v).map_err(|e| format!("header {k}: {e}"))?;
            }
        }
    }
    Ok(())
}

/// Starts the export task for `config` and returns the processor feeding it. The task
/// ends when the processor (and so the tracer provider) is dropped.
pub fn start(
    config: &TracingConfig,
    resource: &opentelemetry_sdk::Resource,
    proxy: Weak<Proxy>,
    stats: Arc<ExportStats>,
) -> Result<QueueProcessor, String> {
    validate(config)?;
    let exporter = Exporter {
        config: config.clone(),
        resource: resource.into(),
        proxy,
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(run(exporter, rx, stats.clone()));
    Ok(QueueProcessor { tx, stats })
}

async fn run(exporter: Exporter, rx: mpsc::Receiver<SpanData>, stats: Arc<ExportStats>) {
    let exporter = &exporter;
    let export = |spans| async move { exporter.export(spans).await.map_err(|e| e.to_string()) };
    crate::telemetry::batch::run(rx, exporter.config.timeout, export, |n, outcome| match outcome {
        Ok(()) => {
            stats.exported.fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => {
            stats.dropped.fetch_add(n, Ordering::Relaxed);
            stats.failed_exports.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, spans = n, collector = %exporter.config.endpoint(), "span export failed");
        }
    })
    .await
}

impl Exporter {
    /// Sends one batch to the collector.
    async fn export(&self, spans: Vec<SpanData>) -> Result<(), ExportError> {
        let proxy = self.proxy.upgrade().ok_or(ExportError::Gone)?;
        let request = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(spans, &self.resource),
        };
        let snapshot = proxy.config.current();
        let to = Destination {
            host: &self.config.service,
            port: self.config.port,
            cluster: self.config.cluster.as_deref(),
        };
        let endpoint = dial::resolve(&snapshot, to).await?;
        match &self.config.protocol {
            OtlpProtocol::Grpc { metadata } => {
                let mut client = TraceServiceClient::new(PoolChannel::new(proxy, endpoint));
                let req = grpc_request(request, metadata)?;
                grpc_outcome(client.export(req).await)
            }
            OtlpProtocol::Http { path, headers } => {
                let bad = |e: String| ExportError::Request(e);
                let mut builder = http::Request::post(path.as_str())
                    .header(header::CONTENT_TYPE, "application/x-protobuf");
                for (k, v) in headers {
                    builder = builder.header(k.as_str(), v.as_str());
                }
                let mut req = builder
                    .body(filters::body::full(request.encode_to_vec()))
                    .map_err(|e| bad(e.to_string()))?;
                if endpoint.h2 {
                    *req.uri_mut() = Uri::try_from(format!("http://{}{path}", endpoint.authority))
                        .map_err(|e| bad(e.to_string()))?;
                    *req.version_mut() = Version::HTTP_2;
                } else {
                    let host = header::HeaderValue::from_str(&endpoint.authority)
                        .map_err(|e| bad(e.to_string()))?;
                    req.headers_mut().insert(header::HOST, host);
                }
                let resp = proxy
                    .upstream
                    .http
                    .send(&proxy.upstream, &endpoint.picked, endpoint.h2, req)
                    .await?;
                let status = resp.status();
                // Read the reply so the connection can carry the next batch.
                let _ = Limited::new(resp.into_body(), MAX_REPLY_BYTES)
                    .collect()
                    .await;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(ExportError::Http(status))
                }
            }
        }
    }
}

/// An OTLP gRPC export request carrying the provider's `metadata` (configured headers).
pub(crate) fn grpc_request<T>(
    message: T,
    metadata: &[(String, String)],
) -> Result<tonic::Request<T>, ExportError> {
    let mut req = tonic::Request::new(message);
    for (k, v) in metadata {
        let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())
            .map_err(|e| ExportError::Request(e.to_string()))?;
        let value = v
            .parse()
            .map_err(|_| ExportError::Request(format!("metadata {k}")))?;
        req.metadata_mut().insert(key, value);
    }
    Ok(req)
}

/// An OTLP gRPC export's answer as the exporters report it.
pub(crate) fn grpc_outcome<T>(answer: Result<T, tonic::Status>) -> Result<(), ExportError> {
    answer.map(|_| ()).map_err(|status| ExportError::Grpc {
        code: status.code(),
        message: status.message().to_string(),
    })
}
