use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};

use super::apply::{location_header, modify_headers, redirect_location, rewrite};
use super::future::RouteFuture;
use super::model::{
    AbortStatus, Cors, DirectResponse, Fault, FaultAbort, Filter, HeaderModifier, Mirror,
};
use super::{decide_traced, RouteDecision};
use crate::body::{self, Body};
use crate::error::ResponseFlag;
use crate::explain::{describe, Trace};
use crate::model::RequestContext;
use crate::ProxyError;

/// Routes every request ([`super::decide`]) and applies the matched rule's filters:
/// redirects and CORS preflights are answered here; header modifiers, rewrites and mirrors
/// change or copy the request; response header modifiers and CORS headers change the
/// response. The [`RouteDecision`] goes to the inner services in the request's context.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteLayer;

impl<S> Layer<S> for RouteLayer {
    type Service = RouteService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RouteService { inner }
    }
}

/// The service [`RouteLayer`] produces.
#[derive(Debug, Clone)]
pub struct RouteService<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for RouteService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RouteFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The inner service was polled ready; keep that one and leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let routed = route(req);
        match routed.wait {
            None => match routed.outcome {
                Outcome::Answer(answer) => RouteFuture::ready(answer),
                Outcome::Send { req, post, mirrors } => {
                    for m in &mirrors {
                        mirror(&inner, &req, m);
                    }
                    RouteFuture::inner(inner.call(req), post)
                }
            },
            // An injected delay: the only wait of this layer's own.
            Some(delay) => RouteFuture::boxed(async move {
                tokio::time::sleep(delay).await;
                match routed.outcome {
                    Outcome::Answer(answer) => answer,
                    Outcome::Send { req, post, mirrors } => {
                        for m in &mirrors {
                            mirror(&inner, &req, m);
                        }
                        let resp = inner.ready().await?.call(req).await?;
                        Ok(post.apply(resp))
                    }
                }
            }),
        }
    }
}

/// What routing made of a request: what to do with it, and how long an injected fault
/// delays that.
struct Routed {
    wait: Option<Duration>,
    outcome: Outcome,
}

/// The answer routing gives itself, or the request to send on.
// Lives on the stack for one call (or in the future of a delayed request); boxing the
// larger variant would cost the allocation this layer avoids.
#[allow(clippy::large_enum_variant)]
enum Outcome {
    Answer(Result<Response<Body>, ProxyError>),
    Send {
        req: Request<Body>,
        post: Post,
        mirrors: Vec<std::sync::Arc<Mirror>>,
    },
}

impl Routed {
    fn answer(wait: Option<Duration>, answer: Result<Response<Body>, ProxyError>) -> Self {
        Routed {
            wait,
            outcome: Outcome::Answer(answer),
        }
    }
}

/// Routes the request and applies the matched rule's filters, without waiting: a fault's
/// delay is drawn here and waited by the caller.
fn route(mut req: Request<Body>) -> Routed {
    let Some(ctx) = req.extensions().get::<RequestContext>().cloned() else {
        let e = ProxyError::Internal("request without context".into());
        return Routed::answer(None, Err(e));
    };
    let sink = crate::explain::sink_of(&req);
    let trace = Trace::new(sink.as_ref());
    let selection = match decide_traced(&ctx, &req, trace) {
        Ok(s) => s,
        Err(e) => return Routed::answer(None, Err(e)),
    };
    let mut response_mods: Vec<HeaderModifier> = Vec::new();
    let mut cors: Option<Cors> = None;
    let mut mirrors = Vec::new();
    let mut direct = None;
    let mut delayed = false;
    let mut wait = None;
    if let Some(sel) = &selection.rule {
        tracing::debug!(route = %sel.route.name, rule = sel.rule_index, "matched");
        if let Some(log) = &ctx.log {
            log.set_route(&sel.route);
        }
        for f in sel.filters() {
            if trace.on() && !matches!(f, Filter::Redirect(_) | Filter::Rewrite(_)) {
                trace.step(|| describe::filter(f, None));
            }
            match f {
                Filter::Redirect(r) => {
                    let port = ctx.tunnel.authority.port();
                    let location = redirect_location(&req, sel.path(), r, "http", port);
                    trace.step(|| {
                        describe::filter(f, Some(format!("{} Location: {location}", r.status)))
                    });
                    return Routed::answer(wait, Ok(redirect(r.status, &location)));
                }
                Filter::RequestHeaders(m) => modify_headers(req.headers_mut(), m),
                Filter::ResponseHeaders(m) => response_mods.push(m.clone()),
                Filter::Rewrite(r) => {
                    rewrite(&mut req, sel.path(), r);
                    trace.step(|| {
                        let host = req
                            .headers()
                            .get(http::header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .unwrap_or_default();
                        describe::filter(f, Some(format!("sent as {host} {}", req.uri())))
                    });
                }
                Filter::Mirror(m) => mirrors.push(m.clone()),
                Filter::Cors(c) => cors = Some(c.clone()),
                Filter::DirectResponse(d) => direct = Some(d),
                Filter::Fault(f) => {
                    let injected = inject(f, crate::error::is_grpc(req.headers()), trace);
                    if let Some(d) = injected.delay {
                        delayed = true;
                        // An explained request is not delayed: the draw is recorded.
                        if !trace.on() {
                            wait = Some(wait.unwrap_or_default() + d);
                        }
                    }
                    if let Some(resp) = injected.abort {
                        return Routed::answer(wait, Ok(resp));
                    }
                }
            }
        }
    }
    let changes = ResponseChanges {
        mods: response_mods,
        origin: req.headers().get(http::header::ORIGIN).cloned(),
        cors,
    };
    if let (Some(c), Some(o)) = (&changes.cors, &changes.origin) {
        if answers_preflight(c, o, &req) {
            return Routed::answer(wait, Ok(preflight(c, o, req.headers())));
        }
    }
    if let Some(d) = direct {
        let mut resp = direct_response(d);
        changes.apply(&mut resp);
        return Routed::answer(wait, Ok(resp));
    }
    let backend = match selection.backend {
        Ok(b) => b,
        Err(e) => return Routed::answer(wait, Err(ProxyError::InvalidBackend(e))),
    };
    // Without a rule (a Service with no routes), as istiod's default route: no timeout,
    // and a gRPC request's `grpc-timeout` header sets one (`max_grpc_timeout: 0s`).
    let (timeouts, retry) = selection
        .rule
        .as_ref()
        .map(|s| (s.rule().timeouts, s.rule().retry.clone()))
        .unwrap_or((
            super::model::Timeouts {
                grpc_timeout_max: Some(std::time::Duration::ZERO),
                ..Default::default()
            },
            None,
        ));
    // An explained request is not mirrored (its Mirror filter step says where copies go).
    if trace.on() {
        mirrors.clear();
    }
    let policies = hash_inputs(selection.rule.as_ref(), &backend);
    let (hash, set_cookie) = super::request_hash(policies, &req, ctx.tunnel.source_ip);
    let decision = RouteDecision {
        hash,
        backend,
        rule: selection.rule,
        timeouts,
        retry,
    };
    if let Some(c) = req.extensions_mut().get_mut::<RequestContext>() {
        c.decision = Some(decision);
    }
    let post = Post {
        set_cookie,
        delayed,
        changes,
    };
    Routed {
        wait,
        outcome: Outcome::Send { req, post, mirrors },
    }
}

/// What routing does to the upstream's response: a generated hash cookie, the delay
/// flag, the rule's response header changes and CORS headers.
pub(super) struct Post {
    set_cookie: Option<HeaderValue>,
    delayed: bool,
    changes: ResponseChanges,
}

impl Post {
    /// Applies the changes to `resp`.
    pub(super) fn apply(self, mut resp: Response<Body>) -> Response<Body> {
        if let Some(c) = self.set_cookie {
            resp.headers_mut().append(http::header::SET_COOKIE, c);
        }
        if self.delayed && resp.extensions().get::<ResponseFlag>().is_none() {
            resp.extensions_mut().insert(ResponseFlag("DI"));
        }
        self.changes.apply(&mut resp);
        resp
    }
}

/// What the matched rule does to the response, whoever answers: header modifiers, and CORS
/// headers for an allowed origin.
pub(super) struct ResponseChanges {
    mods: Vec<HeaderModifier>,
    cors: Option<Cors>,
    origin: Option<HeaderValue>,
}

impl ResponseChanges {
    fn apply(&self, resp: &mut Response<Body>) {
        for m in &self.mods {
            modify_headers(resp.headers_mut(), m);
        }
        if let (Some(c), Some(o)) = (&self.cors, &self.origin) {
            cors_headers(c, o, resp.headers_mut());
        }
    }
}

/// Whether the CORS filter answers `req` itself: a preflight, from an allowed origin or
/// with `forward_not_matching_preflights` off.
fn answers_preflight(c: &Cors, origin: &HeaderValue, req: &Request<Body>) -> bool {
    req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
        && (!c.forward_not_matching_preflights || origin_allowed(c, origin.to_str().unwrap_or("")))
}

/// The request's hash inputs: the matched route's (xDS), else the backend port's own (a
/// local DestinationRule).
fn hash_inputs<'a>(
    rule: Option<&'a super::SelectedRule>,
    backend: &'a super::Backend,
) -> &'a [super::model::HashPolicy] {
    let route = rule.map(|s| &s.rule().hash_policy[..]);
    let port = match backend {
        super::Backend::Service { service, port } => service.port(*port).map(|p| p.hash_policy()),
        super::Backend::Workload { .. } => None,
    };
    route.filter(|h| !h.is_empty()).or(port).unwrap_or(&[])
}

fn redirect(status: u16, location: &str) -> Response<Body> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
    if let Some((k, v)) = location_header(location) {
        resp.headers_mut().insert(k, v);
    }
    resp
}

/// Sends a copy of a body-less request to the mirror backend and forgets about it.
/// Requests with a body are not mirrored (their body streams once, to the real backend).
fn mirror<S>(inner: &S, req: &Request<Body>, m: &Mirror)
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    use http_body::Body as _;
    if !req.body().is_end_stream() || rand::random::<f64>() >= m.fraction {
        return;
    }
    let mut copy = Request::new(body::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    if let Some(ctx) = req.extensions().get::<RequestContext>() {
        // The copy's outcome is not the request's: it records nothing.
        let mut ctx = ctx.clone();
        ctx.log = None;
        ctx.decision = Some(RouteDecision {
            hash: None,
            backend: m.backend.clone(),
            rule: None,
            timeouts: Default::default(),
            retry: None,
        });
        copy.extensions_mut().insert(ctx);
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        if let Err(e) = inner.oneshot(copy).await {
            tracing::debug!(error = %e, "mirror request failed");
        }
    });
}

/// What a fault filter drew for a request.
struct Injected {
    /// The delay drawn.
    delay: Option<Duration>,
    /// The answer given instead of the upstream's (after the delay).
    abort: Option<Response<Body>>,
}

/// Draws a route's fault: the delay, then the abort, each on its share of requests, as
/// Envoy's fault filter does. The caller waits the delay.
fn inject(f: &Fault, grpc: bool, trace: Trace<'_>) -> Injected {
    let drawn = |fraction: f64| fraction >= 1.0 || rand::random::<f64>() < fraction;
    let delay = f.delay.as_ref().filter(|d| drawn(d.fraction)).map(|d| {
        trace.step(|| {
            crate::explain::Step::new(crate::explain::Stage::Filter, "fault delay", "drawn")
                .detail(format!("the request waits {:?} first", d.duration))
        });
        d.duration
    });
    let abort = f.abort.as_ref().filter(|a| drawn(a.fraction)).map(|a| {
        trace.step(|| {
            crate::explain::Step::new(crate::explain::Stage::Filter, "fault abort", "drawn")
                .detail(format!("{:?}", a.status))
        });
        fault_abort(a, grpc)
    });
    Injected { delay, abort }
}

/// A fault abort's answer: the HTTP status with its body, or a trailers-only gRPC answer
/// with the gRPC status (a gRPC abort, or an HTTP abort to a gRPC client as Envoy maps it).
fn fault_abort(a: &FaultAbort, grpc: bool) -> Response<Body> {
    let http_status = |s: u16| StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut resp = Response::new(body::empty());
    match (a.status, grpc) {
        (AbortStatus::Grpc(code), _) => {
            crate::error::set_grpc_status(resp.headers_mut(), code, &a.body)
        }
        (AbortStatus::Http(status), true) => {
            let code = crate::error::grpc_status_for(http_status(status));
            crate::error::set_grpc_status(resp.headers_mut(), code, &a.body)
        }
        (AbortStatus::Http(status), false) => {
            *resp.status_mut() = http_status(status);
            *resp.body_mut() = body::full(a.body.clone());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain"),
            );
        }
    }
    resp.extensions_mut().insert(ResponseFlag("FI"));
    resp.extensions_mut()
        .insert(crate::error::ResponseDetails("fault_filter_abort"));
    resp
}

/// The route's own answer (Envoy's `direct_response`): its status, and its body as
/// `text/plain`.
fn direct_response(d: &DirectResponse) -> Response<Body> {
    let mut resp = Response::new(body::full(d.body.clone()));
    *resp.status_mut() =
        StatusCode::from_u16(d.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if !d.body.is_empty() {
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
    }
    resp.extensions_mut()
        .insert(crate::error::ResponseDetails("direct_response"));
    resp
}

fn origin_allowed(c: &Cors, origin: &str) -> bool {
    c.allow_origins.iter().any(|o| o.matches(origin))
}

fn preflight(c: &Cors, origin: &HeaderValue, requested: &http::HeaderMap) -> Response<Body> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::OK;
    cors_headers(c, origin, resp.headers_mut());
    if origin_allowed(c, origin.to_str().unwrap_or("")) {
        // `*` cannot be used with credentials: then the requested values are echoed.
        let allow = |list: &[String], asked: http::HeaderName| -> Option<HeaderValue> {
            if list.iter().any(|m| m == "*") {
                if c.allow_credentials {
                    requested.get(asked).cloned()
                } else {
                    Some(HeaderValue::from_static("*"))
                }
            } else if list.is_empty() {
                None
            } else {
                HeaderValue::from_str(&list.join(", ")).ok()
            }
        };
        let methods = allow(
            &c.allow_methods,
            http::header::ACCESS_CONTROL_REQUEST_METHOD,
        );
        let headers = allow(
            &c.allow_headers,
            http::header::ACCESS_CONTROL_REQUEST_HEADERS,
        );
        let h = resp.headers_mut();
        if let Some(v) = methods {
            h.insert(http::header::ACCESS_CONTROL_ALLOW_METHODS, v);
        }
        if let Some(v) = headers {
            h.insert(http::header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        if let Some(age) = c.max_age {
            h.insert(http::header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age));
        }
    }
    resp
}

fn cors_headers(c: &Cors, origin: &HeaderValue, h: &mut http::HeaderMap) {
    if !origin_allowed(c, origin.to_str().unwrap_or("")) {
        return;
    }
    h.insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if c.allow_credentials {
        h.insert(
            http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !c.expose_headers.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&c.expose_headers.join(", ")) {
            h.insert(http::header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use tower::{service_fn, ServiceExt};

    use super::*;
    use crate::model::*;
    use crate::route::model::OriginMatch;
    use crate::route::Backend;

    fn ctx() -> RequestContext {
        let wl = Arc::new(Workload {
            name: NamespacedName::new("default", "pod-a"),
            ips: vec!["127.128.0.1".parse().unwrap()],
            identity: Identity::new("cluster.local", "default", "default"),
            labels: BTreeMap::new(),
            hbone: true,
            served: true,
            named_ports: BTreeMap::new(),
        });
        let mut parts = SnapshotParts::empty(
            1,
            "test".into(),
            Waypoint {
                gateway: NamespacedName::new("default", "waypoint"),
                trust_domain: "cluster.local".into(),
            },
        );
        parts.workloads = vec![wl.clone()];
        let snapshot = Arc::new(Snapshot::new(parts).unwrap());
        RequestContext {
            log: None,
            decision: None,
            snapshot,
            tunnel: Arc::new(TunnelInfo {
                peer: Identity::new("cluster.local", "default", "sleep"),
                peer_addr: None,
                source_ip: None,
                source_port: None,
                authority: "127.128.0.1:8080".parse().unwrap(),
                target: Target::Workload {
                    workload: wl,
                    port: 8080,
                },
                baggage: None,
                traceparent: None,
                principal_cache: Default::default(),
                log_slot: Default::default(),
            }),
        }
    }

    #[tokio::test]
    async fn attaches_decision_for_inner_service() {
        let inner = service_fn(|req: Request<Body>| async move {
            let d = RouteDecision::of(&req).expect("decision");
            let Backend::Workload { port, .. } = &d.backend else {
                panic!("expected workload backend")
            };
            assert_eq!(*port, 8080);
            Ok::<_, ProxyError>(Response::new(crate::body::empty()))
        });
        let mut req = Request::new(crate::body::empty());
        req.extensions_mut().insert(ctx());
        let resp = RouteLayer.layer(inner).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
    }

    #[tokio::test]
    async fn missing_context_is_internal_error() {
        let inner = service_fn(|_req: Request<Body>| async move {
            Ok::<_, ProxyError>(Response::new(crate::body::empty()))
        });
        let err = RouteLayer
            .layer(inner)
            .oneshot(Request::new(crate::body::empty()))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Internal(_)));
    }

    #[test]
    fn cors_origin_patterns() {
        let c = Cors {
            allow_origins: vec![
                OriginMatch::Pattern("https://*.example.com".into()),
                OriginMatch::Pattern("http://a".into()),
            ],
            ..Cors::default()
        };
        assert!(origin_allowed(&c, "https://www.example.com"));
        assert!(origin_allowed(&c, "http://a"));
        assert!(!origin_allowed(&c, "https://example.org"));
    }
}
