//! The bootstrap's static HTTP listeners, served as Envoy serves them: each request's Host
//! picks a virtual host, its path the first matching route, and the request is forwarded
//! over HTTP/1.1 to the route's cluster; its answer goes back as it is. Under pilot-agent
//! that is `GET /healthz/ready` on 15021 answered by pilot-agent's own status server (the
//! `agent` cluster), and `/stats/prometheus` on 15090 answered by the admin port. As Envoy
//! answers: no route 404, an unreachable cluster 503, no answer within the route's timeout
//! 504.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use xds::ads::static_listeners::{StaticListener, StaticRoute};

/// Why a request could not be forwarded to its cluster.
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error("connect to {0}: timed out")]
    ConnectTimeout(std::net::SocketAddr),
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("no response within the route timeout")]
    Timeout,
    #[error("request: {0}")]
    Request(#[from] http::Error),
}

/// One static listener's HTTP service.
pub struct StaticRoutes {
    listener: Arc<StaticListener>,
}

impl StaticRoutes {
    /// Serves `listener`'s routes.
    pub fn new(listener: StaticListener) -> Self {
        Self {
            listener: Arc::new(listener),
        }
    }
}

/// Hop-by-hop headers, not forwarded either way.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

fn end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if !HOP_BY_HOP.contains(&k.as_str()) && k != header::CONTENT_LENGTH {
            to.append(k.clone(), v.clone());
        }
    }
}

#[async_trait]
impl ServeHttp for StaticRoutes {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let head = session.req_header().clone();
        let host = head
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or(head.uri.authority().map(|a| a.as_str()))
            .unwrap_or_default()
            .to_string();
        let path = head.uri.path();
        let Some(route) = self.listener.route(&host, path) else {
            tracing::debug!(listener = %self.listener.name, %host, path, "no route");
            return super::text(StatusCode::NOT_FOUND, "", "text/plain");
        };
        let mut body = Vec::new();
        while let Ok(Some(chunk)) = session.read_request_body().await {
            body.extend_from_slice(&chunk);
        }
        let target = head
            .uri
            .path_and_query()
            .map_or_else(|| path.to_string(), |p| p.as_str().to_string());
        let mut req = Request::builder().method(head.method.clone()).uri(target);
        if let Some(h) = req.headers_mut() {
            end_to_end(&head.headers, h);
        }
        let result = match req.body(Full::new(Bytes::from(body))) {
            Ok(req) => forward(route, req).await,
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(resp) => resp,
            Err(e) => {
                tracing::warn!(listener = %self.listener.name, path, cluster = %route.cluster.name, upstream = %route.cluster.address, error = %e, "static route upstream failed");
                match e {
                    ForwardError::Timeout => super::text(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream request timeout",
                        "text/plain",
                    ),
                    _ => super::text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                        "text/plain",
                    ),
                }
            }
        }
    }
}

/// Sends `req` to the route's cluster over a new HTTP/1.1 connection and reads the whole
/// answer.
async fn forward(
    route: &StaticRoute,
    req: Request<Full<Bytes>>,
) -> Result<Response<Vec<u8>>, ForwardError> {
    let addr = route.cluster.address;
    let tcp = tokio::time::timeout(
        route.cluster.connect_timeout,
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| ForwardError::ConnectTimeout(addr))?
    .map_err(|source| ForwardError::Connect { addr, source })?;
    let exchange = async move {
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "static route upstream connection");
            }
        });
        let resp = send.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes().to_vec();
        Ok::<_, ForwardError>((parts, body))
    };
    let (parts, body) = tokio::time::timeout(route.timeout, exchange)
        .await
        .map_err(|_| ForwardError::Timeout)??;
    let mut out = Response::builder().status(parts.status);
    if let Some(h) = out.headers_mut() {
        end_to_end(&parts.headers, h);
        h.insert(header::CONTENT_LENGTH, body.len().into());
    }
    Ok(out.body(body)?)
}
