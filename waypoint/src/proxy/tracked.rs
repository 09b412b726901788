//! Bodies that report what passed through them: the request body counts the bytes read
//! from the client, and the response body finishes the request's telemetry when it ends
//! (or is dropped, when the client went away first).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use filters::body::{Body, BoxError};
use http::Response;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::state::Proxy;
use crate::telemetry::labels::PeerLabels;
use crate::telemetry::request::{grpc_status, Outcome, RequestTelemetry};

/// Request body bytes read from the client so far.
#[derive(Clone)]
pub struct Received(Arc<AtomicU64>);

impl Received {
    /// Bytes read so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The client's request body as the chain's [`Body`], counting what it yields.
pub fn count_request(incoming: Incoming) -> (Body, Received) {
    let received = Received(Arc::new(AtomicU64::new(0)));
    let body = Counting {
        inner: incoming,
        count: received.clone(),
    };
    (Body::new(body), received)
}

struct Counting {
    inner: Incoming,
    count: Received,
}

impl http_body::Body for Counting {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()) {
            self.count.0.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request counted in flight from the moment it enters the chain until this is dropped,
/// then counted done. Dropped with the response body, or with the request when the client
/// goes away before a response exists (hyper then drops the exchange).
pub struct InFlight(Arc<Proxy>);

impl InFlight {
    /// Counts a request in flight.
    pub fn start(proxy: &Arc<Proxy>) -> Self {
        proxy
            .stats
            .requests_in_flight
            .fetch_add(1, Ordering::Relaxed);
        Self(proxy.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let stats = &self.0.stats;
        stats.requests_in_flight.fetch_sub(1, Ordering::Relaxed);
        stats.requests_total.fetch_add(1, Ordering::Relaxed);
    }
}

/// A response body that records the request when it ends.
pub struct TrackedBody {
    inner: Body,
    finish: Option<Finish>,
}

/// What is recorded when the response ends.
struct Finish {
    request: InFlight,
    telemetry: RequestTelemetry,
    source: Arc<PeerLabels>,
    outcome: Outcome,
    received: Option<Received>,
}

impl TrackedBody {
    /// A response that records nothing (a local reply to a malformed request).
    pub fn untracked(resp: Response<Body>) -> Response<TrackedBody> {
        resp.map(|inner| TrackedBody {
            inner,
            finish: None,
        })
    }

    /// `resp`, whose end (or drop) finishes `telemetry` with `outcome` and counts
    /// `request` done.
    pub(super) fn wrap(
        resp: Response<Body>,
        request: InFlight,
        telemetry: RequestTelemetry,
        source: Arc<PeerLabels>,
        outcome: Outcome,
        received: Option<Received>,
    ) -> Response<TrackedBody> {
        resp.map(|inner| TrackedBody {
            inner,
            finish: Some(Finish {
                request,
                telemetry,
                source,
                outcome,
                received,
            }),
        })
    }

    fn finish(&mut self) {
        let Some(mut f) = self.finish.take() else {
            return;
        };
        f.outcome.body_received = f.received.as_ref().map_or(0, Received::get);
        f.telemetry
            .finish(&f.request.0.telemetry, &f.source, f.outcome);
        // `f.request` drops here: the request is counted done.
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(out) = this.finish.as_mut().map(|f| &mut f.outcome) {
                    if let Some(data) = f.data_ref() {
                        out.body_sent += data.len() as u64;
                    } else if let Some(trailers) = f.trailers_ref() {
                        out.grpc_status = grpc_status(trailers).or(out.grpc_status);
                    }
                }
            }
            Some(Err(e)) => {
                tracing::info!(error = %e, "upstream response body failed");
                this.finish();
            }
            None => this.finish(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
