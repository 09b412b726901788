//! A tonic transport over the upstream pools: every call is an HTTP/2 request to one
//! resolved endpoint ([`super::dial`]), over HBONE or TCP as the endpoint needs. The
//! waypoint's own gRPC clients (ext_authz checks, OTLP span export) use it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use filters::ProxyError;
use http::{Uri, Version};

use super::dial::Endpoint;
use crate::state::Proxy;

/// The channel: cheap to clone, one per resolved endpoint.
#[derive(Clone)]
pub struct PoolChannel {
    proxy: Arc<Proxy>,
    endpoint: Endpoint,
}

impl PoolChannel {
    /// Calls go to `endpoint` through `proxy`'s pools, with its authority.
    pub fn new(proxy: Arc<Proxy>, endpoint: Endpoint) -> Self {
        Self { proxy, endpoint }
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for PoolChannel {
    type Response = http::Response<super::pool::UpstreamBody>;
    type Error = ProxyError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, ProxyError>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let pq = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into());
            parts.uri = Uri::try_from(format!("http://{}{pq}", this.endpoint.authority))
                .map_err(|e| ProxyError::Internal(format!("bad gRPC URI: {e}")))?;
            parts.version = Version::HTTP_2;
            let req = http::Request::from_parts(parts, filters::body::Body::new(body));
            this.proxy
                .upstream
                .http
                .send(&this.proxy.upstream, &this.endpoint.picked, true, req)
                .await
        })
    }
}

/// Whether a gRPC call failed because its endpoint could not be connected to (rather than
/// answering with an error).
pub fn unreachable(status: &tonic::Status) -> bool {
    std::error::Error::source(status)
        .and_then(|s| s.downcast_ref::<ProxyError>())
        .is_some_and(|e| e.is_connect_failure() || matches!(e, ProxyError::NoHealthyUpstream(_)))
}
