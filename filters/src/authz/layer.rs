use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use http::{Request, Response, StatusCode, Uri};
use tower::{Layer, Service};

use super::attributes::{Attributes, HttpAttributes, JwtAuth};
use super::decide::{self, CustomOutcome, Denied, Subject};
use super::ext::outcome::{apply_headers, apply_to_request, denied_response, error_response};
use super::ext::{self, CheckError, CheckOutcome, CheckRequest, ExtAuthzClient, HeaderOp};
use super::path::{is_normal, normalize};
use crate::body::{self as fbody, Body};
use crate::explain::Trace;
use crate::future::LayerFuture;
use crate::model::RequestContext;
use crate::ProxyError;

/// Normalizes the request path, then enforces the AuthorizationPolicies bound to the
/// waypoint and to the addressed Service: CUSTOM (through the external authorization
/// client), DENY, ALLOW.
#[derive(Clone, Default)]
pub struct AuthzLayer {
    ext: Option<Arc<dyn ExtAuthzClient>>,
}

impl AuthzLayer {
    /// A layer whose CUSTOM policies are checked by `client`. Without a client (the
    /// default), a request a CUSTOM policy matches fails as its provider's
    /// `statusOnError` says.
    pub fn with_ext_authz(client: Arc<dyn ExtAuthzClient>) -> Self {
        Self { ext: Some(client) }
    }
}

impl std::fmt::Debug for AuthzLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthzLayer")
            .field("ext_authz", &self.ext.is_some())
            .finish()
    }
}

impl<S> Layer<S> for AuthzLayer {
    type Service = AuthzService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthzService {
            inner,
            ext: self.ext.clone(),
        }
    }
}

/// The service [`AuthzLayer`] produces.
#[derive(Clone)]
pub struct AuthzService<S> {
    inner: S,
    ext: Option<Arc<dyn ExtAuthzClient>>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for AuthzService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthzService")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S> Service<Request<Body>> for AuthzService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = LayerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        // The clone takes the place of the service that was polled ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let Some(ctx) = req.extensions().get::<RequestContext>().cloned() else {
            return LayerFuture::ready(Err(ProxyError::Internal("request without context".into())));
        };
        let sink = crate::explain::sink_of(&req);
        if let Err(e) = normalize_path(&ctx, &mut req, Trace::new(sink.as_ref())) {
            return LayerFuture::ready(Err(e));
        }
        if !ctx.snapshot.authz().may_ask_provider(&ctx.tunnel.target) {
            // No provider to ask: the decision is made without waiting, and the inner
            // service's future is returned as it is.
            let decided = authorize(&ctx, None, req, Trace::new(sink.as_ref())).now_or_never();
            return match decided {
                Some(Ok((req, _))) => LayerFuture::inner(inner.call(req)),
                Some(Err(reply)) => LayerFuture::ready(reply),
                None => LayerFuture::ready(Err(ProxyError::Internal(
                    "authorization without an ext_authz provider waited".into(),
                ))),
            };
        }
        let ext = self.ext.clone();
        LayerFuture::boxed(async move {
            let trace = Trace::new(sink.as_ref());
            let (req, response_headers) = match authorize(&ctx, ext.as_deref(), req, trace).await {
                Ok(r) => r,
                Err(reply) => return reply,
            };
            let mut resp = inner.call(req).await?;
            apply_headers(resp.headers_mut(), &response_headers);
            Ok(resp)
        })
    }
}

/// Normalizes the request path in place (the policies and the upstream both see the
/// normalized path), recording a change into `trace`.
fn normalize_path(
    ctx: &RequestContext,
    req: &mut Request<Body>,
    trace: Trace<'_>,
) -> Result<(), ProxyError> {
    let normalization = ctx.snapshot.authz().normalization;
    if is_normal(req.uri().path(), normalization) {
        return Ok(());
    }
    let path = normalize(req.uri().path(), normalization)
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    if path != req.uri().path() {
        trace.step(|| {
            crate::explain::Step::new(crate::explain::Stage::Authorization, "path", "normalized")
                .detail(format!(
                    "{:?} is matched and sent as {path:?}",
                    req.uri().path()
                ))
        });
        let pq = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        *req.uri_mut() = Uri::try_from(pq).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    }
    Ok(())
}

fn host_of(req: &Request<Body>) -> &str {
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
}

fn attributes<'a>(ctx: &'a RequestContext, req: &'a Request<Body>) -> Attributes<'a> {
    let mut attrs = Attributes::of_tunnel(&ctx.tunnel);
    attrs.http = Some(HttpAttributes {
        method: req.method().as_str(),
        host: host_of(req),
        path: req.uri().path(),
        query: req.uri().query(),
        path_and_query: req.uri().path_and_query().map(|pq| pq.as_str()),
        headers: req.headers(),
        auth: req.extensions().get::<JwtAuth>(),
    });
    attrs
}

/// A local reply from the ext_authz step; gRPC clients get it as a gRPC status, as
/// Envoy's local replies are.
fn local_reply(grpc: bool, resp: Response<Body>) -> Response<Body> {
    if !grpc {
        return resp;
    }
    let status = resp.status();
    let mut out = Response::new(fbody::empty());
    *out.headers_mut() = resp.headers().clone();
    crate::error::set_grpc_status(
        out.headers_mut(),
        crate::error::grpc_status_for(status),
        status.canonical_reason().unwrap_or_default(),
    );
    // The flag and details of the answer given (ext_authz's own unless it set them).
    let flag = resp
        .extensions()
        .get::<crate::error::ResponseFlag>()
        .copied();
    out.extensions_mut()
        .insert(flag.unwrap_or(crate::error::ResponseFlag("UAEX")));
    if let Some(d) = resp
        .extensions()
        .get::<crate::error::ResponseDetails>()
        .copied()
    {
        out.extensions_mut().insert(d);
    }
    out
}

/// An HTTP request being authorized: its attributes come from the request (as the
/// ext_authz server leaves it); a CUSTOM check sends it (with its body, when the provider
/// wants it) through the ext_authz client.
struct HttpSubject<'a> {
    ctx: &'a RequestContext,
    client: Option<&'a dyn ExtAuthzClient>,
    grpc: bool,
    req: Request<Body>,
    /// Headers an allowing ext_authz answer adds to the response.
    response_headers: Vec<HeaderOp>,
}

impl Subject for HttpSubject<'_> {
    /// A local reply (an ext_authz denial, failure or an oversized body), or an error.
    type Reply = Result<Response<Body>, ProxyError>;

    fn attributes(&self) -> Attributes<'_> {
        attributes(self.ctx, &self.req)
    }

    async fn check_custom(
        &mut self,
        provider: &ext::Provider,
        _policies: &[String],
    ) -> Result<CustomOutcome<Self::Reply>, CheckError> {
        let req = std::mem::replace(&mut self.req, Request::new(fbody::empty()));
        let (mut parts, body) = req.into_parts();
        let mut check = CheckRequest::of_request(self.ctx, &parts);
        // The buffered body's share of the global budget is held until the check is done.
        let (body, _held) = match provider.body {
            None => (body, None),
            Some(settings) => {
                let length = check.http.as_ref().map(|h| h.size).filter(|s| *s >= 0);
                let budget = crate::budget::Budget::global();
                match ext::body::buffer(body, settings, length.map(|l| l as u64), &budget).await {
                    Ok(b) => {
                        if let Some(h) = check.http.as_mut() {
                            h.body = Some(b.bytes);
                            h.partial_body = b.partial;
                        }
                        (b.body, Some(b.held))
                    }
                    Err(e) if e.is::<ext::body::TooLarge>() => {
                        tracing::info!(provider = %provider.name, error = %e, "request body too large for the ext_authz check");
                        let mut r = Response::new(fbody::full("Payload Too Large"));
                        *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                        return Ok(CustomOutcome::Denied(Ok(local_reply(self.grpc, r))));
                    }
                    Err(e) if e.is::<ext::body::OverBudget>() => {
                        tracing::warn!(provider = %provider.name, error = %e, "request body not buffered for the ext_authz check");
                        let mut r =
                            Response::new(fbody::full("buffered request bodies over the limit"));
                        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        r.extensions_mut().insert(crate::error::ResponseFlag("OM"));
                        r.extensions_mut().insert(crate::error::ResponseDetails(
                            "ext_authz_body_over_global_limit",
                        ));
                        return Ok(CustomOutcome::Denied(Ok(local_reply(self.grpc, r))));
                    }
                    Err(e) => {
                        return Ok(CustomOutcome::Denied(Err(ProxyError::BadRequest(format!(
                            "reading the request body for the ext_authz check: {e}"
                        )))))
                    }
                }
            }
        };
        let outcome = match self.client {
            Some(c) => ext::check_with_timeout(c, provider, self.ctx, check).await,
            None => Err(CheckError::Unreachable {
                provider: provider.name.clone(),
                reason: "no ext_authz client in this proxy".into(),
            }),
        };
        let outcome = match outcome {
            Ok(CheckOutcome::Allow(allowed)) => {
                apply_to_request(&allowed, &mut parts);
                self.response_headers = allowed.response_headers;
                Ok(CustomOutcome::Allowed)
            }
            Ok(CheckOutcome::Deny(denied)) => Ok(CustomOutcome::Denied(Ok(local_reply(
                self.grpc,
                denied_response(&denied),
            )))),
            Err(e) => Err(e),
        };
        self.req = Request::from_parts(parts, body);
        outcome
    }

    fn check_failed(&self, provider: &ext::Provider, _error: CheckError) -> Self::Reply {
        Ok(local_reply(
            self.grpc,
            error_response(provider.status_on_error),
        ))
    }
}

/// Authorizes the request: `Ok` with the request (as the ext_authz server left it) and
/// the headers to add to the response, or the answer to give instead.
async fn authorize(
    ctx: &RequestContext,
    client: Option<&dyn ExtAuthzClient>,
    req: Request<Body>,
    trace: crate::explain::Trace<'_>,
) -> Result<(Request<Body>, Vec<HeaderOp>), Result<Response<Body>, ProxyError>> {
    let mut subject = HttpSubject {
        ctx,
        client,
        grpc: crate::error::is_grpc(req.headers()),
        req,
        response_headers: Vec::new(),
    };
    match decide::authorize_traced(
        ctx.snapshot.authz(),
        &ctx.tunnel.target,
        &mut subject,
        trace,
    )
    .await
    {
        Ok(()) => Ok((subject.req, subject.response_headers)),
        Err(Denied::Policy(policy)) => {
            if !trace.on() {
                tracing::info!(%policy, peer = %ctx.tunnel.peer, path = subject.req.uri().path(), "authorization denied");
            }
            Err(Err(ProxyError::Denied(policy)))
        }
        Err(Denied::Custom(reply)) => Err(reply),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::time::Duration;

    use http::{HeaderName, HeaderValue};
    use tower::{service_fn, ServiceExt};

    use super::*;
    use crate::authz::ext::{
        Allowed, CheckFuture, Denied as ExtDenied, HeaderAction, Provider, ProviderEntry,
        ProviderKind,
    };
    use crate::authz::matcher::PathPattern;
    use crate::authz::model::{Action, Field, Operation, Policy, Rule};
    use crate::authz::{Policies, PolicySet};
    use crate::model::test_support::context_with;
    use crate::model::NamespacedName;

    /// Answers from the `x-answer` header of the checked request: allow, deny, slow, fail.
    struct Mock {
        calls: AtomicUsize,
    }

    impl ExtAuthzClient for Mock {
        fn check<'a>(
            &'a self,
            provider: &'a Provider,
            _ctx: &'a RequestContext,
            request: CheckRequest,
        ) -> CheckFuture<'a> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            Box::pin(async move {
                let h = request.http.expect("HTTP check");
                let answer = h
                    .headers
                    .iter()
                    .find(|(n, _)| n == "x-answer")
                    .map(|(_, v)| v.clone());
                let op = |n: &'static str, v: &'static str| HeaderOp {
                    name: HeaderName::from_static(n),
                    value: HeaderValue::from_static(v),
                    action: HeaderAction::Set,
                };
                match answer.as_deref() {
                    Some("allow") => Ok(CheckOutcome::Allow(Allowed {
                        request_headers: vec![op("x-user", "alice")],
                        response_headers: vec![op("x-down", "1")],
                        ..Default::default()
                    })),
                    Some("slow") => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        unreachable!("timed out before")
                    }
                    Some("fail") => Err(CheckError::Failed {
                        provider: provider.name.clone(),
                        reason: "boom".into(),
                    }),
                    _ => Ok(CheckOutcome::Deny(ExtDenied {
                        status: StatusCode::UNAUTHORIZED,
                        headers: vec![op("x-why", "no")],
                        body: bytes::Bytes::from_static(b"nope"),
                    })),
                }
            })
        }
    }

    fn set(fail_open: bool) -> PolicySet {
        let policy = Policy {
            name: NamespacedName::new("default", "ext"),
            action: Action::Custom("mock".into()),
            dry_run: false,
            rules: vec![Rule {
                to: vec![Operation {
                    paths: Field {
                        values: vec![PathPattern::parse("/secure*").unwrap()],
                        not_values: vec![],
                    },
                    ..Default::default()
                }],
                ..Default::default()
            }],
            matched: AtomicU64::new(0),
        };
        let provider = Provider {
            name: "mock".into(),
            service: "mock".into(),
            port: 1,
            timeout: Duration::from_millis(50),
            fail_open,
            status_on_error: StatusCode::SERVICE_UNAVAILABLE,
            body: None,
            kind: ProviderKind::Grpc,
            cluster: None,
        };
        PolicySet::policies(
            Policies {
                gateway: vec![Arc::new(policy)],
                providers: [("mock".to_string(), ProviderEntry::Ready(Arc::new(provider)))].into(),
                ..Default::default()
            },
            Default::default(),
        )
    }

    async fn run(mock: &Arc<Mock>, fail_open: bool, path: &str, answer: &str) -> Response<Body> {
        let inner = service_fn(|req: Request<Body>| async move {
            let mut r = Response::new(fbody::empty());
            if let Some(u) = req.headers().get("x-user") {
                r.headers_mut().insert("x-saw-user", u.clone());
            }
            Ok::<_, ProxyError>(r)
        });
        let client: Arc<dyn ExtAuthzClient> = mock.clone();
        let svc = AuthzLayer::with_ext_authz(client).layer(inner);
        let mut req = Request::get(path)
            .header("host", "echo")
            .header("x-answer", answer)
            .body(fbody::empty())
            .unwrap();
        req.extensions_mut().insert(context_with(set(fail_open)));
        match svc.oneshot(req).await {
            Ok(r) => r,
            Err(e) => e.to_response(),
        }
    }

    #[tokio::test]
    async fn custom_policies_through_a_mock_client() {
        let mock = Arc::new(Mock {
            calls: AtomicUsize::new(0),
        });
        let r = run(&mock, false, "/public", "deny").await;
        assert_eq!(r.status(), 200);
        assert_eq!(mock.calls.load(Ordering::Relaxed), 0, "rules do not match");

        let r = run(&mock, false, "/secure", "allow").await;
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["x-saw-user"],
            "alice",
            "upstream headers applied"
        );
        assert_eq!(r.headers()["x-down"], "1", "response headers applied");

        let r = run(&mock, false, "/secure", "deny").await;
        assert_eq!(r.status(), 401);
        assert_eq!(r.headers()["x-why"], "no");

        let r = run(&mock, false, "/secure", "slow").await;
        assert_eq!(r.status(), 503, "timeout: statusOnError");
        let r = run(&mock, false, "/secure", "fail").await;
        assert_eq!(r.status(), 503, "error: statusOnError");
        let r = run(&mock, true, "/secure", "fail").await;
        assert_eq!(r.status(), 200, "failOpen");
        assert_eq!(mock.calls.load(Ordering::Relaxed), 5);
    }
}
