//! A request body fed from the downstream session through a bounded channel.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use filters::body::BoxError;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// Capacity of the channel between the downstream session and the upstream request, in
/// chunks: this (times the session's read size) bounds what a request holds in memory.
pub const CHANNEL_CHUNKS: usize = 2;

/// The receiving end: a streaming body for the upstream request.
pub struct ChannelBody {
    rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>,
    hint: SizeHint,
}

/// The sending end, driven by the session pump.
pub type BodySender = mpsc::Sender<Result<Frame<Bytes>, BoxError>>;

/// A body channel; `length` is the declared content length, if any.
pub fn channel(length: Option<u64>) -> (BodySender, ChannelBody) {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let hint = match length {
        Some(n) => SizeHint::with_exact(n),
        None => SizeHint::default(),
    };
    (tx, ChannelBody { rx, hint })
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.rx.poll_recv(cx)
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}
