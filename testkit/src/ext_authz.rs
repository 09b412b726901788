//! External authorization servers for tests, speaking Envoy's ext_authz protocol the way
//! Istio's sample `ext-authz` server does: the client header `x-ext-authz: allow` allows,
//! anything else denies; `x-ext-authz: slow` answers (allow) after [`SLOW`].
//!
//! - [`GrpcAuthz`]: `envoy.service.auth.v3.Authorization/Check` (tonic). On allow it sets
//!   `x-ext-authz-check-result: allowed` upstream, removes `x-ext-authz-remove-me`, sets the
//!   query parameter `authz=ok` and adds `x-ext-authz-down: yes` to the client's response;
//!   on deny it answers 401 with body `denied by ext_authz` and `x-ext-authz-reason: denied`.
//! - [`HttpAuthz`]: plain HTTP. 200 with `x-ext-authz-check-result: allowed`,
//!   `x-user: alice`, `x-ext-authz-down: yes`, `x-unlisted: u`; or 403 with body
//!   `denied by http ext_authz`, `x-ext-authz-reason: denied`, `x-unlisted: u`.
//!
//! Both record every check they receive.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, QueryParameter};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{
    check_response, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc::Status;
use http_body_util::BodyExt;

/// How long `x-ext-authz: slow` makes the servers wait.
pub const SLOW: Duration = Duration::from_secs(3);

/// One check as a server saw it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path (with query) of the checked request, or of the HTTP check itself.
    pub path: String,
    /// Headers, lower-case names.
    pub headers: BTreeMap<String, String>,
    /// The source principal (gRPC only).
    pub source_principal: String,
    /// The source address (gRPC only).
    pub source_address: String,
    /// The destination principal (gRPC only).
    pub destination_principal: String,
    /// The body sent in the check.
    pub body: String,
}

/// The checks a server received.
pub type Log = Arc<Mutex<Vec<Seen>>>;

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Grpc {
    log: Log,
}

#[async_trait::async_trait]
impl Authorization for Grpc {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let attrs = request.into_inner().attributes.unwrap_or_default();
        let http = attrs.request.and_then(|r| r.http).unwrap_or_default();
        let addr = attrs
            .source
            .as_ref()
            .and_then(|s| s.address.as_ref())
            .and_then(|a| a.address.as_ref())
            .map(|a| format!("{a:?}"))
            .unwrap_or_default();
        let seen = Seen {
            method: http.method.clone(),
            path: http.path.clone(),
            headers: http.headers.clone().into_iter().collect(),
            source_principal: attrs.source.map(|s| s.principal).unwrap_or_default(),
            source_address: addr,
            destination_principal: attrs.destination.map(|d| d.principal).unwrap_or_default(),
            body: http.body.clone(),
        };
        self.log.lock().expect("log").push(seen);
        let verdict = http.headers.get("x-ext-authz").map(String::as_str);
        if verdict == Some("slow") {
            tokio::time::sleep(SLOW).await;
        }
        let resp = if matches!(verdict, Some("allow") | Some("slow")) {
            CheckResponse {
                status: Some(Status::default()),
                http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![header("x-ext-authz-check-result", "allowed")],
                    headers_to_remove: vec!["x-ext-authz-remove-me".into()],
                    response_headers_to_add: vec![header("x-ext-authz-down", "yes")],
                    query_parameters_to_set: vec![QueryParameter {
                        key: "authz".into(),
                        value: "ok".into(),
                    }],
                    ..Default::default()
                })),
                ..Default::default()
            }
        } else {
            CheckResponse {
                status: Some(Status {
                    code: tonic::Code::PermissionDenied as i32,
                    ..Default::default()
                }),
                http_response: Some(check_response::HttpResponse::DeniedResponse(
                    DeniedHttpResponse {
                        status: Some(HttpStatus { code: 401 }),
                        headers: vec![header("x-ext-authz-reason", "denied")],
                        body: "denied by ext_authz".into(),
                    },
                )),
                ..Default::default()
            }
        };
        Ok(tonic::Response::new(resp))
    }
}

/// A gRPC ext_authz server on loopback.
pub struct GrpcAuthz {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The checks it received.
    pub log: Log,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcAuthz {
    /// Listens on `addr` (plaintext HTTP/2).
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let log: Log = Default::default();
        let svc = AuthorizationServer::new(Grpc { log: log.clone() });
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let svc = svc.clone();
                tokio::spawn(async move {
                    let hyper_svc = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let mut svc = svc.clone();
                            async move { tower::Service::call(&mut svc, req).await }
                        },
                    );
                    if let Err(e) = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), hyper_svc)
                    .await
                    {
                        tracing::debug!(error = %e, "test gRPC ext_authz connection ended");
                    }
                });
            }
        });
        Ok(Self { addr, log, task })
    }

    /// How many checks it received.
    pub fn calls(&self) -> usize {
        self.log.lock().expect("log").len()
    }
}

impl Drop for GrpcAuthz {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP ext_authz server on loopback.
pub struct HttpAuthz {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The checks it received.
    pub log: Log,
    task: tokio::task::JoinHandle<()>,
}

async fn http_check(
    log: Log,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<filters::body::Body>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: BTreeMap<String, String> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let verdict = headers.get("x-ext-authz").cloned();
    log.lock().expect("log").push(Seen {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        ..Default::default()
    });
    if verdict.as_deref() == Some("slow") {
        tokio::time::sleep(SLOW).await;
    }
    let b = http::Response::builder().header("x-unlisted", "u");
    let resp = if matches!(verdict.as_deref(), Some("allow") | Some("slow")) {
        b.status(200)
            .header("x-ext-authz-check-result", "allowed")
            .header("x-user", "alice")
            .header("x-ext-authz-down", "yes")
            .body(filters::body::empty())
    } else {
        b.status(403)
            .header("x-ext-authz-reason", "denied")
            .body(filters::body::full("denied by http ext_authz"))
    };
    Ok(resp.expect("valid response"))
}

impl HttpAuthz {
    /// Listens on `addr` (HTTP/1.1 and h2c).
    pub async fn start(addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let log: Log = Default::default();
        let server_log = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let log = server_log.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| http_check(log.clone(), req));
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
                });
            }
        });
        Ok(Self { addr, log, task })
    }

    /// How many checks it received.
    pub fn calls(&self) -> usize {
        self.log.lock().expect("log").len()
    }
}

impl Drop for HttpAuthz {
    fn drop(&mut self) {
        self.task.abort();
    }
}
