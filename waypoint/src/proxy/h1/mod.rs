//! The tunnel's own HTTP/1.1 server for plain requests, in the tunnel's task.
//!
//! ```text
//!  H2Stream ─poll_recv (frames as Bytes)─► parse head ─► TunnelApp::serve_request ─► chain
//!     ▲                                                                               │
//!     └── poll_send (body Bytes as DATA frames, head + small first chunk in one) ◄────┘
//! ```
//!
//! Most requests in a tunnel are HTTP/1.1 with no body or a `Content-Length` one. For those
//! this server reads the head from the received frames (no copy into a read buffer), lets
//! the request body be read by whoever polls it (the upstream connection writing it, full
//! duplex), and writes the response's body chunks as DATA frames as they are (no copy),
//! framed as hyper's server frames them ([`encode`]). The first request it does not take
//! ([`parse`]: another version, chunked or `Expect`, upgrades, malformed input) hands the
//! connection, with the bytes already received, to hyper's server, which serves the rest of
//! it. A connection with header-case preservation is hyper's from the start.
//!
//! As with hyper: a client that ends the tunnel while its request is in flight drops the
//! exchange (recorded as a disconnect); a request body left unread closes the connection
//! after the response; a failing response body ends the tunnel; a graceful stop lets the
//! request in flight finish with `connection: close`.

mod body;
mod encode;
mod parse;

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::FutureExt;
use http::{HeaderMap, Method, Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;

use super::http::TunnelApp;
use super::tracked::TrackedBody;
use body::RequestBody;
use encode::{BodySize, Framing};
use hbone::H2Stream;
use parse::{Parsed, Plain};

/// How the connection left this server.
pub(super) enum Served {
    /// It is over.
    Closed,
    /// hyper's server takes it from here (the unread bytes are back in the stream).
    Handoff(H2Stream),
}

/// The tunnel, shared by the server and the request body being read.
pub(super) struct Shared(Mutex<Conn>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Conn> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The tunnel and what has been received on it but not yet served.
pub(super) struct Conn {
    stream: H2Stream,
    /// Received and not yet taken: the rest of a body, or the next request.
    leftover: Bytes,
    /// A request head arriving in pieces, gathered (empty otherwise; while it is not,
    /// `leftover` holds a copy of it as of its last complete line).
    partial: BytesMut,
    /// Body bytes of the current request still to be read from the tunnel.
    body_left: u64,
}

/// Body chunks up to this size are copied into one DATA frame with their framing (the head,
/// a chunk's size line); larger ones go as they are.
const GATHER: usize = 16 << 10;

/// Serves plain requests on `stream` until it ends, `stop` fires (`None`: finish the
/// request in flight; `Some(bound)`: finish it within `bound`), or a request is not plain.
pub(super) async fn serve(
    app: &TunnelApp,
    stream: H2Stream,
    stop: impl Future<Output = Option<Duration>>,
) -> Served {
    let shared = Arc::new(Shared(Mutex::new(Conn {
        stream,
        leftover: Bytes::new(),
        partial: BytesMut::new(),
        body_left: 0,
    })));
    let mut out = BytesMut::new();
    let mut headers = HeaderMap::new();
    let closing = AtomicBool::new(false);
    let mut stop = pin!(stop);
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut stop => return close(&shared),
            next = read_head(&shared, std::mem::take(&mut headers)) => next,
        };
        let plain = match next {
            Next::Plain(p) => p,
            Next::Eof => return close(&shared),
            Next::Broken => return Served::Closed,
            Next::Other => return handoff(shared),
        };
        let mut work = pin!(exchange(app, &shared, plain, &closing, &mut out));
        let step = tokio::select! {
            step = work.as_mut() => step,
            bound = &mut stop => {
                closing.store(true, Ordering::Relaxed);
                match bound {
                    None => work.await,
                    Some(bound) => tokio::time::timeout(bound, work).await.unwrap_or(Step::Abort),
                }
            }
        };
        match step {
            Step::Next(h) if !closing.load(Ordering::Relaxed) => headers = h,
            Step::Next(_) | Step::Close => return close(&shared),
            Step::Abort => return Served::Closed,
        }
    }
}

/// What follows a request.
enum Step {
    /// The next request (the response's header map, cleared, for it).
    Next(HeaderMap),
    /// Close the connection cleanly.
    Close,
    /// End the tunnel at once (reset): the response could not be completed.
    Abort,
}

// Moved once per request; boxing the head would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Next {
    /// A plain request.
    Plain(Plain),
    /// The client ended the tunnel between requests.
    Eof,
    /// The tunnel failed.
    Broken,
    /// For hyper.
    Other,
}

/// Waits for the next request head. A head that arrives whole in one frame is parsed where
/// it lies; one that arrives in pieces is gathered in `partial` (amortized growth, not a new
/// copy per piece) and parsed again only when a piece ends a line, so a head sent a byte per
/// frame costs a parse per line rather than per byte.
async fn read_head(shared: &Shared, headers: HeaderMap) -> Next {
    let mut headers = Some(headers);
    poll_fn(|cx| {
        let mut conn = shared.lock();
        let conn = &mut *conn;
        loop {
            if !conn.leftover.is_empty() && conn.partial.is_empty() {
                match parse::parse(&conn.leftover, headers.take().unwrap_or_default()) {
                    Parsed::Plain(p) => {
                        let _ = conn.leftover.split_to(p.head_len);
                        return Poll::Ready(Next::Plain(p));
                    }
                    Parsed::Other => return Poll::Ready(Next::Other),
                    Parsed::Partial => conn.partial.extend_from_slice(&conn.leftover),
                }
            }
            match conn.stream.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(data))) if conn.partial.is_empty() => conn.leftover = data,
                Poll::Ready(Ok(Some(data))) => {
                    conn.partial.extend_from_slice(&data);
                    if !data.contains(&b'\n') && conn.partial.len() <= parse::MAX_PLAIN_HEAD {
                        continue;
                    }
                    conn.leftover = Bytes::copy_from_slice(&conn.partial);
                    match parse::parse(&conn.leftover, headers.take().unwrap_or_default()) {
                        Parsed::Plain(p) => {
                            conn.partial.clear();
                            let _ = conn.leftover.split_to(p.head_len);
                            return Poll::Ready(Next::Plain(p));
                        }
                        Parsed::Other => {
                            conn.partial.clear();
                            return Poll::Ready(Next::Other);
                        }
                        Parsed::Partial => {}
                    }
                }
                Poll::Ready(Ok(None)) if conn.partial.is_empty() => return Poll::Ready(Next::Eof),
                // A partial head at the end is hyper's to answer.
                Poll::Ready(Ok(None)) => {
                    conn.leftover = conn.partial.split().freeze();
                    return Poll::Ready(Next::Other);
                }
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "tunnel failed between requests");
                    return Poll::Ready(Next::Broken);
                }
            }
        }
    })
    .await
}

/// Runs one request through the chain and writes its response.
async fn exchange(
    app: &TunnelApp,
    shared: &Arc<Shared>,
    plain: Plain,
    closing: &AtomicBool,
    out: &mut BytesMut,
) -> Step {
    let Plain {
        request,
        body_len,
        keep_alive,
        ..
    } = plain;
    let method = request.method().clone();
    let req: Request<RequestBody> = request.map(|()| RequestBody::new(shared, body_len));
    // While the chain works, a client that ends the tunnel drops the exchange. (The chain's
    // future lives in this block only, so the exchange's future can hold it and the
    // response writer's in the same bytes.)
    let resp = {
        let mut answer = pin!(app.serve_request(req));
        poll_fn(|cx| match answer.as_mut().poll(cx) {
            Poll::Ready(r) => Poll::Ready(r.ok()),
            Poll::Pending => peer_gone(shared, cx).map(|()| None),
        })
        .await
    };
    let Some(resp) = resp else {
        tracing::debug!("client ended the tunnel before the response");
        return Step::Abort;
    };
    let keep_alive = keep_alive && !closing.load(Ordering::Relaxed);
    respond(shared, resp, &method, keep_alive, out).await
}

/// Writes `resp` (head, then body) to the tunnel.
async fn respond(
    shared: &Shared,
    resp: Response<TrackedBody>,
    method: &Method,
    keep_alive: bool,
    out: &mut BytesMut,
) -> Step {
    let (mut parts, mut body) = resp.into_parts();
    let size = if body.is_end_stream() {
        BodySize::Empty
    } else {
        body.size_hint()
            .exact()
            .map_or(BodySize::Unknown, BodySize::Known)
    };
    let reason = parts.extensions.get::<hyper::ext::ReasonPhrase>();
    let head = encode::head(
        out,
        method,
        parts.version,
        parts.status,
        reason.map(|r| r.as_bytes()),
        &parts.headers,
        size,
        keep_alive,
    );
    let head = match head {
        Ok(h) => h,
        Err(e) => {
            tracing::info!(error = %e, "response dropped");
            out.clear();
            return Step::Abort;
        }
    };
    parts.headers.clear();
    let mut left = match head.framing {
        Framing::Length(n) => n,
        Framing::Chunked | Framing::Close => u64::MAX,
    };
    // The first body bytes go with the head when they are at hand and small.
    let mut ended = false;
    if left > 0 {
        match body.frame().now_or_never() {
            Some(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if data.len() <= GATHER && data.len() as u64 <= left {
                        frame_into(out, head.framing, &data);
                        left -= data.len() as u64;
                    } else if send(shared, out.split().freeze()).await.is_err()
                        || write_data(shared, out, head.framing, data, &mut left)
                            .await
                            .is_err()
                    {
                        return Step::Abort;
                    }
                }
            }
            Some(None) => ended = true,
            Some(Some(Err(e))) => {
                tracing::debug!(error = %e, "response body failed; ending the tunnel");
                return Step::Abort;
            }
            None => {}
        }
    }
    if !out.is_empty() && send(shared, out.split().freeze()).await.is_err() {
        return Step::Abort;
    }
    while left > 0 && !ended {
        let frame = poll_fn(|cx| match std::pin::Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(f) => Poll::Ready(Some(f)),
            Poll::Pending => peer_gone(shared, cx).map(|()| None),
        })
        .await;
        let data = match frame {
            None => {
                tracing::debug!("client ended the tunnel during the response");
                return Step::Abort;
            }
            Some(None) => break,
            Some(Some(Err(e))) => {
                tracing::debug!(error = %e, "response body failed; ending the tunnel");
                return Step::Abort;
            }
            Some(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => data,
                // Trailers: hyper sends them only to a client that asked (`TE: trailers`),
                // and such requests are hyper's.
                Err(_) => continue,
            },
        };
        if write_data(shared, out, head.framing, data, &mut left)
            .await
            .is_err()
        {
            return Step::Abort;
        }
    }
    drop(body);
    match head.framing {
        Framing::Chunked
            if send(shared, Bytes::from_static(b"0\r\n\r\n"))
                .await
                .is_err() =>
        {
            return Step::Abort
        }
        Framing::Length(_) if left > 0 => {
            tracing::debug!(missing = left, "response body ended short of its length");
            return Step::Abort;
        }
        _ => {}
    }
    // An unread request body: the connection cannot be read further.
    if head.last || shared.lock().body_left > 0 {
        return Step::Close;
    }
    Step::Next(parts.headers)
}

/// Appends `data` to `out` framed for `framing`.
fn frame_into(out: &mut BytesMut, framing: Framing, data: &[u8]) {
    if framing == Framing::Chunked {
        chunk_size(out, data.len());
        out.put_slice(data);
        out.put_slice(b"\r\n");
    } else {
        out.put_slice(data);
    }
}

fn chunk_size(out: &mut BytesMut, len: usize) {
    use std::fmt::Write as _;
    let _ = write!(out, "{len:X}\r\n");
}

/// Sends one body chunk: small ones framed in one copy, larger ones as they are.
async fn write_data(
    shared: &Shared,
    out: &mut BytesMut,
    framing: Framing,
    mut data: Bytes,
    left: &mut u64,
) -> Result<(), ()> {
    if data.is_empty() {
        return Ok(());
    }
    if let Framing::Length(_) = framing {
        if data.len() as u64 > *left {
            tracing::debug!("response body longer than its length");
            return Err(());
        }
        *left -= data.len() as u64;
    }
    match framing {
        Framing::Chunked if data.len() <= GATHER => {
            frame_into(out, framing, &data);
            send(shared, out.split().freeze()).await
        }
        Framing::Chunked => {
            chunk_size(out, data.len());
            send(shared, out.split().freeze()).await?;
            send(shared, std::mem::take(&mut data)).await?;
            send(shared, Bytes::from_static(b"\r\n")).await
        }
        Framing::Length(_) | Framing::Close => send(shared, data).await,
    }
}

async fn send(shared: &Shared, mut data: Bytes) -> Result<(), ()> {
    poll_fn(|cx| shared.lock().stream.poll_send(cx, &mut data))
        .await
        .map_err(|e| tracing::debug!(error = %e, "tunnel write failed"))
}

/// Ready when the client has ended the tunnel while nothing more of the request is to be
/// read (hyper's rule without half-close). Bytes of a next request arriving meanwhile are
/// kept, and the watch stops.
fn peer_gone(shared: &Shared, cx: &mut Context<'_>) -> Poll<()> {
    let mut conn = shared.lock();
    if conn.body_left > 0 || !conn.leftover.is_empty() {
        return Poll::Pending;
    }
    match conn.stream.poll_recv(cx) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Ok(Some(data))) => {
            conn.leftover = data;
            Poll::Pending
        }
        Poll::Ready(Ok(None) | Err(_)) => Poll::Ready(()),
    }
}

/// Ends our side of the tunnel cleanly (END_STREAM).
fn close(shared: &Shared) -> Served {
    shared.lock().stream.end_stream();
    Served::Closed
}

/// Gives the tunnel to hyper's server, with what was received and not yet served.
fn handoff(shared: Arc<Shared>) -> Served {
    match Arc::try_unwrap(shared) {
        Ok(shared) => {
            let mut conn = shared.0.into_inner().unwrap_or_else(|e| e.into_inner());
            let leftover = std::mem::take(&mut conn.leftover);
            conn.stream.unread(&leftover);
            Served::Handoff(conn.stream)
        }
        // A request body of an earlier request still holds the tunnel (never the case
        // once it is read, and an unread one closes the connection first).
        Err(shared) => close(&shared),
    }
}
