//! The routing layer's future: its own answer, or the inner service's with the matched
//! rule's response changes applied on the way back. Boxed only while a fault delay waits.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;

use super::layer::Post;
use crate::body::Body;
use crate::future::LayerFuture;
use crate::ProxyError;

pin_project_lite::pin_project! {
    /// What [`super::RouteService`] returns.
    pub struct RouteFuture<F> {
        #[pin]
        state: LayerFuture<F>,
        post: Option<Post>,
    }
}

impl<F> RouteFuture<F> {
    pub(super) fn ready(answer: Result<Response<Body>, ProxyError>) -> Self {
        RouteFuture {
            state: LayerFuture::ready(answer),
            post: None,
        }
    }

    pub(super) fn inner(future: F, post: Post) -> Self {
        RouteFuture {
            state: LayerFuture::inner(future),
            post: Some(post),
        }
    }

    pub(super) fn boxed(
        future: impl Future<Output = Result<Response<Body>, ProxyError>> + Send + 'static,
    ) -> Self {
        RouteFuture {
            state: LayerFuture::boxed(future),
            post: None,
        }
    }
}

impl<F> Future for RouteFuture<F>
where
    F: Future<Output = Result<Response<Body>, ProxyError>>,
{
    type Output = Result<Response<Body>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.state.poll(cx));
        Poll::Ready(match (out, this.post.take()) {
            (Ok(resp), Some(post)) => Ok(post.apply(resp)),
            (out, _) => out,
        })
    }
}
