//! The future a filter layer returns. Most requests pass a layer without it waiting on
//! anything of its own: its answer is then ready at once, or it is the inner service's
//! future, untouched. Only a layer that must wait itself (an ext_authz check, an injected
//! delay) boxes an `async` block. Boxing every layer cost one allocation per layer per
//! request (issue 22).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;

use crate::body::Body;
use crate::ProxyError;

/// A boxed future of the chain's answer.
pub type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

pin_project_lite::pin_project! {
    /// A layer's answer: given at once, the inner service's, or a boxed one.
    #[project = Projected]
    pub enum LayerFuture<F> {
        /// Answered by the layer, without waiting.
        Ready { answer: Option<Result<Response<Body>, ProxyError>> },
        /// The inner service's future, as it is.
        Inner { #[pin] future: F },
        /// A layer that waits on something of its own.
        Boxed { future: BoxFuture },
    }
}

impl<F> LayerFuture<F> {
    /// An answer given at once.
    pub fn ready(answer: Result<Response<Body>, ProxyError>) -> Self {
        LayerFuture::Ready {
            answer: Some(answer),
        }
    }

    /// The inner service's future.
    pub fn inner(future: F) -> Self {
        LayerFuture::Inner { future }
    }

    /// A layer's own `async` work.
    pub fn boxed(
        future: impl Future<Output = Result<Response<Body>, ProxyError>> + Send + 'static,
    ) -> Self {
        LayerFuture::Boxed {
            future: Box::pin(future),
        }
    }
}

impl<F> Future for LayerFuture<F>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
{
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Ready { answer } => Poll::Ready(
                answer
                    .take()
                    .expect("LayerFuture polled after it completed"),
            ),
            Projected::Inner { future } => future.poll(cx),
            Projected::Boxed { future } => future.as_mut().poll(cx),
        }
    }
}
