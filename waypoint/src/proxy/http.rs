//! HTTP inside a tunnel: Pingora owns the downstream HTTP session (HTTP/1.1 keep-alive or
//! h2c); each request is converted to an `http::Request` with a streaming body, run
//! through the tower filter chain, and the response is streamed back.
//!
//! ```text
//!  Pingora ServerSession ──read_request──► http::Request<ChannelBody> ──► filter chain
//!        ▲    │ read_request_body ─► channel (bounded) ─► upstream request body  │
//!        │    └──────────────────────────────────────────────────────────────────┘
//!        └── write_response_header / _body / _trailers ◄── http::Response<Body>
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use filters::authn::AuthnLayer;
use filters::authz::AuthzLayer;
use filters::body::{self as fbody, Body};
use filters::model::{RequestContext, TunnelInfo};
use filters::retry::RetryLayer;
use filters::route::RouteLayer;
use futures::FutureExt;
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body::Frame;
use http_body_util::BodyExt;
use pingora_core::apps::{
    HttpPersistentSettings, HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp,
};
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::ShutdownWatch;
use pingora_http::ResponseHeader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Layer, ServiceExt};

use super::body::{channel, BodySender};
use super::headers::strip_hop_by_hop;
use crate::hbone::{settings, H2Stream};
use crate::state::{Gauge, Proxy};
use crate::telemetry::labels::PeerLabels;
use crate::telemetry::request::{header_bytes, Outcome, RequestTelemetry};
use crate::upstream::Forward;

/// The per-tunnel HTTP application handed to Pingora.
struct TunnelApp {
    proxy: Arc<Proxy>,
    info: Arc<TunnelInfo>,
    options: HttpServerOptions,
    /// The source end's metric labels, computed on the tunnel's first request.
    source: std::sync::OnceLock<Arc<PeerLabels>>,
}

/// Serves HTTP/1.1 (`h2c == false`) or HTTP/2 prior knowledge on one tunnel.
pub async fn serve(
    proxy: Arc<Proxy>,
    info: Arc<TunnelInfo>,
    stream: H2Stream,
    h2c: bool,
    shutdown: ShutdownWatch,
) {
    let mut options = HttpServerOptions::default();
    options.h2c = h2c;
    let app = Arc::new(TunnelApp {
        proxy,
        info,
        options,
        source: Default::default(),
    });
    app.process_new(Box::new(stream), &shutdown).await;
}

#[async_trait]
impl HttpServerApp for TunnelApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !session.is_http2() {
            let mut shutdown = shutdown.clone();
            let draining = tokio::select! {
                read = session.read_request() => match read {
                    Ok(true) => false,
                    Ok(false) => return None,
                    Err(e) => {
                        tracing::debug!(error = %e, "reading request failed");
                        return None;
                    }
                },
                // An idle keep-alive connection closes (cleanly) when draining starts.
                _ = shutdown.wait_for(|s| *s) => true,
            };
            if draining {
                session.shutdown().await;
                return None;
            }
        }
        if *shutdown.borrow() {
            session.set_keepalive(None);
        }
        // Responses may start before the request body ends (full duplex); the exchange
        // reads or drains the rest, so the connection stays reusable.
        session.set_close_on_response_before_downstream_finish(false);
        let _inflight = Gauge::inc(&self.proxy.stats.requests_in_flight);
        let reusable = self.exchange(&mut session).await;
        self.proxy
            .stats
            .requests_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::trace!(reusable, keepalive = ?session.get_keepalive(), "request finished");
        if !reusable || session.is_http2() {
            let _ = session.finish().await;
            return None;
        }
        let persistent = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(Some(stream)) => Some(ReusedHttpStream::from_reusable_stream(stream, persistent)),
            _ => None,
        }
    }

    fn h2_options(&self) -> Option<pingora_core::protocols::http::v2::server::H2Options> {
        let mut b = h2::server::Builder::new();
        b.initial_window_size(settings::STREAM_WINDOW)
            .initial_connection_window_size(settings::CONNECTION_WINDOW)
            .max_frame_size(settings::MAX_FRAME_SIZE)
            .max_concurrent_streams(1000);
        Some(b)
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.options)
    }
}

/// The state of the downstream request body while a request is in flight.
struct RequestBody {
    tx: Option<BodySender>,
    pending: Option<Result<Frame<Bytes>, filters::body::BoxError>>,
    done: bool,
    /// Body bytes read from the client.
    received: u64,
}

/// What was written downstream for one response.
#[derive(Default)]
struct Sent {
    body: u64,
    grpc_status: Option<u16>,
}

fn grpc_status(headers: &http::HeaderMap) -> Option<u16> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

impl TunnelApp {
    /// Runs one request; returns whether the connection may carry another.
    async fn exchange(&self, session: &mut ServerSession) -> bool {
        let (mut req, mut body) = match self.request(session) {
            Ok(r) => r,
            Err((status, why)) => {
                let resp = local(status, why);
                let mut sent = Sent::default();
                return write_response(session, resp, &mut RequestBody::done(), &mut sent).await;
            }
        };
        let snapshot = req
            .extensions()
            .get::<RequestContext>()
            .map(|c| c.snapshot.clone())
            .expect("request() attaches the context");
        let telemetry = RequestTelemetry::begin(
            &self.proxy.telemetry,
            snapshot.clone(),
            self.info.clone(),
            &mut req,
        );
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let upgrade_req = !session.is_http2() && session.is_upgrade_req();
        // The filter chain, outermost first: authentication, authorization, routing,
        // retries and timeouts, then the upstream call.
        let stack = AuthnLayer.layer(
            AuthzLayer::with_ext_authz(Arc::new(crate::ext_authz::Client::new(self.proxy.clone())))
                .layer(RouteLayer.layer(RetryLayer.layer(Forward::new(self.proxy.clone())))),
        );
        let mut call: std::pin::Pin<
            Box<
                dyn std::future::Future<Output = Result<Response<Body>, filters::ProxyError>>
                    + Send,
            >,
        > = Box::pin(stack.oneshot(req));
        let result = loop {
            tokio::select! {
                result = &mut call => break result,
                _ = body.pump(session), if !body.done => {}
            }
        };
        let (mut resp, flags, details) = match result {
            Ok(resp) => (resp, "-", "via_upstream".to_string()),
            Err(e) => {
                tracing::info!(%method, path, error = %e, status = e.status().as_u16(), flag = e.response_flag(), "request failed");
                let resp = if grpc {
                    e.to_grpc_response()
                } else {
                    e.to_response()
                };
                (resp, e.response_flag(), e.details())
            }
        };
        tracing::debug!(%method, path, status = resp.status().as_u16(), "response");
        let mut outcome = Outcome {
            code: resp.status().as_u16(),
            flags,
            details,
            response_header_bytes: header_bytes(resp.headers()) + 16,
            grpc_status: grpc_status(resp.headers()),
            response_headers: telemetry
                .wants_response_headers()
                .then(|| resp.headers().clone()),
            ..Default::default()
        };
        let reusable = if upgrade_req && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            upgrade(session, resp).await
        } else {
            if session.is_http2() {
                resp.headers_mut().remove(header::CONNECTION);
            }
            let mut sent = Sent::default();
            let reusable = write_response(session, resp, &mut body, &mut sent).await;
            outcome.body_sent = sent.body;
            outcome.grpc_status = sent.grpc_status.or(outcome.grpc_status);
            reusable
        };
        outcome.body_received = body.received;
        let source = self.source.get_or_init(|| {
            Arc::new(PeerLabels::source(
                &self.info,
                &snapshot,
                &self.proxy.telemetry.metrics.cluster,
            ))
        });
        telemetry.finish(&self.proxy.telemetry, source, outcome);
        reusable
    }

    /// Converts the session's request into an `http::Request` bound to this tunnel.
    fn request(
        &self,
        session: &mut ServerSession,
    ) -> Result<(Request<Body>, RequestBody), (StatusCode, &'static str)> {
        let mut parts = session.req_header().as_owned_parts();
        let upgrade = !session.is_http2() && session.is_upgrade_req();
        strip_hop_by_hop(&mut parts.headers, upgrade);
        // Canonical form: origin-form URI plus a Host header, whatever the client sent.
        if let Some(auth) = parts.uri.authority().cloned() {
            if !parts.headers.contains_key(header::HOST) {
                if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
                    parts.headers.insert(header::HOST, v);
                }
            }
        }
        if !parts.headers.contains_key(header::HOST) {
            return Err((StatusCode::BAD_REQUEST, "missing host"));
        }
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            let pq = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into());
            parts.uri = pq
                .parse()
                .map_err(|_| (StatusCode::BAD_REQUEST, "bad path"))?;
        }
        parts.version = if session.is_http2() {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let (body, state) = if session.is_body_empty() && !upgrade {
            (fbody::empty(), RequestBody::done())
        } else {
            let (tx, rx) = channel(length);
            (
                Body::new(rx),
                RequestBody {
                    tx: Some(tx),
                    pending: None,
                    done: false,
                    received: 0,
                },
            )
        };
        let mut req = Request::from_parts(parts, body);
        req.extensions_mut().insert(RequestContext {
            snapshot: self.proxy.config.current(),
            tunnel: self.info.clone(),
        });
        Ok((req, state))
    }
}

impl RequestBody {
    fn done() -> Self {
        Self {
            tx: None,
            pending: None,
            done: true,
            received: 0,
        }
    }

    /// Moves one chunk from the session towards the upstream request. Cancel-safe: a chunk
    /// read from the session is kept until the channel has room for it.
    async fn pump(&mut self, session: &mut ServerSession) {
        if self.tx.is_none() {
            self.done = true;
            return;
        }
        if self.pending.is_some() {
            let sent = match self.tx.as_ref() {
                Some(tx) => match tx.reserve().await {
                    Ok(permit) => {
                        permit.send(self.pending.take().expect("checked"));
                        true
                    }
                    Err(_) => false,
                },
                None => false,
            };
            if !sent {
                // The upstream stopped reading the body (it answered already).
                self.tx = None;
                self.pending = None;
                self.done = true;
            }
            return;
        }
        match session.read_request_body().await {
            Ok(Some(data)) => {
                self.received += data.len() as u64;
                self.pending = Some(Ok(Frame::data(data)));
            }
            Ok(None) => {
                self.tx = None;
                self.done = true;
            }
            Err(e) => {
                self.pending = Some(Err(Box::new(std::io::Error::other(e.to_string()))));
                self.done = false;
                // Deliver the error, then stop.
                if let Some(tx) = self.tx.take() {
                    let _ = tx.send(self.pending.take().expect("just set")).await;
                }
                self.done = true;
            }
        }
    }
}

fn local(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(fbody::full(text));
    *r.status_mut() = status;
    r
}

fn response_header(parts: &http::response::Parts, h2: bool) -> Option<Box<ResponseHeader>> {
    let mut h = ResponseHeader::build(parts.status, Some(parts.headers.len() + 1)).ok()?;
    for (name, value) in &parts.headers {
        h.append_header(name.clone(), value.clone()).ok()?;
    }
    if !h2
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
        && !parts.status.is_informational()
        && parts.status != StatusCode::NO_CONTENT
        && parts.status != StatusCode::NOT_MODIFIED
    {
        h.insert_header(header::TRANSFER_ENCODING, "chunked").ok()?;
    }
    Some(Box::new(h))
}

/// Streams `resp` to the client while the request body keeps flowing upstream.
async fn write_response(
    session: &mut ServerSession,
    resp: Response<Body>,
    body: &mut RequestBody,
    sent: &mut Sent,
) -> bool {
    let (mut parts, mut resp_body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let Some(header) = response_header(&parts, session.is_http2()) else {
        tracing::warn!("upstream response headers not representable");
        return false;
    };
    // Writes are batched: the header and the frames that are ready without waiting go out
    // back to back, so the HBONE connection sends them as one DATA frame and one TLS record.
    // Whatever is held is written before waiting on the upstream.
    let mut header = Some(header);
    let mut ahead = lookahead(&mut resp_body).await;
    let mut finished = false;
    loop {
        let frame = match ahead.take() {
            Some(frame) => frame,
            None => {
                if !write_header(session, &mut header).await {
                    return false;
                }
                tokio::select! {
                    frame = resp_body.frame() => frame,
                    _ = body.pump(session), if !body.done => continue,
                }
            }
        };
        match frame {
            Some(Ok(frame)) => {
                let written = if frame.is_data() {
                    let data = frame.into_data().expect("is data");
                    sent.body += data.len() as u64;
                    ahead = lookahead(&mut resp_body).await;
                    finished = matches!(ahead, Some(None));
                    if !write_header(session, &mut header).await {
                        return false;
                    }
                    session.write_response_body(data, finished).await
                } else if let Ok(trailers) = frame.into_trailers() {
                    sent.grpc_status = grpc_status(&trailers).or(sent.grpc_status);
                    if !write_header(session, &mut header).await {
                        return false;
                    }
                    session.write_response_trailers(trailers).await
                } else {
                    Ok(())
                };
                if let Err(e) = written {
                    tracing::debug!(error = %e, "client went away mid-response");
                    return false;
                }
            }
            Some(Err(e)) => {
                tracing::info!(error = %e, "upstream response body failed");
                if session.is_http2() {
                    session.shutdown_with_reason(h2::Reason::INTERNAL_ERROR);
                }
                return false;
            }
            None => break,
        }
    }
    if !write_header(session, &mut header).await {
        return false;
    }
    if !finished && session.finish_body().await.is_err() {
        return false;
    }
    if body.done && body.pending.is_none() {
        return true;
    }
    // The upstream answered before the whole request body arrived. The rest has nowhere to
    // go; read it off so the HTTP/1 connection can carry the next request.
    body.tx = None;
    matches!(
        tokio::time::timeout(DRAIN_BODY_TIMEOUT, session.drain_request_body()).await,
        Ok(Ok(()))
    )
}

/// Writes the response header if it is still held.
async fn write_header(
    session: &mut ServerSession,
    header: &mut Option<Box<ResponseHeader>>,
) -> bool {
    let Some(h) = header.take() else {
        return true;
    };
    match session.write_response_header(h).await {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "writing response header failed");
            false
        }
    }
}

/// The body's next frame if it is ready now, or once the tasks already woken have run
/// (one yield: the connection task that feeds the body decodes what it has buffered);
/// `None` if it is not. The end of a body often follows its last data at once (a chunked
/// response's last chunk): written together they make one DATA frame and one TLS record
/// downstream instead of two.
async fn lookahead(body: &mut Body) -> Option<Option<Result<Frame<Bytes>, fbody::BoxError>>> {
    if body.is_end_stream() {
        return Some(None);
    }
    if let Some(frame) = body.frame().now_or_never() {
        return Some(frame);
    }
    tokio::task::yield_now().await;
    body.frame().now_or_never()
}

/// Longest wait for the rest of a request body the upstream did not read.
const DRAIN_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Completes a `101 Switching Protocols` exchange and copies bytes both ways.
async fn upgrade(session: &mut ServerSession, mut resp: Response<Body>) -> bool {
    let Some(on_upgrade) = resp.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        tracing::warn!("101 from upstream without an upgradable connection");
        return false;
    };
    let (parts, _) = resp.into_parts();
    let Some(header) = response_header(&parts, false) else {
        return false;
    };
    if session.write_response_header(header).await.is_err() {
        return false;
    }
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            tracing::info!(error = %e, "upstream upgrade failed");
            return false;
        }
    };
    let (mut up_read, mut up_write) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
    let mut buf = vec![0u8; 16 * 1024];
    let (mut down_open, mut up_open) = (true, true);
    while down_open || up_open {
        tokio::select! {
            chunk = session.read_request_body(), if down_open => match chunk {
                Ok(Some(data)) => {
                    if up_write.write_all(&data).await.is_err() { break; }
                }
                _ => {
                    down_open = false;
                    let _ = up_write.shutdown().await;
                }
            },
            n = up_read.read(&mut buf), if up_open => match n {
                Ok(0) | Err(_) => {
                    up_open = false;
                    let _ = session.finish_body().await;
                }
                Ok(n) => {
                    if session.write_response_body(Bytes::copy_from_slice(&buf[..n]), false).await.is_err() { break; }
                }
            },
        }
    }
    false
}
