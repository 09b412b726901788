//! Access log service loggers (Envoy's `envoy.access_loggers.http_grpc` and
//! `envoy.access_loggers.tcp_grpc`): entries are queued without blocking and streamed in
//! batches on one `envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs` call
//! whose first message carries the identifier (the node and the log name). The service
//! is reached as the OpenTelemetry exporters reach theirs ([`crate::upstream::dial`],
//! through the upstream pools). A stream that fails or that the service ends is dropped;
//! the next batch opens a new one (with the identifier again). A full queue, a backed-up
//! stream or a failed one drops entries and counts them: logging never blocks requests
//! and never builds up memory.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::data::accesslog::v3::{HttpAccessLogEntry, TcpAccessLogEntry};
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
    HttpAccessLogEntries, Identifier, LogEntries, TcpAccessLogEntries,
};
use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use filters::model::telemetry::{GrpcLogConfig, GrpcLogKind};
use futures::StreamExt;
use tokio::sync::{mpsc, Mutex};

use crate::state::Proxy;
use crate::telemetry::trace::export::{self, ExportError};
use crate::upstream::dial::{self, Destination};
use crate::upstream::grpc::PoolChannel;

/// Entries queued before new ones are dropped.
const QUEUE: usize = 2048;
/// Batches waiting to be written on the stream (HTTP/2 flow control holds them when the
/// service reads slowly) before new batches are dropped.
const STREAM_QUEUE: usize = 8;
/// Longest wait to resolve the service and hand a batch to the stream.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters across access log service loggers.
#[derive(Debug, Default)]
pub struct AlsStats {
    /// Entries written on a stream.
    pub sent: AtomicU64,
    /// Entries dropped: the queue or the stream was full, or the stream failed.
    pub dropped: AtomicU64,
    /// Streams opened.
    pub streams: AtomicU64,
}

/// One entry, of the logger's kind (boxed: entries are large, queue slots stay small).
pub enum Entry {
    /// An HTTP entry.
    Http(Box<HttpAccessLogEntry>),
    /// A TCP entry.
    Tcp(Box<TcpAccessLogEntry>),
}

/// One logger's queue; its task ends (closing the stream) when it is dropped.
pub struct AlsLogger {
    tx: mpsc::Sender<Entry>,
    stats: Arc<AlsStats>,
}

impl AlsLogger {
    /// Starts the task streaming `config`'s entries; `node` is sent in the identifier.
    pub fn start(
        config: &GrpcLogConfig,
        node: Node,
        proxy: Weak<Proxy>,
        stats: Arc<AlsStats>,
    ) -> Result<Self, String> {
        for (k, v) in &config.metadata {
            tonic::metadata::MetadataKey::<tonic::metadata::Ascii>::from_bytes(k.as_bytes())
                .map_err(|e| format!("metadata {k}: {e}"))?;
            tonic::metadata::MetadataValue::<tonic::metadata::Ascii>::try_from(v.as_str())
                .map_err(|e| format!("metadata {k}: {e}"))?;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let streamer = Arc::new(Streamer {
            config: config.clone(),
            node,
            proxy,
            stats: stats.clone(),
            open: Mutex::new(None),
        });
        tokio::spawn(run(streamer, rx));
        Ok(Self { tx, stats })
    }

    /// Queues one entry; drops (and counts) it when the queue is full.
    pub fn send(&self, entry: Entry) {
        if self.tx.try_send(entry).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The open stream: batches go to the call's body through `tx`.
struct Open {
    tx: mpsc::Sender<(StreamAccessLogsMessage, u64)>,
    /// Entries handed to the stream and entries the call has taken from it.
    handed: u64,
    taken: Arc<AtomicU64>,
    opened: tokio::time::Instant,
}

struct Streamer {
    config: GrpcLogConfig,
    node: Node,
    proxy: Weak<Proxy>,
    stats: Arc<AlsStats>,
    open: Mutex<Option<Open>>,
}

async fn run(streamer: Arc<Streamer>, rx: mpsc::Receiver<Entry>) {
    let s = &streamer;
    let send = |entries| async move { s.send(entries).await.map_err(|e| e.to_string()) };
    crate::telemetry::batch::run(rx, SEND_TIMEOUT, send, |n, outcome| {
        if let Err(e) = outcome {
            s.stats.dropped.fetch_add(n, Ordering::Relaxed);
            tracing::debug!(error = %e, entries = n, service = %s.config.endpoint(), log = %s.config.log_name, "access log service stream failed");
        }
    })
    .await;
    // Every logger handle is gone: the last stream's body ends, which closes the call.
    if let Some(open) = streamer.open.lock().await.take() {
        drop(open.tx);
    }
}

impl Streamer {
    /// Hands a batch to the open stream, opening one (identifier first) when there is
    /// none or the last one ended.
    async fn send(&self, entries: Vec<Entry>) -> Result<(), ExportError> {
        let n = entries.len() as u64;
        let log_entries = match self.config.kind {
            GrpcLogKind::Http => LogEntries::HttpLogs(HttpAccessLogEntries {
                log_entry: entries
                    .into_iter()
                    .filter_map(|e| match e {
                        Entry::Http(h) => Some(*h),
                        Entry::Tcp(_) => None,
                    })
                    .collect(),
            }),
            GrpcLogKind::Tcp => LogEntries::TcpLogs(TcpAccessLogEntries {
                log_entry: entries
                    .into_iter()
                    .filter_map(|e| match e {
                        Entry::Tcp(t) => Some(*t),
                        Entry::Http(_) => None,
                    })
                    .collect(),
            }),
        };
        let mut open = self.open.lock().await;
        if let Some(o) = open.as_ref() {
            let expired = self
                .config
                .stream_timeout
                .is_some_and(|t| o.opened.elapsed() >= t);
            if o.tx.is_closed() || expired {
                self.close(open.take());
            }
        }
        let identifier = match open.as_ref() {
            Some(_) => None,
            None => {
                *open = Some(self.open_stream().await?);
                Some(Identifier {
                    node: Some(self.node.clone()),
                    log_name: self.config.log_name.clone(),
                })
            }
        };
        let o = open.as_mut().expect("opened above");
        let message = StreamAccessLogsMessage {
            identifier,
            log_entries: Some(log_entries),
        };
        match o.tx.try_send((message, n)) {
            Ok(()) => {
                o.handed += n;
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(ExportError::Request(
                "the stream is backed up (the service reads too slowly)".into(),
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.close(open.take());
                Err(ExportError::Request("the stream ended".into()))
            }
        }
    }

    /// Counts what a finished (or abandoned) stream never wrote as dropped.
    fn close(&self, open: Option<Open>) {
        let Some(o) = open else { return };
        drop(o.tx);
        let lost = o.handed.saturating_sub(o.taken.load(Ordering::Relaxed));
        self.stats.dropped.fetch_add(lost, Ordering::Relaxed);
    }

    /// Opens the call: its body is the stream of batches handed to the returned sender.
    async fn open_stream(&self) -> Result<Open, ExportError> {
        let proxy = self.proxy.upgrade().ok_or(ExportError::Gone)?;
        let snapshot = proxy.config.current();
        let to = Destination {
            host: &self.config.service,
            port: self.config.port,
            cluster: self.config.cluster.as_deref(),
        };
        let endpoint = dial::resolve_as(&snapshot, to, &self.config.authority).await?;
        let mut client = AccessLogServiceClient::new(PoolChannel::new(proxy, endpoint));
        let (tx, rx) = mpsc::channel::<(StreamAccessLogsMessage, u64)>(STREAM_QUEUE);
        let taken = Arc::new(AtomicU64::new(0));
        let counted = taken.clone();
        let stats = self.stats.clone();
        let batches =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        let body = batches.map(move |(m, n)| {
            counted.fetch_add(n, Ordering::Relaxed);
            stats.sent.fetch_add(n, Ordering::Relaxed);
            m
        });
        let request = export::grpc_request(body, &self.config.metadata)?;
        let (log, service) = (self.config.log_name.clone(), self.config.endpoint());
        let lifetime = self.config.stream_timeout;
        tokio::spawn(async move {
            let call = client.stream_access_logs(request);
            let outcome = match lifetime {
                Some(t) => tokio::time::timeout(t, call)
                    .await
                    .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("stream timeout"))),
                None => call.await,
            };
            match outcome {
                Ok(_) => tracing::debug!(%log, %service, "access log service ended the stream"),
                Err(e) => tracing::debug!(%log, %service, error = %e, "access log stream failed"),
            }
        });
        self.stats.streams.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(log = %self.config.log_name, service = %self.config.endpoint(), "access log stream opened");
        Ok(Open {
            tx,
            handed: 0,
            taken,
            opened: tokio::time::Instant::now(),
        })
    }
}
