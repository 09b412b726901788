use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode, Uri};
use tower::{Layer, Service};

use super::attributes::{Attributes, HttpAttributes, JwtAuth};
use super::engine::{evaluate, Verdict};
use super::ext::outcome::{apply_headers, apply_to_request, denied_response, error_response};
use super::ext::{self, CheckOutcome, CheckRequest, CustomPlan, ExtAuthzClient, HeaderOp};
use super::path::{is_normal, normalize};
use crate::body::{self as fbody, Body};
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

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

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
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The clone takes the place of the service that was polled ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let ext = self.ext.clone();
        Box::pin(async move {
            let mut req = req;
            let ctx = req
                .extensions()
                .get::<RequestContext>()
                .cloned()
                .ok_or_else(|| ProxyError::Internal("request without context".into()))?;
            let path = normalize_path(&ctx, &mut req)?;
            let response_headers = match authorize(&ctx, ext.as_deref(), &path, req).await? {
                Authorized::Proceed(r, headers) => {
                    req = r;
                    headers
                }
                Authorized::Reply(resp) => return Ok(resp),
            };
            let mut resp = inner.call(req).await?;
            apply_headers(resp.headers_mut(), &response_headers);
            Ok(resp)
        })
    }
}

/// Normalizes the path in place; returns it (without the query).
fn normalize_path(ctx: &RequestContext, req: &mut Request<Body>) -> Result<String, ProxyError> {
    if is_normal(req.uri().path(), ctx.snapshot.authz.normalization) {
        return Ok(req.uri().path().to_string());
    }
    let path = normalize(req.uri().path(), ctx.snapshot.authz.normalization)
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    if path != req.uri().path() {
        let pq = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        *req.uri_mut() = Uri::try_from(pq).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    }
    Ok(path)
}

enum Authorized {
    /// Go upstream; add these headers to the response (from an allowing check).
    Proceed(Request<Body>, Vec<HeaderOp>),
    /// Answer the client with this (an ext_authz denial or failure).
    Reply(Response<Body>),
}

fn host_of(req: &Request<Body>) -> &str {
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
}

fn attributes<'a>(
    ctx: &'a RequestContext,
    req: &'a Request<Body>,
    path: &'a str,
) -> Attributes<'a> {
    let mut attrs = Attributes::of_tunnel(&ctx.tunnel);
    attrs.http = Some(HttpAttributes {
        method: req.method().as_str(),
        host: host_of(req),
        path,
        query: req.uri().query(),
        headers: req.headers(),
        auth: req.extensions().get::<JwtAuth>(),
    });
    attrs
}

fn is_grpc(req_headers: &http::HeaderMap) -> bool {
    req_headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
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
    let h = out.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    h.insert(
        "grpc-status",
        http::HeaderValue::from(crate::error::grpc_status_for(status)),
    );
    if let Some(reason) = status.canonical_reason() {
        h.insert("grpc-message", http::HeaderValue::from_static(reason));
    }
    out.extensions_mut()
        .insert(crate::error::ResponseFlag("UAEX"));
    out
}

async fn authorize(
    ctx: &RequestContext,
    client: Option<&dyn ExtAuthzClient>,
    path: &str,
    req: Request<Body>,
) -> Result<Authorized, ProxyError> {
    let set = &ctx.snapshot.authz;
    if let Some(chain) = set.rbac_for(&ctx.tunnel.target) {
        let attrs = attributes(ctx, &req, path);
        return match super::PolicySet::enforce_rbac(chain, &attrs) {
            Ok(()) => Ok(Authorized::Proceed(req, Vec::new())),
            Err(policy) => {
                tracing::info!(%policy, peer = %ctx.tunnel.peer, path, "denied by RBAC");
                Err(ProxyError::Denied(policy))
            }
        };
    }
    let policies = set.for_service(ctx.tunnel.target.service_name());
    if policies.is_empty() {
        return Ok(Authorized::Proceed(req, Vec::new()));
    }
    let plan = ext::custom_plan(&policies, &set.providers, &attributes(ctx, &req, path));
    let grpc = is_grpc(req.headers());
    let mut response_headers = Vec::new();
    let mut req = req;
    match plan {
        CustomPlan::Skip => {}
        CustomPlan::DenyAll(why) => {
            super::count(&Verdict::Deny(why.clone()));
            tracing::info!(reason = %why, peer = %ctx.tunnel.peer, path, "CUSTOM authorization unusable: denying");
            return Err(ProxyError::Denied(why));
        }
        CustomPlan::Check { provider, policies } => {
            // Rare, and its future is large: boxed, it is not part of every request's.
            let checked = check_custom(ctx, client, &provider, &policies, path, grpc, req);
            match Box::pin(checked).await? {
                Authorized::Proceed(r, headers) => {
                    req = r;
                    response_headers = headers;
                }
                reply => return Ok(reply),
            }
        }
    }
    // DENY and ALLOW see the request as the authorization server left it. CUSTOM policies
    // were settled above.
    let attrs = attributes(ctx, &req, path);
    let decision = evaluate(&policies, &attrs, Some(&|_| true));
    super::count(&decision.verdict);
    for p in &decision.audited {
        tracing::info!(policy = %p, path = %path, "AUDIT policy matched");
    }
    if let Some(shadow) = &decision.dry_run {
        tracing::info!(dry_run = ?shadow, enforced = ?decision.verdict, path = %path, "dry-run authorization result");
    }
    match decision.verdict {
        Verdict::Allow(policy) => {
            tracing::debug!(policy = ?policy, path = %path, "authorization allowed");
            Ok(Authorized::Proceed(req, response_headers))
        }
        Verdict::Deny(policy) => {
            tracing::info!(policy = %policy, peer = %ctx.tunnel.peer, path = %path, "authorization denied");
            Err(ProxyError::Denied(policy))
        }
    }
}

/// Asks the CUSTOM policies' `provider` about `req` (with its body, when the provider
/// wants it); `Proceed` carries the request as the server left it and the headers to add
/// to the response.
async fn check_custom(
    ctx: &RequestContext,
    client: Option<&dyn ExtAuthzClient>,
    provider: &ext::Provider,
    policies: &[String],
    path: &str,
    grpc: bool,
    req: Request<Body>,
) -> Result<Authorized, ProxyError> {
    let mut response_headers = Vec::new();
    let (mut parts, body) = req.into_parts();
    let mut check = CheckRequest::of_request(ctx, &parts);
    let mut body = body;
    if let Some(settings) = provider.body {
        let length = check.http.as_ref().map(|h| h.size).filter(|s| *s >= 0);
        match ext::body::buffer(body, settings, length.map(|l| l as u64)).await {
            Ok(b) => {
                if let Some(h) = check.http.as_mut() {
                    h.body = Some(b.bytes);
                    h.partial_body = b.partial;
                }
                body = b.body;
            }
            Err(e) if e.is::<ext::body::TooLarge>() => {
                tracing::info!(provider = %provider.name, error = %e, "request body too large for the ext_authz check");
                let mut r = Response::new(fbody::full("Payload Too Large"));
                *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
                return Ok(Authorized::Reply(local_reply(grpc, r)));
            }
            Err(e) => {
                return Err(ProxyError::BadRequest(format!(
                    "reading the request body for the ext_authz check: {e}"
                )))
            }
        }
    }
    let outcome = match client {
        Some(c) => ext::check_with_timeout(c, provider, ctx, check).await,
        None => Err(ext::CheckError::Unreachable {
            provider: provider.name.clone(),
            reason: "no ext_authz client in this proxy".into(),
        }),
    };
    match outcome {
        Ok(CheckOutcome::Allow(allowed)) => {
            tracing::debug!(provider = %provider.name, policies = ?policies, path, "ext_authz allowed");
            apply_to_request(&allowed, &mut parts);
            response_headers = allowed.response_headers;
        }
        Ok(CheckOutcome::Deny(denied)) => {
            super::count(&Verdict::Deny(policies.join(",")));
            tracing::info!(provider = %provider.name, policies = ?policies, status = denied.status.as_u16(), peer = %ctx.tunnel.peer, path, "ext_authz denied");
            return Ok(Authorized::Reply(local_reply(
                grpc,
                denied_response(&denied),
            )));
        }
        Err(e) if provider.fail_open => {
            tracing::warn!(provider = %provider.name, error = %e, path, "ext_authz check failed; failOpen allows");
        }
        Err(e) => {
            super::count(&Verdict::Deny(policies.join(",")));
            tracing::warn!(provider = %provider.name, error = %e, status = provider.status_on_error.as_u16(), path, "ext_authz check failed; denying");
            return Ok(Authorized::Reply(local_reply(
                grpc,
                error_response(provider.status_on_error),
            )));
        }
    }
    Ok(Authorized::Proceed(
        Request::from_parts(parts, body),
        response_headers,
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::time::Duration;

    use http::{HeaderName, HeaderValue};
    use tower::{service_fn, ServiceExt};

    use super::*;
    use crate::authz::ext::{
        Allowed, CheckError, CheckFuture, Denied, HeaderAction, Provider, ProviderEntry,
        ProviderKind,
    };
    use crate::authz::matcher::PathPattern;
    use crate::authz::model::{Action, Field, Operation, Policy, Rule};
    use crate::authz::PolicySet;
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
                    _ => Ok(CheckOutcome::Deny(Denied {
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
        };
        PolicySet {
            gateway: vec![Arc::new(policy)],
            providers: [("mock".to_string(), ProviderEntry::Ready(Arc::new(provider)))].into(),
            ..Default::default()
        }
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
