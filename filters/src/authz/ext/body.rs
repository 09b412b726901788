//! Buffering the start of a request body for the check (`includeRequestBodyInCheck`)
//! without losing it: the buffered frames go upstream first, then the rest of the stream.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, BodyStream, StreamBody};

use std::sync::Arc;

use super::provider::BodySettings;
use crate::body::{Body, BoxError};
use crate::budget::{Budget, Held};

/// The body is longer than `maxRequestBytes` and partial bodies are not allowed (413).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request body exceeds the {0} bytes the ext_authz check may buffer")]
pub struct TooLarge(pub u32);

/// The bodies every request holds together are at the global bound (503, not queued).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("buffered request bodies are at the proxy's global limit (--body-buffer-limit-mib)")]
pub struct OverBudget;

/// What was buffered.
#[derive(Debug)]
pub struct Buffered {
    /// The bytes for the check (at most `maxRequestBytes`).
    pub bytes: Bytes,
    /// Whether the body continues past `bytes`.
    pub partial: bool,
    /// The whole body again, for the upstream.
    pub body: Body,
    /// The buffered bytes' share of the global budget: keep it until the check is done.
    pub held: Held,
}

/// Reads up to `settings.max_request_bytes` of `body`, holding what it keeps in `budget`.
pub async fn buffer(
    body: Body,
    settings: BodySettings,
    content_length: Option<u64>,
    budget: &Arc<Budget>,
) -> Result<Buffered, BoxError> {
    let max = settings.max_request_bytes as usize;
    if !settings.allow_partial_message && content_length.is_some_and(|l| l > max as u64) {
        return Err(Box::new(TooLarge(settings.max_request_bytes)));
    }
    let mut held = budget.hold();
    let mut body = body;
    let mut frames: Vec<Frame<Bytes>> = Vec::new();
    let mut seen = 0;
    let mut ended = false;
    while seen <= max {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if !held.grow(data.len()) {
                        return Err(Box::new(OverBudget));
                    }
                    seen += data.len();
                }
                let trailers = frame.is_trailers();
                frames.push(frame);
                if trailers {
                    ended = true;
                    break;
                }
            }
            Some(Err(e)) => return Err(e),
            None => {
                ended = true;
                break;
            }
        }
        if seen >= max && !body.is_end_stream() {
            break;
        }
        if body.is_end_stream() {
            ended = true;
            break;
        }
    }
    let partial = !ended || seen > max;
    if partial && !settings.allow_partial_message {
        return Err(Box::new(TooLarge(settings.max_request_bytes)));
    }
    // In several frames, the data is joined once: the check and the upstream share it.
    if frames.iter().filter(|f| f.is_data()).count() > 1 {
        frames = joined(frames, seen);
    }
    let bytes = frames
        .first()
        .and_then(Frame::data_ref)
        .map(|d| d.slice(..max.min(d.len())))
        .unwrap_or_default();
    let head = futures_util::stream::iter(frames.into_iter().map(Ok::<_, BoxError>));
    let rebuilt = if ended {
        Body::new(StreamBody::new(head))
    } else {
        Body::new(StreamBody::new(head.chain(BodyStream::new(body))))
    };
    Ok(Buffered {
        bytes,
        partial,
        body: rebuilt,
        held,
    })
}

/// `frames` with their data in one frame (`len` bytes), trailers kept after it.
fn joined(frames: Vec<Frame<Bytes>>, len: usize) -> Vec<Frame<Bytes>> {
    let mut data = BytesMut::with_capacity(len);
    let mut trailers = None;
    for frame in frames {
        match frame.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(other) => trailers = Some(other),
        }
    }
    std::iter::once(Frame::data(data.freeze()))
        .chain(trailers)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max: u32, partial: bool) -> BodySettings {
        BodySettings {
            max_request_bytes: max,
            allow_partial_message: partial,
            pack_as_bytes: false,
        }
    }

    fn chunked(parts: &'static [&'static str]) -> Body {
        let s = futures_util::stream::iter(
            parts
                .iter()
                .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from_static(p.as_bytes())))),
        );
        Body::new(StreamBody::new(s))
    }

    #[tokio::test]
    async fn whole_body_fits() {
        let b = buffer(
            chunked(&["ab", "cd"]),
            settings(10, false),
            None,
            &Budget::global(),
        )
        .await
        .unwrap();
        assert_eq!(b.bytes, "abcd");
        assert!(!b.partial);
        assert_eq!(b.body.collect().await.unwrap().to_bytes(), "abcd");
    }

    #[tokio::test]
    async fn partial_or_too_large() {
        let b = buffer(
            chunked(&["abc", "def", "gh"]),
            settings(4, true),
            None,
            &Budget::global(),
        )
        .await
        .unwrap();
        assert_eq!(b.bytes, "abcd");
        assert!(b.partial);
        assert_eq!(
            b.body.collect().await.unwrap().to_bytes(),
            "abcdefgh",
            "upstream still gets all of it"
        );
        let e = buffer(
            chunked(&["abc", "def"]),
            settings(4, false),
            None,
            &Budget::global(),
        )
        .await
        .unwrap_err();
        assert!(e.is::<TooLarge>());
        let e = buffer(chunked(&[]), settings(4, false), Some(5), &Budget::global())
            .await
            .unwrap_err();
        assert!(e.is::<TooLarge>());
    }

    #[tokio::test]
    async fn the_global_budget_bounds_what_checks_hold_together() {
        let budget = Arc::new(Budget::new(6));
        let a = buffer(chunked(&["abcd"]), settings(10, false), None, &budget)
            .await
            .unwrap();
        assert_eq!(
            budget.used(),
            4,
            "one frame: the check's bytes are a slice of it"
        );
        let e = buffer(chunked(&["ef", "ghi"]), settings(10, false), None, &budget)
            .await
            .unwrap_err();
        assert!(e.is::<OverBudget>());
        assert_eq!(budget.used(), 4, "the refused request holds nothing");
        drop(a);
        let b = buffer(
            chunked(&["e", "f", "g"]),
            settings(10, false),
            None,
            &budget,
        )
        .await
        .unwrap();
        assert_eq!(b.bytes, "efg");
        assert_eq!(
            budget.used(),
            3,
            "joined once, shared by the check and the upstream"
        );
        assert_eq!(b.body.collect().await.unwrap().to_bytes(), "efg");
        drop(b.held);
        assert_eq!(budget.used(), 0);
    }
}
