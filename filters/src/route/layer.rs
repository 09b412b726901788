use std::task::{Context, Poll};

use futures_util::future::{self, Either, Ready};
use http::{Request, Response};
use tower::{Layer, Service};

use crate::body::Body;
use crate::model::RequestContext;
use crate::ProxyError;

/// Applies [`super::decide`] to every request and attaches the [`super::RouteDecision`].
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
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Either<Ready<Result<Response<Body>, ProxyError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let Some(ctx) = req.extensions().get::<RequestContext>() else {
            return Either::Left(future::ready(Err(ProxyError::Internal(
                "request without context".into(),
            ))));
        };
        match super::decide(ctx, &req) {
            Ok(decision) => {
                tracing::debug!(backend = %decision.backend.describe(), "routed");
                req.extensions_mut().insert(decision);
                Either::Right(self.inner.call(req))
            }
            Err(e) => Either::Left(future::ready(Err(e))),
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
    use crate::route::{Backend, RouteDecision};

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
        let snapshot = Arc::new(
            Snapshot::new(
                1,
                "test".into(),
                Waypoint {
                    gateway: NamespacedName::new("default", "waypoint"),
                    trust_domain: "cluster.local".into(),
                },
                vec![],
                vec![wl.clone()],
            )
            .unwrap(),
        );
        RequestContext {
            snapshot,
            tunnel: Arc::new(TunnelInfo {
                peer: Identity::new("cluster.local", "default", "sleep"),
                peer_addr: None,
                source_ip: None,
                authority: "127.128.0.1:8080".parse().unwrap(),
                target: Target::Workload {
                    workload: wl,
                    port: 8080,
                },
                baggage: None,
                traceparent: None,
            }),
        }
    }

    #[tokio::test]
    async fn attaches_decision_for_inner_service() {
        let inner = service_fn(|req: Request<Body>| async move {
            let d = req.extensions().get::<RouteDecision>().expect("decision");
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
}
