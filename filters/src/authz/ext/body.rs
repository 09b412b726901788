//! Buffering the start of a request body for the check (`includeRequestBodyInCheck`)
//! without losing it: the buffered frames go upstream first, then the rest of the stream.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http_body::{Body as _, Frame};
use http_body_util::{BodyExt, BodyStream, StreamBody};

use super::provider::BodySettings;
use crate::body::{Body, BoxError};

/// The body is longer than `maxRequestBytes` and partial bodies are not allowed (413).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("request body exceeds the {0} bytes the ext_authz check may buffer")]
pub struct TooLarge(pub u32);

/// What was buffered.
#[derive(Debug)]
pub struct Buffered {
    /// The bytes for the check (at most `maxRequestBytes`).
    pub bytes: Bytes,
    /// Whether the body continues past `bytes`.
    pub partial: bool,
    /// The whole body again, for the upstream.
    pub body: Body,
}

/// Reads up to `settings.max_request_bytes` of `body`.
pub async fn buffer(
    body: Body,
    settings: BodySettings,
    content_length: Option<u64>,
) -> Result<Buffered, Box<dyn std::error::Error + Send + Sync>> {
    let max = settings.max_request_bytes as usize;
    if !settings.allow_partial_message && content_length.is_some_and(|l| l > max as u64) {
        return Err(Box::new(TooLarge(settings.max_request_bytes)));
    }
    let mut body = body;
    let mut frames: Vec<Frame<Bytes>> = Vec::new();
    let mut seen = BytesMut::new();
    let mut ended = false;
    while seen.len() <= max {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    seen.extend_from_slice(data);
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
        if seen.len() >= max && !body.is_end_stream() {
            break;
        }
        if body.is_end_stream() {
            ended = true;
            break;
        }
    }
    let partial = !ended || seen.len() > max;
    if partial && !settings.allow_partial_message {
        return Err(Box::new(TooLarge(settings.max_request_bytes)));
    }
    let bytes = seen.freeze();
    let bytes = if bytes.len() > max {
        bytes.slice(..max)
    } else {
        bytes
    };
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
    })
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
        let b = buffer(chunked(&["ab", "cd"]), settings(10, false), None)
            .await
            .unwrap();
        assert_eq!(b.bytes, "abcd");
        assert!(!b.partial);
        assert_eq!(b.body.collect().await.unwrap().to_bytes(), "abcd");
    }

    #[tokio::test]
    async fn partial_or_too_large() {
        let b = buffer(chunked(&["abc", "def", "gh"]), settings(4, true), None)
            .await
            .unwrap();
        assert_eq!(b.bytes, "abcd");
        assert!(b.partial);
        assert_eq!(
            b.body.collect().await.unwrap().to_bytes(),
            "abcdefgh",
            "upstream still gets all of it"
        );
        let e = buffer(chunked(&["abc", "def"]), settings(4, false), None)
            .await
            .unwrap_err();
        assert!(e.is::<TooLarge>());
        let e = buffer(chunked(&[]), settings(4, false), Some(5))
            .await
            .unwrap_err();
        assert!(e.is::<TooLarge>());
    }
}
