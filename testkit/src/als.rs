//! A fake access log service on loopback (`envoy.service.accesslog.v3.AccessLogService/
//! StreamAccessLogs`, what Envoy's `http_grpc` and `tcp_grpc` loggers stream to): keeps
//! every stream's identifier and every entry, in arrival order.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use envoy_types::pb::envoy::data::accesslog::v3::{HttpAccessLogEntry, TcpAccessLogEntry};
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::{
    AccessLogService, AccessLogServiceServer,
};
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
    Identifier, LogEntries,
};
use envoy_types::pb::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse,
};

/// What one stream carried.
#[derive(Debug, Clone, Default)]
pub struct Stream {
    /// The first message's identifier (`None` when the first message had none).
    pub identifier: Option<Identifier>,
    /// Messages after the first that carried an identifier (Envoy sends it once).
    pub repeated_identifiers: usize,
    /// HTTP entries.
    pub http: Vec<HttpAccessLogEntry>,
    /// TCP entries.
    pub tcp: Vec<TcpAccessLogEntry>,
}

/// A running access log service.
#[derive(Clone)]
pub struct AccessLogServer {
    /// Where it listens.
    pub addr: SocketAddr,
    streams: Arc<Mutex<Vec<Stream>>>,
    end_after: Arc<std::sync::atomic::AtomicUsize>,
}

impl AccessLogServer {
    /// A service on `127.0.0.1`, any port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let server = Self {
            addr: listener.local_addr()?,
            streams: Arc::default(),
            end_after: Arc::default(),
        };
        let svc = AccessLogServiceServer::new(server.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Ok(server)
    }

    /// From now on, ends each stream (answering OK) once it has carried `messages`
    /// messages; 0 keeps streams open (the default).
    pub fn end_streams_after(&self, messages: usize) {
        self.end_after
            .store(messages, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every stream so far (open or ended), in the order they opened.
    pub fn streams(&self) -> Vec<Stream> {
        self.streams.lock().unwrap().clone()
    }

    /// Every HTTP entry so far, with the identifier of its stream.
    pub fn http_entries(&self) -> Vec<(Option<Identifier>, HttpAccessLogEntry)> {
        self.streams()
            .into_iter()
            .flat_map(|s| {
                let id = s.identifier.clone();
                s.http.into_iter().map(move |e| (id.clone(), e))
            })
            .collect()
    }

    /// Every TCP entry so far, with the identifier of its stream.
    pub fn tcp_entries(&self) -> Vec<(Option<Identifier>, TcpAccessLogEntry)> {
        self.streams()
            .into_iter()
            .flat_map(|s| {
                let id = s.identifier.clone();
                s.tcp.into_iter().map(move |e| (id.clone(), e))
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl AccessLogService for AccessLogServer {
    async fn stream_access_logs(
        &self,
        request: tonic::Request<tonic::Streaming<StreamAccessLogsMessage>>,
    ) -> Result<tonic::Response<StreamAccessLogsResponse>, tonic::Status> {
        let mut stream = request.into_inner();
        let index = {
            let mut all = self.streams.lock().unwrap();
            all.push(Stream::default());
            all.len() - 1
        };
        let mut first = true;
        let mut count = 0;
        while let Some(message) = stream.message().await? {
            count += 1;
            let mut all = self.streams.lock().unwrap();
            let s = &mut all[index];
            match (first, message.identifier) {
                (true, id) => s.identifier = id,
                (false, Some(_)) => s.repeated_identifiers += 1,
                (false, None) => {}
            }
            first = false;
            match message.log_entries {
                Some(LogEntries::HttpLogs(h)) => s.http.extend(h.log_entry),
                Some(LogEntries::TcpLogs(t)) => s.tcp.extend(t.log_entry),
                None => {}
            }
            let end_after = self.end_after.load(std::sync::atomic::Ordering::Relaxed);
            if end_after != 0 && count >= end_after {
                break;
            }
        }
        Ok(tonic::Response::new(StreamAccessLogsResponse {}))
    }
}
