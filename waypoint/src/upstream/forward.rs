//! The innermost service of the filter chain: sends the request to the chosen endpoint.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use filters::balance;
use filters::body::Body;
use filters::route::{Backend, RouteDecision};
use filters::ProxyError;
use http::{header, Request, Response, Uri, Version};

use crate::state::Proxy;
use crate::telemetry::trace::RequestTrace;
use filters::model::{RequestContext, Unlisted};
use opentelemetry::KeyValue;

/// Forwards routed requests upstream.
#[derive(Clone)]
pub struct Forward {
    proxy: Arc<Proxy>,
}

impl Forward {
    /// A forwarder over the proxy's pools.
    pub fn new(proxy: Arc<Proxy>) -> Self {
        Self { proxy }
    }
}

impl tower::Service<Request<Body>> for Forward {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let proxy = self.proxy.clone();
        Box::pin(async move { forward(&proxy, req).await })
    }
}

async fn forward(proxy: &Proxy, mut req: Request<Body>) -> Result<Response<Body>, ProxyError> {
    let decision = RouteDecision::take(&mut req)
        .ok_or_else(|| ProxyError::Internal("request reached upstream without a route".into()))?;
    // The Service port, looked up once for the forward proxy and the upstream protocol.
    let port = match &decision.backend {
        Backend::Service { service, port } => service.port(*port),
        Backend::Workload { .. } => None,
    };
    let picked = match port.and_then(|p| p.unlisted()) {
        Some(Unlisted::ForwardProxy(fp)) => {
            let authority = authority_of(&req).to_string();
            pick_forwarded(&decision.backend, fp, port, &authority).await?
        }
        Some(Unlisted::OriginalDst(original)) => {
            let ctx = req.extensions().get::<RequestContext>().ok_or_else(|| {
                ProxyError::Internal("request without its tunnel's context".into())
            })?;
            balance::pick_original(
                &decision.backend,
                original,
                ctx.tunnel.authority,
                &ctx.snapshot,
            )?
        }
        _ => balance::pick(&decision.backend, decision.hash)?,
    };
    let log = req
        .extensions()
        .get::<RequestContext>()
        .and_then(|c| c.log.clone());
    let trace = req.extensions_mut().remove::<RequestTrace>();
    if let Some(log) = &log {
        let service = match &decision.backend {
            Backend::Service { service, port } => Some((service.clone(), *port)),
            Backend::Workload { .. } => None,
        };
        log.attempt(service, &picked.workload, picked.address);
    }
    // The port's upstream protocol (istiod's: HTTP/1.1 for `http`, HTTP/2 for `http2` and
    // `grpc`, the client's otherwise); a pod addressed directly gets the client's.
    let client_h2 = req.version() == Version::HTTP_2;
    let h2 = port.map_or(client_h2, |p| p.upstream_protocol.h2(client_h2));
    if h2 {
        let host = req
            .headers_mut()
            .remove(header::HOST)
            .and_then(|h| h.to_str().ok().map(str::to_string))
            .unwrap_or_else(|| picked.address.to_string());
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        *req.uri_mut() = Uri::try_from(format!("http://{host}{pq}"))
            .map_err(|e| ProxyError::Internal(format!("bad upstream URI: {e}")))?;
        *req.version_mut() = Version::HTTP_2;
    } else {
        *req.version_mut() = Version::HTTP_11;
    }
    tracing::debug!(endpoint = %picked.address, workload = %picked.workload.name, h2, "forwarding");
    let span = trace.map(|t| {
        let cluster = match &decision.backend {
            Backend::Service { service, port } => {
                format!("inbound-vip|{port}|http|{}", service.hostname)
            }
            Backend::Workload { port, .. } => {
                format!("inbound-pod|{port}||{}", picked.address.ip())
            }
        };
        let attrs = vec![
            KeyValue::new("http.request.method", req.method().as_str().to_string()),
            KeyValue::new("server.address", picked.address.ip().to_string()),
            KeyValue::new("server.port", picked.address.port() as i64),
            KeyValue::new("upstream_cluster", cluster.clone()),
            KeyValue::new("peer.service", picked.workload.name.to_string()),
        ];
        t.start_client(format!("router {cluster} egress"), req.headers_mut(), attrs)
    });
    let started = std::time::Instant::now();
    let result = proxy
        .upstream
        .http
        .send(&proxy.upstream, &picked, h2, req)
        .await;
    if let Some(log) = &log {
        log.set_service_time(started.elapsed());
    }
    report_outcome(&picked, &result);
    if let Some(span) = span {
        span.end(match &result {
            Ok(r) => Ok(r.status().as_u16()),
            Err(e) => Err(e.response_flag().to_string()),
        });
    }
    let in_flight = picked.in_flight;
    Ok(result?.map(|b| match in_flight {
        // Least request and the circuit breaker count this request until its response ends.
        Some(guard) => Body::new(filters::body::Guarded::new(b, guard)),
        None => Body::new(b),
    }))
}

/// The endpoint of a forward-proxy port: the host the request names (its `:authority`,
/// else `Host`), which must fall under the port's wildcard (else 404 `NR`, as the virtual
/// host's domains make Envoy answer), resolved through the port's DNS cache.
async fn pick_forwarded(
    backend: &Backend,
    fp: &filters::forward_proxy::ForwardProxy,
    port: Option<&filters::model::ServicePort>,
    authority: &str,
) -> Result<balance::Picked, ProxyError> {
    let tls = port.is_some_and(|p| p.tls.is_some());
    let Some((host, upstream_port)) = fp.target(authority, tls) else {
        tracing::info!(
            authority,
            wildcard = ?fp.wildcard,
            "forward proxy: the request's host is not under the wildcard (404 NR)"
        );
        return Err(ProxyError::NoRoute(format!(
            "host {authority:?} is not under {}",
            fp.wildcard.as_deref().unwrap_or("the forward proxy")
        )));
    };
    let (address, workload) = crate::upstream::forward_proxy::hosts()
        .address(fp, host, upstream_port)
        .await?;
    balance::pick_address(backend, address, workload)
}

/// The request's `:authority`, else its `Host`.
fn authority_of(req: &Request<Body>) -> &str {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or_default()
}

/// Tells outlier detection how the attempt ended: the status the endpoint answered with,
/// or a local-origin failure (connect failure, reset, timeout). Errors that never reached
/// the endpoint are not its fault and are not reported.
fn report_outcome(
    picked: &balance::Picked,
    result: &Result<Response<super::pool::UpstreamBody>, ProxyError>,
) {
    use balance::outlier::Outcome;
    let outcome = match result {
        Ok(r) => Outcome::Status(r.status().as_u16()),
        Err(
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamConnectTimeout { .. }
            | ProxyError::UpstreamReset { .. }
            | ProxyError::UpstreamTimeout,
        ) => Outcome::LocalFailure,
        Err(_) => return,
    };
    picked.report(outcome);
}
