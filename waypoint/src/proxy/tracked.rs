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

use super::idle::{Activity, Busy};
use super::stream_idle::{Expiry, IdleWatch, StreamIdle};
use crate::state::Proxy;
use crate::telemetry::labels::SourceLabels;
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

/// The client's request body as the chain's [`Body`], counting what it yields (and, with
/// a stream idle timeout, recording each frame as activity).
pub fn count_request<B>(incoming: B, idle: Option<Arc<StreamIdle>>) -> (Body, Received)
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let received = Received(Arc::new(AtomicU64::new(0)));
    let body = Counting {
        inner: incoming,
        count: received.clone(),
        idle,
    };
    (Body::new(body), received)
}

struct Counting<B> {
    inner: B,
    count: Received,
    idle: Option<Arc<StreamIdle>>,
}

impl<B: http_body::Body<Data = Bytes> + Unpin> http_body::Body for Counting<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(data) = frame.as_ref().and_then(|f| f.as_ref().ok()?.data_ref()) {
            self.count.0.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        if let Some(idle) = &self.idle {
            idle.touch();
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
pub struct InFlight(Arc<Proxy>, #[allow(dead_code)] Busy);

impl InFlight {
    /// Counts a request in flight, also on its connection's `activity`.
    pub fn start(proxy: &Arc<Proxy>, activity: &Arc<Activity>) -> Self {
        proxy
            .stats
            .requests_in_flight
            .fetch_add(1, Ordering::Relaxed);
        Self(proxy.clone(), activity.begin())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let stats = &self.0.stats;
        stats.requests_in_flight.fetch_sub(1, Ordering::Relaxed);
        stats.requests_total.fetch_add(1, Ordering::Relaxed);
    }
}

/// A request's telemetry between the chain's start and the response: finished exactly
/// once, by the response body when it ends, or on drop when the client went away before a
/// response existed (hyper drops the exchange). Envoy records such a request with code 0,
/// flag `DC` and details `downstream_remote_disconnect`, and so does this.
pub(super) struct Pending(Option<Finish>);

impl Pending {
    /// Telemetry for a request counted in flight by `request`.
    pub(super) fn new(
        request: InFlight,
        telemetry: RequestTelemetry,
        source: SourceLabels,
        received: Option<Received>,
    ) -> Self {
        Self(Some(Finish {
            request,
            telemetry,
            source,
            outcome: Outcome::default(),
            received,
        }))
    }

    /// The request's telemetry state.
    pub(super) fn telemetry(&self) -> &RequestTelemetry {
        &self
            .0
            .as_ref()
            .expect("taken only by respond or drop")
            .telemetry
    }

    /// `resp`, whose end (or drop) finishes the telemetry with `outcome` and counts the
    /// request done; with `idle`, the body is reset when the stream goes idle.
    pub(super) fn respond(
        mut self,
        resp: Response<Body>,
        outcome: Outcome,
        idle: Option<IdleWatch>,
    ) -> Response<TrackedBody> {
        let mut finish = self.0.take();
        if let Some(f) = finish.as_mut() {
            f.outcome = outcome;
        }
        resp.map(|inner| TrackedBody {
            inner,
            finish,
            idle,
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut f) = self.0.take() {
            tracing::debug!("client went away before the response");
            f.outcome = Outcome {
                code: 0,
                flags: "DC",
                details: "downstream_remote_disconnect".into(),
                ..Outcome::default()
            };
            f.complete();
        }
    }
}

/// A response body that records the request when it ends.
pub struct TrackedBody {
    inner: Body,
    finish: Option<Finish>,
    /// The stream idle timer, when the connection manager sets one.
    idle: Option<IdleWatch>,
}

/// What is recorded when the request ends.
struct Finish {
    request: InFlight,
    telemetry: RequestTelemetry,
    source: SourceLabels,
    outcome: Outcome,
    received: Option<Received>,
}

impl Finish {
    /// Records the metric sample, access log line and span; counts the request done.
    fn complete(mut self) {
        self.outcome.body_received = self.received.as_ref().map_or(0, Received::get);
        self.telemetry
            .finish(&self.request.0.telemetry, &self.source, self.outcome);
        // `self.request` drops here: the request is counted done.
    }
}

impl TrackedBody {
    /// A response that records nothing (a local reply to a malformed request).
    pub fn untracked(resp: Response<Body>) -> Response<TrackedBody> {
        resp.map(|inner| TrackedBody {
            inner,
            finish: None,
            idle: None,
        })
    }

    fn finish(&mut self) {
        if let Some(f) = self.finish.take() {
            f.complete();
        }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl TrackedBody {
    /// While the upstream sends nothing: once the stream has been idle for the timeout,
    /// the request is recorded with `SI` and the stream reset (an error frame: RST_STREAM
    /// on HTTP/2, the connection closed on HTTP/1.1), as Envoy does after the response
    /// started; the same, details `max_duration_timeout`, when its maximum duration is up.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(w) = self.idle.as_mut() else {
            return Poll::Pending;
        };
        let which = ready!(w.poll_expired(cx));
        self.idle = None;
        let (flags, details, why) = match which {
            Expiry::Idle => ("SI", "stream_idle_timeout", "stream idle timeout"),
            Expiry::MaxDuration => ("-", "max_duration_timeout", "stream max duration"),
        };
        if let Some(out) = self.finish.as_mut().map(|f| &mut f.outcome) {
            out.flags = flags;
            out.details = details.into();
        }
        tracing::debug!(
            why,
            "stream timer ran out after the response started; resetting"
        );
        self.finish();
        Poll::Ready(Some(Err(why.into())))
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
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => return this.poll_idle(cx),
        };
        if let Some(w) = &this.idle {
            w.touch();
        }
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
