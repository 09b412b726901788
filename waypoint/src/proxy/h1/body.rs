//! The request body of a plain request: `Content-Length` bytes read off the tunnel as h2
//! delivers them (slices of the received frames, no copy), read by whoever polls it (the
//! upstream connection writing the request) while the server task writes the response.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::Shared;

/// The client's body, `left` bytes still to come. The connection is released (the shared
/// handle dropped) once the body is over, so the server can hand the connection on.
pub(super) struct RequestBody {
    conn: Option<Arc<Shared>>,
    left: u64,
}

/// The client closed the tunnel (or reset it) before the body was complete.
#[derive(Debug, thiserror::Error)]
#[error("request body incomplete: {0}")]
pub(super) struct Incomplete(String);

impl RequestBody {
    /// The body of the request just parsed on `conn`: `len` bytes.
    pub(super) fn new(conn: &Arc<Shared>, len: u64) -> Self {
        conn.lock().body_left = len;
        Self {
            conn: (len > 0).then(|| conn.clone()),
            left: len,
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = Incomplete;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Incomplete>>> {
        let Some(shared) = self.conn.as_ref() else {
            return Poll::Ready(None);
        };
        let mut conn = shared.lock();
        let mut data = if conn.leftover.is_empty() {
            match ready!(conn.stream.poll_recv(cx)) {
                Ok(Some(data)) => data,
                Ok(None) => {
                    return Poll::Ready(Some(Err(Incomplete(format!(
                        "the client ended the tunnel {} bytes short",
                        self.left
                    )))))
                }
                Err(e) => return Poll::Ready(Some(Err(Incomplete(e.to_string())))),
            }
        } else {
            std::mem::take(&mut conn.leftover)
        };
        if data.len() as u64 > self.left {
            // The rest is the next request (pipelined).
            conn.leftover = data.split_off(self.left as usize);
        }
        let left = self.left - data.len() as u64;
        conn.body_left = left;
        drop(conn);
        self.left = left;
        if left == 0 {
            self.conn = None;
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}
