use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::authenticate_traced;
use crate::body::Body;
use crate::explain::Trace;
use crate::future::LayerFuture;
use crate::model::RequestContext;
use crate::ProxyError;

/// Verifies JWTs per the RequestAuthentication rules and attaches the result for the
/// authorization layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthnLayer;

impl<S> Layer<S> for AuthnLayer {
    type Service = AuthnService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthnService { inner }
    }
}

/// The service [`AuthnLayer`] produces.
#[derive(Debug, Clone)]
pub struct AuthnService<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for AuthnService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = LayerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let Some(ctx) = req.extensions().get::<RequestContext>().cloned() else {
            return LayerFuture::ready(Err(ProxyError::Internal("request without context".into())));
        };
        let rules = ctx
            .snapshot
            .authn()
            .for_service(ctx.tunnel.target.service_name());
        let sink = crate::explain::sink_of(&req);
        match authenticate_traced(&rules, &mut req, Trace::new(sink.as_ref())) {
            Ok(Some(auth)) => {
                tracing::debug!(principal = %auth.principal, "JWT verified");
                req.extensions_mut().insert(auth);
            }
            Ok(None) => {}
            Err(e) => {
                if sink.is_none() {
                    tracing::info!(error = %e, peer = %ctx.tunnel.peer, "JWT rejected");
                }
                return LayerFuture::ready(Err(ProxyError::Unauthenticated(e.to_string())));
            }
        }
        LayerFuture::inner(self.inner.call(req))
    }
}
