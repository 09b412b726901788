//! HTTP inside a tunnel: plain HTTP/1.1 requests are read by the tunnel's own server
//! ([`super::h1`]); the first other one (chunked, `Expect`, upgrades, HTTP/1.0, malformed
//! input) hands the connection to hyper's HTTP/1.1 server, and h2c prior knowledge is
//! hyper's from the start. Either way each request runs through the tower filter chain
//! ([`TunnelApp::serve_request`]), and the response streams back as the upstream sends it.
//!
//! ```text
//!  H2Stream ──h1 or hyper──► http::Request<_> ──► filter chain ──► upstream
//!     ▲                                                   │
//!     └── the http::Response<Body> streams back ◄─────────┘
//!         (wrapped in TrackedBody: bytes, grpc-status, telemetry at the end)
//! ```
//!
//! The request body goes upstream as it arrives, and a response may start before it ends
//! (full duplex). Both servers hand requests and responses over as `http` types.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use filters::authn::{AuthnLayer, AuthnService};
use filters::authz::{AuthzLayer, AuthzService};
use filters::body::{self as fbody, Body};
use filters::model::{RequestContext, TunnelInfo, UnderscoreHeaders};
use filters::retry::{RetryLayer, RetryService};
use filters::route::{RouteLayer, RouteService};
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use hyper::server::conn::{http1, http2};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pingora_core::server::ShutdownWatch;
use tower::{Layer, ServiceExt};

use super::headers::strip_hop_by_hop;
use super::idle::Activity;
use super::stream_idle::{Expiry, StreamIdle};
use super::tracked::{InFlight, Pending, Received, TrackedBody};
use crate::state::Proxy;
use crate::telemetry::labels::{PeerLabels, SourceLabels};
use crate::telemetry::request::{header_bytes, Outcome, RequestTelemetry};
use crate::upstream::Forward;
use filters::error::{ResponseDetails, ResponseFlag};
use hbone::{settings, H2Stream};

/// The filter chain, outermost first: authentication, authorization, routing, retries and
/// timeouts, then the upstream call.
type Chain = AuthnService<AuthzService<RouteService<RetryService<Forward>>>>;

fn chain(proxy: &Arc<Proxy>) -> Chain {
    AuthnLayer.layer(
        AuthzLayer::with_ext_authz(Arc::new(crate::ext_authz::Client::new(proxy.clone())))
            .layer(RouteLayer.layer(RetryLayer.layer(Forward::new(proxy.clone())))),
    )
}

/// One tunnel's HTTP state, shared by its requests.
pub(super) struct TunnelApp {
    proxy: Arc<Proxy>,
    info: Arc<TunnelInfo>,
    /// Built once per tunnel; each request runs on a clone.
    chain: Chain,
    /// The source end's metric labels, computed on the tunnel's first request.
    source: OnceLock<SourceLabels>,
    /// Requests in flight on the connection, for its idle bounds (the header timeout and
    /// the connection manager's idle timeout).
    activity: Arc<Activity>,
}

/// Serves HTTP/1.1 (`h2c == false`) or HTTP/2 prior knowledge on one tunnel until the
/// client closes it; when shutdown starts or the listeners are drained
/// (`/drain_listeners`), idle connections close and in-flight requests finish (HTTP/1.1
/// without keep-alive, HTTP/2 with GOAWAY), so the tunnel and then its HBONE connection end.
pub async fn serve(
    proxy: Arc<Proxy>,
    info: Arc<TunnelInfo>,
    stream: H2Stream,
    h2c: bool,
    shutdown: ShutdownWatch,
) {
    let header_timeout = proxy.options.header_timeout;
    let (preserve_case, idle_timeout, max_duration) = {
        let snapshot = proxy.config.current();
        let settings = snapshot.request_headers();
        (
            settings.preserve_header_case,
            settings.idle_timeout,
            settings.max_connection_duration,
        )
    };
    // Both servers bound the time without a request in flight (see `idle.rs`): the header
    // timeout, or the connection manager's idle timeout when shorter. One atomic count per
    // request, rather than hyper's HTTP/1.1 header timer, which allocates and registers a
    // timer for every request.
    let activity = Activity::new();
    let idle_after = idle_timeout.map_or(header_timeout, |t| t.min(header_timeout));
    let max_until = max_duration.map(|d| tokio::time::Instant::now() + d);
    let app = Arc::new(TunnelApp {
        chain: chain(&proxy),
        proxy,
        info,
        source: OnceLock::new(),
        activity: activity.clone(),
    });
    // Plain HTTP/1.1 requests are served by the tunnel's own server (`h1`); the first
    // other one hands the connection to hyper's, as does header-case preservation (which
    // hyper records as requests are read).
    let stream = if h2c || preserve_case {
        stream
    } else {
        let ended = ended(activity.clone(), idle_after, header_timeout, max_until);
        // Polled when one of its signals fires, not on every wake of the tunnel's task.
        let stop =
            crate::woken::OnWake::new(stop(shutdown.clone(), app.proxy.drain.subscribe(), ended));
        match super::h1::serve(&app, stream, stop).await {
            super::h1::Served::Closed => return,
            super::h1::Served::Handoff(stream) => stream,
        }
    };
    let drain = app.proxy.drain.subscribe();
    let service = hyper::service::service_fn(move |req| {
        let app = app.clone();
        async move { app.serve_request(req).await }
    });
    let io = TokioIo::new(stream);
    let result = if h2c {
        let conn = http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(settings::STREAM_WINDOW)
            .initial_connection_window_size(settings::CONNECTION_WINDOW)
            .max_frame_size(settings::MAX_FRAME_SIZE)
            .max_concurrent_streams(1000)
            .serve_connection(io, service);
        tokio::pin!(conn);
        // hyper's HTTP/2 server has no header timeout: a connection with no request in
        // flight for as long is shut down (GOAWAY), which also ends a HEADERS block sent too
        // slowly. The connection manager's idle timeout, when shorter, does the same sooner
        // (Envoy's drain sequence: GOAWAY, then the close).
        let ended = ended(activity, idle_after, header_timeout, max_until);
        until_stopped!(conn, stop(shutdown, drain, ended))
    } else {
        // A client that sends its headers too slowly is cut off (slowloris): no request is
        // in flight until its headers are read, so the connection is idle, and after the
        // header timeout (or the connection manager's idle timeout, when shorter) it is
        // closed, as hyper's header timer would (which also starts at the end of the
        // previous response); between requests hyper closes an idle HTTP/1.1 connection at
        // once on a graceful shutdown. Header case is recorded as requests arrive, for upstream connections that write
        // it back (ProxyConfig `preserveHttp1HeaderCase`), and responses keep the case
        // their endpoint used.
        let conn = http1::Builder::new()
            .preserve_header_case(preserve_case)
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(conn);
        let ended = ended(activity, idle_after, header_timeout, max_until);
        until_stopped!(conn, stop(shutdown, drain, ended))
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP connection in tunnel ended with an error");
    }
}

/// Envoy's default `drain_timeout`: how long a connection whose maximum duration is up gets
/// to finish its requests (HTTP/1.1: the response in flight goes out with
/// `connection: close`; HTTP/2: after GOAWAY) before it is closed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves when the connection manager ends a connection on its own: no request in
/// flight on `activity` for `idle_after`, or at `max_until`, the connection's start plus
/// Envoy's `common_http_protocol_options.max_connection_duration`.
/// Gives the reason and how long the connection then has to close: `idle_bound` for the
/// client to answer GOAWAY's ping when idle, Envoy's drain period when the duration is up.
async fn ended(
    activity: Arc<Activity>,
    idle_after: Duration,
    idle_bound: Duration,
    max_until: Option<tokio::time::Instant>,
) -> (&'static str, Duration) {
    let idle = activity.idle_for(idle_after);
    let aged = async {
        match max_until {
            Some(t) => tokio::time::sleep_until(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = idle => ("idle or too slow to send a request", idle_bound),
        () = aged => ("at its maximum duration", DRAIN_TIMEOUT),
    }
}

/// When a tunnel's HTTP connection is to end: when shutdown starts or the listeners are
/// drained (`None`: requests in flight finish; `wait_for` is ready at once when either has
/// already started), or when [`ended`] resolves (`Some`: they get its bound). Both servers
/// use it (hyper's through [`until_stopped`]).
async fn stop(
    mut shutdown: ShutdownWatch,
    mut drain: tokio::sync::watch::Receiver<bool>,
    ended: impl std::future::Future<Output = (&'static str, Duration)>,
) -> Option<Duration> {
    let drained = async move {
        if drain.wait_for(|d| *d).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        r = shutdown.wait_for(|s| *s) => {
            drop(r);
            None
        }
        () = drained => None,
        (why, bound) = ended => {
            tracing::debug!(why, bound = ?bound, "HTTP connection in tunnel ends");
            Some(bound)
        }
    }
}

/// Drives a pinned hyper server connection until `$stop` (see [`stop`]) fires, then shuts
/// it down gracefully: without a bound on shutdown or a listener drain, within the bound
/// [`ended`] gives otherwise (the client may never answer GOAWAY's ping, or may keep a
/// request going).
macro_rules! until_stopped {
    ($conn:ident, $stop:expr) => {{
        tokio::select! {
            r = &mut $conn => r,
            bound = $stop => {
                $conn.as_mut().graceful_shutdown();
                match bound {
                    None => $conn.await,
                    Some(bound) => tokio::time::timeout(bound, $conn).await.unwrap_or(Ok(())),
                }
            }
        }
    }};
}
use until_stopped;

impl TunnelApp {
    /// Serves one request: header names with `_` first, as Envoy's codec reads them
    /// (`headers_with_underscores_action`: dropped, or the request refused; on HTTP/2 by
    /// resetting its stream, the error hyper turns into RST_STREAM `PROTOCOL_ERROR`), then
    /// [`Self::exchange`].
    pub(super) async fn serve_request<B>(
        &self,
        mut req: Request<B>,
    ) -> Result<Response<TrackedBody>, h2::Error>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<filters::body::BoxError>,
    {
        let snapshot = self.proxy.config.current();
        let mut refuse_underscore = false;
        match snapshot.request_headers().underscore_headers {
            UnderscoreHeaders::Allow => {}
            UnderscoreHeaders::DropHeader => {
                let dropped = UnderscoreHeaders::drop_from(req.headers_mut());
                if dropped > 0 {
                    tracing::debug!(dropped, "request header names with underscores dropped");
                }
            }
            UnderscoreHeaders::RejectRequest if UnderscoreHeaders::any_in(req.headers()) => {
                tracing::debug!("request refused: a header name has an underscore");
                if req.version() == Version::HTTP_2 {
                    return Err(h2::Error::from(h2::Reason::PROTOCOL_ERROR));
                }
                refuse_underscore = true;
            }
            UnderscoreHeaders::RejectRequest => {}
        }
        Ok(self.exchange(req, snapshot, refuse_underscore).await)
    }

    /// Runs one request through the filter chain, under `snapshot`; the response's body
    /// reports to telemetry when it ends. With `refuse_underscore` (an HTTP/1 request with
    /// a header name Envoy's codec refuses) it is answered 400 and the connection closed.
    async fn exchange<B>(
        &self,
        mut req: Request<B>,
        snapshot: Arc<filters::model::Snapshot>,
        refuse_underscore: bool,
    ) -> Response<TrackedBody>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<filters::body::BoxError>,
    {
        let h2 = req.version() == Version::HTTP_2;
        // HTTP/1.0 is answered 426 unless the connection manager accepts it (Envoy's
        // `accept_http_10`), before anything else is looked at; accepted, a request without
        // a Host gets `default_host_for_http_10` when there is one.
        let low_version = req.version() == Version::HTTP_10 && {
            let settings = snapshot.request_headers();
            if settings.accept_http_10 {
                if let Some(host) = &settings.default_host_for_http_10 {
                    if !req.headers().contains_key(header::HOST) {
                        if let Ok(v) = HeaderValue::from_str(host) {
                            req.headers_mut().insert(header::HOST, v);
                        }
                    }
                }
            }
            !settings.accept_http_10
        };
        // Envoy's codec refuses the header names before the connection manager sees the
        // version.
        let local_reply: Option<fn() -> Response<Body>> = if refuse_underscore {
            Some(underscore_refused)
        } else if low_version {
            Some(upgrade_required)
        } else {
            None
        };
        let upgrade_req = match (h2 || local_reply.is_some(), upgrade_of(req.headers())) {
            (true, _) | (false, Upgrade::None) => false,
            (false, Upgrade::WebSocket) => true,
            // Forwarded as a plain request: the hop-by-hop Upgrade header is dropped.
            (false, Upgrade::Strip) => false,
            (false, Upgrade::Refuse) => {
                tracing::info!(upgrade = ?req.headers().get(header::UPGRADE), "upgrade refused: only websocket is allowed");
                return TrackedBody::untracked(local(StatusCode::FORBIDDEN, ""));
            }
        };
        let (mut req, received, idle) = match self.request(req, upgrade_req, snapshot) {
            Ok(r) => r,
            // Not a request the chain could see (no Host, say): still 400 or 426,
            // unrecorded as the other refusals here.
            Err((status, why)) => {
                let mut resp = match local_reply {
                    Some(reply) => reply(),
                    None => local(status, why),
                };
                if refuse_underscore {
                    close_after(&mut resp);
                }
                return TrackedBody::untracked(resp);
            }
        };
        let in_flight = InFlight::start(&self.proxy, &self.activity);
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
        let source = self
            .source
            .get_or_init(|| {
                SourceLabels::new(PeerLabels::source(
                    &self.info,
                    &snapshot,
                    &self.proxy.telemetry.metrics.cluster,
                ))
            })
            .clone();
        // From here on the request is recorded even if the client goes away.
        let pending = Pending::new(in_flight, telemetry, source, received);
        let method = req.method().clone();
        let grpc = pending.telemetry().is_grpc();
        let downstream_upgrade = upgrade_req.then(|| hyper::upgrade::on(&mut req));
        let uri = req.uri().clone();
        let path = uri.path();
        let answer = match (local_reply, &idle) {
            // Recorded (metrics, access logs) as Envoy's local reply is.
            (Some(reply), _) => {
                drop(req);
                Ok(reply())
            }
            (None, None) => self.chain.clone().oneshot(req).await,
            // Before the response starts, a stream idle or over its maximum duration is
            // answered 408 (the chain, and the upstream call in it, is dropped).
            (None, Some(idle)) => tokio::select! {
                r = self.chain.clone().oneshot(req) => r,
                which = idle.expired() => Err(match which {
                    Expiry::Idle => filters::ProxyError::StreamIdleTimeout,
                    Expiry::MaxDuration => filters::ProxyError::StreamMaxDuration,
                }),
            },
        };
        if let Some(idle) = &idle {
            idle.touch();
        }
        let (mut resp, flags, details) = match answer {
            Ok(resp) => {
                // Answers the filters gave themselves carry their flag and details.
                let flag = resp.extensions().get::<ResponseFlag>().map_or("-", |f| f.0);
                let details = resp
                    .extensions()
                    .get::<ResponseDetails>()
                    .map_or("via_upstream", |d| d.0);
                (resp, flag, details.into())
            }
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
        let switching = upgrade_req && resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            splice(
                downstream_upgrade,
                resp.extensions_mut().remove::<OnUpgrade>(),
            );
        }
        strip_hop_by_hop(resp.headers_mut(), switching);
        if refuse_underscore {
            close_after(&mut resp);
        }
        let outcome = Outcome {
            code: resp.status().as_u16(),
            flags,
            details,
            response_header_bytes: header_bytes(resp.headers()) + 16,
            grpc_status: crate::telemetry::request::grpc_status(resp.headers()),
            response_headers: pending
                .telemetry()
                .wants_response_headers()
                .then(|| Box::new(resp.headers().clone())),
            ..Default::default()
        };
        // An upgraded connection is spliced, not streamed through the body.
        let watch = idle.filter(|_| !switching).map(|i| i.watch());
        pending.respond(resp, outcome, watch)
    }

    /// Converts hyper's request into the chain's form: origin-form URI plus a Host header,
    /// hop-by-hop headers removed, the body counted, the tunnel's context attached.
    fn request<B>(
        &self,
        req: Request<B>,
        upgrade: bool,
        snapshot: Arc<filters::model::Snapshot>,
    ) -> Result<Accepted, Refused>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<filters::body::BoxError>,
    {
        let (mut parts, incoming) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers, upgrade);
        // RFC 9112 3.2: several Host headers are a bad request (authorization would read one,
        // the backend another).
        if parts.headers.get_all(header::HOST).iter().count() > 1 {
            return Err((StatusCode::BAD_REQUEST, "duplicate host header"));
        }
        if let Some(auth) = parts.uri.authority().cloned() {
            match parts.headers.get(header::HOST) {
                None => {
                    if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
                        parts.headers.insert(header::HOST, v);
                    }
                }
                // An absolute-form URI or :authority naming another host than Host.
                Some(h) if !same_host(h.as_bytes(), auth.host().as_bytes()) => {
                    return Err((StatusCode::BAD_REQUEST, "host and authority differ"));
                }
                Some(_) => {}
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
        let settings = snapshot.request_headers();
        let idle = StreamIdle::start(settings.stream_idle_timeout, settings.max_stream_duration);
        let (body, received) = if http_body::Body::is_end_stream(&incoming) && !upgrade {
            (fbody::empty(), None)
        } else {
            let (body, received) = super::tracked::count_request(incoming, idle.clone());
            (body, Some(received))
        };
        snapshot.request_headers().apply(&mut parts.headers);
        let mut req = Request::from_parts(parts, body);
        req.extensions_mut().insert(RequestContext {
            snapshot,
            tunnel: self.info.clone(),
            log: None,
            decision: None,
        });
        Ok((req, received, idle))
    }
}

/// A request ready for the chain: its body's byte count (when it has one) and its timers
/// (when the connection manager has a stream idle timeout or a maximum stream duration).
type Accepted = (Request<Body>, Option<Received>, Option<Arc<StreamIdle>>);

/// A request refused before the chain: the status and the reason sent back.
type Refused = (StatusCode, &'static str);

/// Whether a Host header value names `host` (ports aside; ASCII case-insensitive).
fn same_host(header: &[u8], host: &[u8]) -> bool {
    let name = match header.iter().rposition(|b| *b == b':') {
        Some(i) if !header.ends_with(b"]") && header[i + 1..].iter().all(u8::is_ascii_digit) => {
            &header[..i]
        }
        _ => header,
    };
    name.eq_ignore_ascii_case(host)
}

/// What an HTTP/1.1 upgrade request becomes, as Envoy configured by istiod treats it
/// (`upgrade_configs`: `websocket` only).
#[derive(Debug, PartialEq, Eq)]
enum Upgrade {
    /// Not an upgrade request.
    None,
    /// A WebSocket upgrade: forwarded, and spliced after `101`.
    WebSocket,
    /// `h2c`: the upgrade is removed and the request served as it is, as Envoy does.
    Strip,
    /// Any other protocol: 403, nothing forwarded.
    Refuse,
}

fn upgrade_of(headers: &http::HeaderMap) -> Upgrade {
    if !is_upgrade(headers) {
        return Upgrade::None;
    }
    let tokens: Vec<String> = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect();
    match tokens.as_slice() {
        [t] if t == "websocket" => Upgrade::WebSocket,
        [t] if t == "h2c" => Upgrade::Strip,
        _ => Upgrade::Refuse,
    }
}

/// Whether an HTTP/1.1 request asks to switch protocols (`Connection: upgrade`).
fn is_upgrade(headers: &http::HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// After a `101 Switching Protocols`, copies bytes both ways between the client's and the
/// upstream's upgraded connections until both close.
fn splice(downstream: Option<OnUpgrade>, upstream: Option<OnUpgrade>) {
    let (Some(down), Some(up)) = (downstream, upstream) else {
        tracing::warn!("101 without an upgradable connection on both sides");
        return;
    };
    tokio::spawn(async move {
        match tokio::try_join!(down, up) {
            Ok((down, up)) => {
                let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                    tracing::debug!(error = %e, "upgraded connection ended");
                }
            }
            Err(e) => tracing::info!(error = %e, "upgrade failed"),
        }
    });
}

/// Envoy's answer to an HTTP/1 request with a header name containing `_` under
/// `headers_with_underscores_action: REJECT_REQUEST`: 400 `Bad Request` (flag `DPE`,
/// details `http1.unexpected_underscore`), the connection closed after it.
fn underscore_refused() -> Response<Body> {
    let mut r = local(StatusCode::BAD_REQUEST, "Bad Request");
    r.extensions_mut().insert(ResponseFlag("DPE"));
    r.extensions_mut()
        .insert(ResponseDetails("http1.unexpected_underscore"));
    r
}

/// Makes hyper close the HTTP/1.1 connection after `resp`, as Envoy closes it after a codec
/// error.
fn close_after<B>(resp: &mut Response<B>) {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// Envoy's answer to an HTTP/1.0 request when the connection manager does not accept
/// HTTP/1.0: `426 Upgrade Required`, no body, details `low_version`. (Envoy writes its
/// status line as `HTTP/1.1`; hyper answers an HTTP/1.0 client in HTTP/1.0.)
fn upgrade_required() -> Response<Body> {
    let mut r = local(StatusCode::UPGRADE_REQUIRED, "");
    r.extensions_mut().insert(ResponseDetails("low_version"));
    r
}

fn local(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut r = Response::new(fbody::full(text));
    *r.status_mut() = status;
    r
}
