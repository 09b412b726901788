use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response, Uri};
use tower::{Layer, Service};

use super::attributes::{Attributes, HttpAttributes, JwtAuth};
use super::engine::{evaluate, Verdict};
use super::path::normalize;
use crate::body::Body;
use crate::model::{RequestContext, Target};
use crate::ProxyError;

/// Normalizes the request path, then enforces the AuthorizationPolicies bound to the
/// waypoint and to the addressed Service.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthzLayer;

impl<S> Layer<S> for AuthzLayer {
    type Service = AuthzService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthzService { inner }
    }
}

/// The service [`AuthzLayer`] produces.
#[derive(Debug, Clone)]
pub struct AuthzService<S> {
    inner: S,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

impl<S> Service<Request<Body>> for AuthzService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        match authorize(&mut req) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

fn authorize(req: &mut Request<Body>) -> Result<(), ProxyError> {
    let ctx = req
        .extensions()
        .get::<RequestContext>()
        .cloned()
        .ok_or_else(|| ProxyError::Internal("request without context".into()))?;
    let set = &ctx.snapshot.authz;
    let path = normalize(req.uri().path(), set.normalization)
        .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    if path != req.uri().path() {
        let pq = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        *req.uri_mut() = Uri::try_from(pq).map_err(|e| ProxyError::BadRequest(e.to_string()))?;
    }
    let service = match &ctx.tunnel.target {
        Target::Service { service, .. } => Some(service.name.to_string()),
        Target::Workload { .. } => None,
    };
    let policies = set.for_target(service.as_deref());
    if policies.is_empty() {
        return Ok(());
    }
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let auth = req.extensions().get::<JwtAuth>();
    let mut attrs = Attributes::of_tunnel(&ctx.tunnel);
    attrs.http = Some(HttpAttributes {
        method: req.method().as_str(),
        host: &host,
        path: &path,
        headers: req.headers(),
        auth,
    });
    let decision = evaluate(&policies, &attrs, None);
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
            Ok(())
        }
        Verdict::Deny(policy) => {
            tracing::info!(policy = %policy, peer = %ctx.tunnel.peer, path = %path, "authorization denied");
            Err(ProxyError::Denied(policy))
        }
    }
}
