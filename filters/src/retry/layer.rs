use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use http_body::Body as _;
use tower::{Layer, Service, ServiceExt};

use super::replay::{self, Replayable};
use super::{backoff, limit, should_retry};
use crate::body::{self, Body};
use crate::route::model::RetryPolicy;
use crate::route::{Backend, RouteDecision};
use crate::ProxyError;

/// Applies the [`RouteDecision`]'s timeouts and retry policy to the inner service.
#[derive(Debug, Clone, Copy, Default)]
pub struct RetryLayer;

impl<S> Layer<S> for RetryLayer {
    type Service = RetryService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RetryService { inner }
    }
}

/// The service [`RetryLayer`] produces.
#[derive(Debug, Clone)]
pub struct RetryService<S> {
    inner: S,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

pin_project_lite::pin_project! {
    /// The retry layer's answer: the inner future as it is, against a deadline, or (with a
    /// retry policy) the attempts, backoff and replays, boxed. Only a retry policy costs an
    /// allocation of its own (issue 22).
    #[project = RetryProj]
    pub enum RetryFuture<F> {
        /// No retry policy and no timeout: the inner future, untouched.
        Inner { #[pin] future: F },
        /// No retry policy, a timeout: the one attempt against the nearer of the request
        /// and per-try deadlines (both end it as `UpstreamTimeout`).
        Timed { #[pin] future: F, #[pin] deadline: tokio::time::Sleep },
        /// A retry policy.
        Retrying { future: BoxFuture },
    }
}

impl<F> Future for RetryFuture<F>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
{
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RetryProj::Inner { future } => future.poll(cx),
            RetryProj::Timed { future, deadline } => {
                if let Poll::Ready(answer) = future.poll(cx) {
                    return Poll::Ready(answer);
                }
                deadline.poll(cx).map(|()| Err(ProxyError::UpstreamTimeout))
            }
            RetryProj::Retrying { future } => future.as_mut().poll(cx),
        }
    }
}

impl<S> Service<Request<Body>> for RetryService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RetryFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let decision = RouteDecision::of(&req);
        let (timeouts, retry) = decision
            .map(|d| (d.timeouts, d.retry.clone()))
            .unwrap_or_default();
        let retry = retry.filter(|p| p.attempts > 0);
        let request_timeout = timeouts.request_timeout(req.headers());
        let Some(policy) = retry else {
            // One attempt: the inner future as it is, or against its deadline; nothing boxed.
            let deadline = match (request_timeout, timeouts.backend_request) {
                (None, None) => {
                    return RetryFuture::Inner {
                        future: self.inner.call(req),
                    }
                }
                (Some(t), None) | (None, Some(t)) => t,
                (Some(a), Some(b)) => a.min(b),
            };
            return RetryFuture::Timed {
                future: self.inner.call(req),
                deadline: tokio::time::sleep(deadline),
            };
        };
        let inner = self.inner.clone();
        let backend = decision.map(|d| d.backend.clone());
        RetryFuture::Retrying {
            future: Box::pin(async move {
                let attempts = attempts(inner, req, policy, timeouts.backend_request, backend);
                match request_timeout {
                    Some(t) => tokio::time::timeout(t, attempts)
                        .await
                        .unwrap_or(Err(ProxyError::UpstreamTimeout)),
                    None => attempts.await,
                }
            }),
        }
    }
}

/// The attempts of one request under a retry `policy`, each against the `per_try` deadline,
/// with backoff between them, until one gives an answer the policy does not retry, the
/// attempts run out, the body outgrew its replay buffer, or `backend`'s retry limit is
/// reached.
async fn attempts<S>(
    inner: S,
    req: Request<Body>,
    policy: RetryPolicy,
    per_try: Option<std::time::Duration>,
    backend: Option<Backend>,
) -> Result<Response<Body>, ProxyError>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError> + Clone,
{
    // A body streams through a source that remembers it for the next attempt.
    let (req, body) = {
        let (parts, body) = req.into_parts();
        let body = (!body.is_end_stream()).then(|| Replayable::new(body, replay::DEFAULT_LIMIT));
        (Request::from_parts(parts, body::empty()), body)
    };
    let mut n = 0;
    // Counts the retry in flight (until the next attempt ends).
    let mut retrying = None;
    loop {
        let mut copy = replay(&req);
        if let Some(b) = &body {
            *copy.body_mut() = b.attempt();
        }
        let result = attempt(inner.clone(), copy, per_try).await;
        drop(retrying.take());
        let outcome = result.as_ref().map(|r| r.status().as_u16());
        if n >= policy.attempts || !should_retry(&policy, &outcome) {
            if let Some(b) = &body {
                b.finish();
            }
            return result;
        }
        if body.as_ref().is_some_and(|b| !b.replayable()) {
            tracing::debug!(
                limit = replay::DEFAULT_LIMIT,
                "not retrying: the request body is larger than the buffer limit"
            );
            return result;
        }
        // The port's retry limit (circuit breaker): past it, the answer stands.
        let guard = match backend.as_ref().map(limit::start) {
            None | Some(Ok(None)) => None,
            Some(Ok(guard)) => guard,
            Some(Err(())) => {
                tracing::debug!("not retrying: the port's retry limit is reached (retry overflow)");
                return result;
            }
        };
        n += 1;
        tracing::debug!(attempt = n + 1, outcome = ?outcome.as_ref().map_err(|e| e.to_string()), "retrying");
        tokio::time::sleep(backoff(&policy, n)).await;
        retrying = guard;
    }
}

async fn attempt<S>(
    inner: S,
    req: Request<Body>,
    per_try: Option<std::time::Duration>,
) -> Result<Response<Body>, ProxyError>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>,
{
    let call = inner.oneshot(req);
    match per_try {
        Some(t) => tokio::time::timeout(t, call)
            .await
            .unwrap_or(Err(ProxyError::UpstreamTimeout)),
        None => call.await,
    }
}

/// A copy of a request (without its body), with the extensions the inner services read.
fn replay(req: &Request<Body>) -> Request<Body> {
    let mut copy = Request::new(body::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    // Every extension: the context and route decision, and what telemetry attached
    // (each attempt records into the same request log and trace).
    *copy.extensions_mut() = req.extensions().clone();
    copy
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tower::service_fn;

    use super::*;
    use crate::route::model::{RetryPolicy, Timeouts};

    /// The test context carrying a decision with `retry` and `timeouts`.
    fn decision(retry: Option<RetryPolicy>, timeouts: Timeouts) -> crate::model::RequestContext {
        let svc = Arc::new(crate::model::Service {
            name: crate::model::NamespacedName::new("ns", "svc"),
            hostname: "svc".into(),
            vips: vec![],
            ranges: Vec::new(),
            ports: vec![],
            served: true,
        });
        let mut ctx = crate::model::test_support::context();
        ctx.decision = Some(RouteDecision {
            hash: None,
            backend: crate::route::Backend::Service {
                service: svc,
                port: 80,
            },
            rule: None,
            timeouts,
            retry,
        });
        ctx
    }

    fn status(code: u16) -> Response<Body> {
        let mut r = Response::new(body::empty());
        *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
        r
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_within_attempts() {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let inner = service_fn(move |_req: Request<Body>| {
            let n = c.fetch_add(1, Ordering::Relaxed);
            async move { Ok::<_, ProxyError>(status(if n < 2 { 503 } else { 200 })) }
        });
        let policy = RetryPolicy {
            attempts: 2,
            codes: vec![503],
            backoff: Duration::from_millis(100),
        };
        let mut req = Request::new(body::empty());
        req.extensions_mut()
            .insert(decision(Some(policy), Timeouts::default()));
        let resp = RetryLayer.layer(inner).oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn request_timeout_is_504() {
        let inner = service_fn(|_req: Request<Body>| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, ProxyError>(status(200))
        });
        let mut req = Request::new(body::empty());
        req.extensions_mut().insert(decision(
            None,
            Timeouts {
                request: Some(Duration::from_millis(500)),
                ..Default::default()
            },
        ));
        let err = RetryLayer.layer(inner).oneshot(req).await.unwrap_err();
        assert!(matches!(err, ProxyError::UpstreamTimeout));
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_without_retries_are_not_boxed_and_the_nearer_one_ends_the_attempt() {
        let slow = |after: u64| {
            service_fn(move |_req: Request<Body>| async move {
                tokio::time::sleep(Duration::from_millis(after)).await;
                Ok::<_, ProxyError>(status(200))
            })
        };
        let timeouts = Timeouts {
            request: Some(Duration::from_millis(900)),
            backend_request: Some(Duration::from_millis(300)),
            ..Default::default()
        };
        let request = || {
            let mut req = Request::new(body::empty());
            req.extensions_mut().insert(decision(None, timeouts));
            req
        };
        // The per-try timeout (300 ms) is the nearer: an answer at 500 ms is too late.
        let started = tokio::time::Instant::now();
        let future = RetryLayer.layer(slow(500)).call(request());
        assert!(matches!(future, RetryFuture::Timed { .. }));
        assert!(matches!(future.await, Err(ProxyError::UpstreamTimeout)));
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        // An answer before both deadlines passes through.
        let resp = RetryLayer
            .layer(slow(200))
            .oneshot(request())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        // No timeouts at all: the inner future as it is; a retry policy: boxed.
        let mut plain = Request::new(body::empty());
        plain
            .extensions_mut()
            .insert(decision(None, Timeouts::default()));
        let future = RetryLayer.layer(slow(1)).call(plain);
        assert!(matches!(future, RetryFuture::Inner { .. }));
        let policy = RetryPolicy {
            attempts: 1,
            codes: vec![503],
            backoff: Duration::from_millis(10),
        };
        let mut retried = Request::new(body::empty());
        retried
            .extensions_mut()
            .insert(decision(Some(policy), Timeouts::default()));
        let future = RetryLayer.layer(slow(1)).call(retried);
        assert!(matches!(future, RetryFuture::Retrying { .. }));
        assert_eq!(future.await.unwrap().status(), 200);
    }
}
