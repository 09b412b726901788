//! A request body that can be sent again, for retries of requests with bodies.
//!
//! Envoy buffers a request's body so that a retry can send it again, up to a limit; past
//! the limit the request is not retried. Here every attempt reads through one shared
//! source that remembers the frames it has handed out (up to the limit): a retry replays
//! them, then continues with the rest of the original stream. Nothing waits for the whole
//! body before the first attempt, so streaming requests (gRPC client streams) still flow.
//!
//! What all requests remember together is bounded too ([`Budget`], shared with the bodies
//! buffered for ext_authz checks): past it a request is not remembered, so it is not retried; it
//! is never queued or refused for it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;

use crate::body::{Body, BoxError};
pub use crate::budget::Budget;

/// Envoy's default per-request buffer limit (the listener's connection buffer limit).
pub const DEFAULT_LIMIT: usize = 1024 * 1024;

/// The original body and what it has delivered.
struct Shared {
    source: Body,
    /// Data frames handed out so far, while within the limit.
    recorded: Vec<Bytes>,
    recorded_len: usize,
    /// More than the limit was read: what was sent cannot be sent again.
    overflowed: bool,
    /// The source ended (its trailers, if any, are kept).
    ended: bool,
    trailers: Option<HeaderMap>,
    budget: Arc<Budget>,
}

impl Shared {
    /// Forgets what was recorded and gives its bytes back to the budget.
    fn forget(&mut self) {
        self.overflowed = true;
        self.recorded = Vec::new();
        self.budget.release(std::mem::take(&mut self.recorded_len));
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.budget.release(self.recorded_len);
    }
}

/// The shared source of a request body's attempts.
#[derive(Clone)]
pub struct Replayable {
    shared: Arc<Mutex<Shared>>,
    limit: usize,
}

impl Replayable {
    /// Wraps `body`, remembering up to `limit` bytes of it, within the process's budget.
    pub fn new(body: Body, limit: usize) -> Self {
        Self::with_budget(body, limit, Budget::global())
    }

    /// Wraps `body`, remembering up to `limit` bytes of it, within `budget`.
    pub fn with_budget(body: Body, limit: usize, budget: Arc<Budget>) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                source: body,
                recorded: Vec::new(),
                recorded_len: 0,
                overflowed: false,
                ended: false,
                trailers: None,
                budget,
            })),
            limit,
        }
    }

    /// A body for one attempt: what earlier attempts read, then the rest of the source.
    pub fn attempt(&self) -> Body {
        Body::new(Attempt {
            source: self.clone(),
            next: 0,
            trailers_sent: false,
        })
    }

    /// No more attempts will be made: what was recorded is released and the rest of the
    /// body streams without being remembered (a long stream keeps no buffer).
    pub fn finish(&self) {
        self.lock().forget();
    }

    /// Whether a new attempt would send the same body (nothing was lost past the limit).
    pub fn replayable(&self) -> bool {
        !self.lock().overflowed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One attempt's view of the body.
struct Attempt {
    source: Replayable,
    /// Index of the next recorded frame this attempt has not sent.
    next: usize,
    trailers_sent: bool,
}

impl http_body::Body for Attempt {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let limit = self.source.limit;
        let shared = self.source.shared.clone();
        let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
        if self.next < s.recorded.len() {
            let frame = s.recorded[self.next].clone();
            self.next += 1;
            return Poll::Ready(Some(Ok(Frame::data(frame))));
        }
        if s.ended {
            return match s.trailers.clone().filter(|_| !self.trailers_sent) {
                Some(t) => {
                    self.trailers_sent = true;
                    Poll::Ready(Some(Ok(Frame::trailers(t))))
                }
                None => Poll::Ready(None),
            };
        }
        let polled = Pin::new(&mut s.source).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !s.overflowed {
                        if s.recorded_len + data.len() > limit || !s.budget.reserve(data.len()) {
                            s.forget();
                        } else {
                            s.recorded_len += data.len();
                            s.recorded.push(data.clone());
                            self.next = s.recorded.len();
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    s.trailers = Some(t.clone());
                    self.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                s.ended = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.source.lock();
        s.ended && self.next >= s.recorded.len() && (self.trailers_sent || s.trailers.is_none())
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, StreamBody};

    use super::*;

    #[tokio::test]
    async fn the_shared_budget_bounds_what_all_requests_remember() {
        let budget = Arc::new(Budget::new(6));
        let a = Replayable::with_budget(chunked(&["abcd"]), DEFAULT_LIMIT, budget.clone());
        let b = Replayable::with_budget(chunked(&["efgh"]), DEFAULT_LIMIT, budget.clone());
        a.attempt().collect().await.unwrap();
        assert!(a.replayable());
        assert_eq!(budget.used(), 4);
        // The second does not fit: it is sent, not remembered, so not replayable.
        let sent = b.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(&sent[..], b"efgh");
        assert!(!b.replayable());
        assert_eq!(
            budget.overflows.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // Finished or dropped, the bytes go back.
        a.finish();
        assert_eq!(budget.used(), 0);
        let c = Replayable::with_budget(chunked(&["xy"]), DEFAULT_LIMIT, budget.clone());
        c.attempt().collect().await.unwrap();
        assert_eq!(budget.used(), 2);
        drop(c);
        assert_eq!(budget.used(), 0);
    }

    fn chunked(parts: &[&'static str]) -> Body {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        Body::new(StreamBody::new(futures_util::stream::iter(frames)))
    }

    #[tokio::test]
    async fn a_retry_sends_the_same_body_after_a_partial_read() {
        let r = Replayable::new(chunked(&["ab", "cd", "ef"]), DEFAULT_LIMIT);
        let mut first = r.attempt();
        // The first attempt reads one frame, then fails.
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.data_ref().unwrap(), "ab");
        drop(first);
        assert!(r.replayable());
        let second = r.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(second, "abcdef");
        let third = r.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(third, "abcdef", "a later attempt replays it all");
    }

    #[tokio::test]
    async fn past_the_limit_it_is_not_replayable() {
        let r = Replayable::new(chunked(&["abcd", "efgh"]), 6);
        let all = r.attempt().collect().await.unwrap().to_bytes();
        assert_eq!(all, "abcdefgh", "the first attempt still gets everything");
        assert!(!r.replayable());
    }

    #[tokio::test]
    async fn a_finished_source_streams_without_remembering() {
        let r = Replayable::new(chunked(&["ab", "cd"]), DEFAULT_LIMIT);
        let mut first = r.attempt();
        assert_eq!(
            first.frame().await.unwrap().unwrap().data_ref().unwrap(),
            "ab"
        );
        r.finish();
        assert_eq!(
            first.frame().await.unwrap().unwrap().data_ref().unwrap(),
            "cd"
        );
        assert!(!r.replayable());
        assert!(r.lock().recorded.is_empty());
    }

    #[tokio::test]
    async fn an_untouched_body_is_replayable() {
        let r = Replayable::new(chunked(&["x"]), DEFAULT_LIMIT);
        drop(r.attempt());
        assert_eq!(r.attempt().collect().await.unwrap().to_bytes(), "x");
    }
}
