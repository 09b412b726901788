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
use super::path::normalize;
use crate::body::{self as fbody, Body};
use crate::model::{RequestContext, Target};
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

fn host_of(req: &Request<Body>) -> String {
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn attributes<'a>(
    ctx: &RequestContext,
    req: &'a Request<Body>,
    host: &'a str,
    path: &'a str,
) -> Attributes<'a> {
    let mut attrs = Attributes::of_tunnel(&ctx.tunnel);
    attrs.http = Some(HttpAttributes {
        method: req.method().as_str(),
        host,
        path,
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
    let service = match &ctx.tunnel.target {
        Target::Service { service, .. } => Some(service.name.to_string()),
        Target::Workload { .. } => None,
    };
    let policies = set.for_target(service.as_deref());
    if policies.is_empty() {
        return Ok(Authorized::Proceed(req, Vec::new()));
    }
    let host = host_of(&req);
    let plan = ext::custom_plan(
        &policies,
        &set.providers,
        &attributes(ctx, &req, &host, path),
    );
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
                Some(c) => ext::check_with_timeout(c, &provider, ctx, check).await,
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
            req = Request::from_parts(parts, body);
        }
    }
    // DENY and ALLOW see the request as the authorization server left it. CUSTOM policies
    // were settled above.
    let host = host_of(&req);
    let attrs = attributes(ctx, &req, &host, path);
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
