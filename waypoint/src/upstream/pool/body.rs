//! The response body a pooled connection gives back.

use hyper::body::Incoming;

use super::{h1, Return, StreamSlot};

pin_project_lite::pin_project! {
    /// A response body from an endpoint: read by hyper (over HTTP/2 holding its stream's
    /// slot until it ends or is dropped) or straight from an HTTP/1.1 connection.
    #[project = UpstreamBodyProj]
    pub enum UpstreamBody {
        /// Read by hyper's client connection.
        Hyper { #[pin] body: filters::body::Guarded<Incoming, Option<StreamSlot>> },
        /// Read from a request-driven HTTP/1.1 connection.
        Direct { #[pin] body: h1::ResponseBody<Return> },
    }
}

impl UpstreamBody {
    pub(super) fn hyper(body: Incoming, slot: Option<StreamSlot>) -> Self {
        Self::Hyper {
            body: filters::body::Guarded::new(body, slot),
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = filters::body::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        match self.project() {
            UpstreamBodyProj::Hyper { body } => body.poll_frame(cx).map_err(Into::into),
            UpstreamBodyProj::Direct { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper { body } => body.is_end_stream(),
            Self::Direct { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Hyper { body } => body.size_hint(),
            Self::Direct { body } => body.size_hint(),
        }
    }
}
