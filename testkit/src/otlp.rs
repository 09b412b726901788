//! OTLP collectors on loopback: OTLP/gRPC
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export` and
//! `opentelemetry.proto.collector.logs.v1.LogsService/Export`) and OTLP/HTTP (protobuf
//! `POST /v1/traces`), keeping every span and log record with the resource it came with.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// One received span and the attributes of the resource it was exported with.
#[derive(Debug, Clone)]
pub struct Received {
    /// The span.
    pub span: Span,
    /// Its resource's attributes (`service.name`, ...).
    pub resource: Vec<KeyValue>,
}

impl Received {
    /// The span attribute `key`, as a string.
    pub fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }

    /// The resource attribute `key`, as a string.
    pub fn resource_attr(&self, key: &str) -> Option<String> {
        attr(&self.resource, key)
    }
}

/// One received log record, with its resource's attributes.
#[derive(Debug, Clone)]
pub struct ReceivedLog {
    /// The record.
    pub record: LogRecord,
    /// Its resource's attributes.
    pub resource: Vec<KeyValue>,
}

impl ReceivedLog {
    /// The record's body, as a string.
    pub fn body(&self) -> Option<String> {
        match self.record.body.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            other => Some(format!("{other:?}")),
        }
    }

    /// The record attribute `key`, as a string.
    pub fn attr(&self, key: &str) -> Option<String> {
        attr(&self.record.attributes, key)
    }
}

/// Attribute `key` of `list` as a string (integers and booleans formatted).
pub fn attr(list: &[KeyValue], key: &str) -> Option<String> {
    let value = list.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    Some(match value.value.as_ref()? {
        Value::StringValue(s) => s.clone(),
        Value::IntValue(i) => i.to_string(),
        Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

/// A running collector.
#[derive(Clone)]
pub struct Collector {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    logs: Arc<Mutex<Vec<ReceivedLog>>>,
    exports: Arc<std::sync::atomic::AtomicUsize>,
}

impl Collector {
    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Every log record received so far (OTLP/gRPC collectors).
    pub fn logs(&self) -> Vec<ReceivedLog> {
        self.logs.lock().unwrap().clone()
    }

    /// Export calls received so far.
    pub fn exports(&self) -> usize {
        self.exports.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn keep(&self, req: ExportTraceServiceRequest) {
        self.exports
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut all = self.received.lock().unwrap();
        for rs in req.resource_spans {
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            for ss in rs.scope_spans {
                all.extend(ss.spans.into_iter().map(|span| Received {
                    span,
                    resource: resource.clone(),
                }));
            }
        }
    }

    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            received: Arc::default(),
            logs: Arc::default(),
            exports: Arc::default(),
        }
    }

    /// An OTLP/gRPC collector on `127.0.0.1`, any port.
    pub async fn grpc() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let c = Self::new(listener.local_addr()?);
        let svc = TraceServiceServer::new(c.clone());
        let logs = LogsServiceServer::new(c.clone());
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .add_service(logs)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Ok(c)
    }

    /// An OTLP/HTTP collector on `127.0.0.1`, any port: `POST /v1/traces` with
    /// `content-type: application/x-protobuf`, over HTTP/1.1; anything else is 404.
    pub async fn http() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let c = Self::new(listener.local_addr()?);
        let this = c.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let this = this.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let this = this.clone();
                        async move { Ok::<_, Infallible>(this.serve_http(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Ok(c)
    }

    async fn serve_http(
        &self,
        req: http::Request<hyper::body::Incoming>,
    ) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        let protobuf = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|c| c == "application/x-protobuf");
        let path_ok = req.uri().path() == "/v1/traces";
        let body = req.into_body().collect().await.map(|b| b.to_bytes());
        let status = match (path_ok && protobuf, body) {
            (true, Ok(body)) => match ExportTraceServiceRequest::decode(body) {
                Ok(r) => {
                    self.keep(r);
                    200
                }
                Err(_) => 400,
            },
            _ => 404,
        };
        let reply = ExportTraceServiceResponse::default().encode_to_vec();
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(http_body_util::Full::new(reply.into()))
            .expect("static response")
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.exports
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut all = self.logs.lock().unwrap();
        for rl in request.into_inner().resource_logs {
            let resource = rl.resource.map(|r| r.attributes).unwrap_or_default();
            for sl in rl.scope_logs {
                all.extend(sl.log_records.into_iter().map(|record| ReceivedLog {
                    record,
                    resource: resource.clone(),
                }));
            }
        }
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}
