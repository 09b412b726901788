//! An HTTP/1.1 client connection driven by the request's own task.
//!
//! hyper's client connection runs in a task of its own: each request crosses a channel to
//! it, the response comes back over another, and the body over a third, so every request
//! wakes that task several times and allocates the channels. Here the request's task
//! writes the request and reads the response head itself, and the response body is read
//! from the connection by whoever polls it; when it ends, the connection goes back to its
//! pool. Used for plain HTTP/1.1 requests; upgrades and header-case preservation stay on
//! hyper (`pool.rs` decides).
//!
//! ```text
//!  request task:  write head + body ──► endpoint ──► read head ──► Response<ResponseBody>
//!  body poller:   read body (Content-Length, chunked, until close) ──► Home::checkin
//! ```

mod body;
mod head;
#[cfg(test)]
mod tests;

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::BytesMut;
use filters::body::Body;
use http::{HeaderMap, Request, Response};
use http_body::Body as _;
use tokio::io::AsyncWrite;

pub use body::ResponseBody;

use super::UpstreamIo;
use head::Framing;

/// Read buffer size: a response head and a small body in one read.
const READ_CHUNK: usize = 8 * 1024;
/// Request body bytes gathered before they are written.
const WRITE_GATHER: usize = 16 * 1024;

/// What went wrong on an HTTP/1.1 connection.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// The request cannot be sent as it is.
    #[error("request: {0}")]
    Request(String),
    /// The endpoint's response is not valid HTTP/1.1.
    #[error("response: {0}")]
    Response(String),
    /// The request body failed (the client went away).
    #[error("request body: {0}")]
    RequestBody(String),
    /// The connection failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Takes a connection back once its response body has ended.
pub trait Home: Send + Unpin + 'static {
    /// The connection can take another request.
    fn checkin(self, conn: Box<Connection>);
}

/// An open HTTP/1.1 connection to an endpoint, idle between requests.
pub struct Connection {
    io: UpstreamIo,
    read: BytesMut,
    write: Vec<u8>,
    /// The last request's header map, cleared and reused for the next response head.
    spare_headers: Option<HeaderMap>,
    /// Where the last response head's headers sat, reused for the next.
    spots: Vec<head::Spot>,
    /// When it was opened.
    pub opened: Instant,
    /// When it was last listed idle.
    pub since: Instant,
    /// Requests it has carried.
    pub served: u32,
    /// Response heads parsed (tests: how often a head arriving in pieces is parsed).
    #[cfg(test)]
    parses: usize,
}

/// Why a request was not answered.
pub enum SendError {
    /// Nothing of the request reached the endpoint (the connection had closed): it can go
    /// on another connection.
    Unsent(Box<Request<Body>>, H1Error),
    /// The request failed once under way.
    Failed(H1Error),
}

impl Connection {
    /// A connection over `io`, just opened.
    pub fn new(io: UpstreamIo) -> Box<Self> {
        let now = Instant::now();
        Box::new(Self {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
            spare_headers: None,
            spots: Vec::new(),
            opened: now,
            since: now,
            served: 0,
            #[cfg(test)]
            parses: 0,
        })
    }

    /// Whether an idle connection is still open: the endpoint has neither closed it nor
    /// sent anything unasked (either makes it unusable).
    pub fn is_open(&mut self) -> bool {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        if !self.read.is_empty() {
            return false;
        }
        matches!(self.poll_fill(&mut cx), Poll::Pending)
    }

    /// With nothing buffered on an HBONE connection: the next received bytes as h2 handed
    /// them over (`None` inside: the stream ended). `None` for other connections, or with
    /// bytes buffered.
    fn poll_recv_direct(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Option<Poll<io::Result<Option<bytes::Bytes>>>> {
        match &mut self.io {
            UpstreamIo::Hbone(s) if self.read.is_empty() => Some(s.poll_recv(cx)),
            _ => None,
        }
    }

    /// Reads more bytes into the read buffer: how many (0 at end of stream).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_CHUNK / 4 {
            self.read.reserve(READ_CHUNK);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read)
    }
}

/// Sends `req` on `conn` and reads the response head; the response body reads the rest
/// (and writes what is left of the request body, for endpoints that answer while they
/// read, as echo servers and gRPC streams do), then hands the connection to `home` if it
/// can carry another request.
pub async fn send<H: Home>(
    mut conn: Box<Connection>,
    req: Request<Body>,
    home: H,
) -> Result<Response<ResponseBody<H>>, SendError> {
    let (mut parts, body) = req.into_parts();
    let framing = match head::framing(
        &parts.method,
        &mut parts.headers,
        body.is_end_stream(),
        body.size_hint().exact(),
    ) {
        Ok(f) => f,
        Err(e) => return Err(SendError::Failed(e)),
    };
    conn.served += 1;
    conn.write.clear();
    head::encode_request(&mut conn.write, &parts.method, &parts.uri, &parts.headers);
    let mut upload = Upload {
        body: (framing != Framing::Empty).then_some(body),
        framing,
        body_sent: 0,
        written: 0,
        head_left: conn.write.len(),
        flush: false,
    };
    // Bytes of the read buffer known not to end a head: a head arriving in pieces is parsed
    // again only when a piece brings a line end (not once per piece).
    let mut checked = 0;
    let head = match poll_fn(|cx| response_head(&mut conn, &mut upload, &mut checked, cx)).await {
        Ok(head) => head,
        Err(e) if upload.unsent() => {
            let body = upload.body.take().unwrap_or_default();
            return Err(SendError::Unsent(
                Box::new(Request::from_parts(parts, body)),
                e,
            ));
        }
        Err(e) => return Err(SendError::Failed(e)),
    };
    let length = head::response_length(&parts.method, &head).map_err(SendError::Failed)?;
    let reusable = head::keeps_alive(&parts.headers, &head);
    let mut spare = parts.headers;
    spare.clear();
    conn.spare_headers = Some(spare);
    let upload = (!upload.done(&conn)).then_some(upload);
    let mut resp = Response::new(ResponseBody::new(conn, upload, length, reusable, home));
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    *resp.headers_mut() = head.headers;
    Ok(resp)
}

/// Writes the request while waiting for the response head. `checked` bytes of the read
/// buffer are known not to complete a head: it is parsed again only once a line end
/// arrives after them (a head can only end with one) or it outgrows the head limit.
fn response_head(
    conn: &mut Connection,
    upload: &mut Upload,
    checked: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<Result<head::ResponseHead, H1Error>> {
    loop {
        let mut progressed = upload.poll_progress(conn, cx)?;
        let fresh = conn.read.get(*checked..).unwrap_or_default();
        if fresh.contains(&b'\n') || conn.read.len() > head::MAX_HEAD_BYTES {
            #[cfg(test)]
            {
                conn.parses += 1;
            }
            if let Some(head) = parse(conn)? {
                return Poll::Ready(Ok(head));
            }
        }
        *checked = conn.read.len();
        match conn.poll_fill(cx) {
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Err(H1Error::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the endpoint closed the connection before responding",
                ))))
            }
            Poll::Ready(Ok(_)) => progressed = true,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
            Poll::Pending => {}
        }
        if !progressed {
            return Poll::Pending;
        }
    }
}

/// A final response head, skipping informational ones (`100 Continue`).
fn parse(conn: &mut Connection) -> Result<Option<head::ResponseHead>, H1Error> {
    loop {
        let spare = conn.spare_headers.take().unwrap_or_default();
        let Some(head) = head::parse_response(&mut conn.read, spare, &mut conn.spots)? else {
            return Ok(None);
        };
        if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
            return Err(H1Error::Response(
                "101 Switching Protocols to a request that asked for no upgrade".into(),
            ));
        }
        if !head.status.is_informational() {
            return Ok(Some(head));
        }
        conn.spare_headers = Some(head.headers);
        if conn.read.is_empty() {
            return Ok(None);
        }
    }
}

/// The request on its way out: its head and body, framed into the connection's write
/// buffer and written as the connection takes them.
pub(crate) struct Upload {
    /// The request body, until it has all been taken.
    body: Option<Body>,
    framing: Framing,
    body_sent: u64,
    /// Bytes of the connection's write buffer already written.
    written: usize,
    /// Bytes of the request head not yet written, for [`Self::unsent`].
    head_left: usize,
    /// Written bytes not yet flushed.
    flush: bool,
}

impl Upload {
    /// Whether the endpoint cannot have acted on the request: its head was not all written
    /// and no body data was taken.
    fn unsent(&self) -> bool {
        self.head_left > 0 && self.body_sent == 0
    }

    /// Whether all of the request has been written and flushed.
    fn done(&self, conn: &Connection) -> bool {
        self.body.is_none() && conn.write.is_empty() && !self.flush
    }

    /// Moves the request along without waiting: whether anything happened.
    fn poll_progress(
        &mut self,
        conn: &mut Connection,
        cx: &mut Context<'_>,
    ) -> Result<bool, H1Error> {
        let mut progressed = false;
        loop {
            let mut moved = false;
            // Gather what the body has ready.
            while self.body.is_some() && conn.write.len() - self.written < WRITE_GATHER {
                let body = self.body.as_mut().expect("checked");
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            self.gather(&mut conn.write, &data)?;
                        }
                        // A chunked request's trailers are not forwarded.
                    }
                    Poll::Ready(Some(Err(e))) => return Err(H1Error::RequestBody(e.to_string())),
                    Poll::Ready(None) => {
                        self.end_body(&mut conn.write)?;
                        self.body = None;
                    }
                    Poll::Pending => break,
                }
                moved = true;
            }
            // Write it out.
            while self.written < conn.write.len() {
                match Pin::new(&mut conn.io).poll_write(cx, &conn.write[self.written..]) {
                    Poll::Ready(Ok(0)) => {
                        return Err(io::Error::from(io::ErrorKind::WriteZero).into())
                    }
                    Poll::Ready(Ok(n)) => {
                        self.written += n;
                        self.head_left = self.head_left.saturating_sub(n);
                        self.flush = true;
                        moved = true;
                    }
                    Poll::Ready(Err(e)) => return Err(e.into()),
                    Poll::Pending => break,
                }
            }
            if self.written == conn.write.len() && self.written > 0 {
                conn.write.clear();
                self.written = 0;
            }
            if self.flush && conn.write.is_empty() {
                match Pin::new(&mut conn.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.flush = false,
                    Poll::Ready(Err(e)) => return Err(e.into()),
                    Poll::Pending => {}
                }
            }
            if !moved {
                return Ok(progressed);
            }
            progressed = true;
        }
    }

    /// Appends a data frame in the request's framing.
    fn gather(&mut self, out: &mut Vec<u8>, data: &[u8]) -> Result<(), H1Error> {
        if data.is_empty() {
            return Ok(());
        }
        self.body_sent += data.len() as u64;
        match self.framing {
            Framing::Length(len) if self.body_sent > len => Err(H1Error::Request(format!(
                "the request body is longer than its content-length {len}"
            ))),
            Framing::Length(_) => {
                out.extend_from_slice(data);
                Ok(())
            }
            Framing::Chunked => {
                use std::io::Write as _;
                let _ = write!(out, "{:x}\r\n", data.len());
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
                Ok(())
            }
            Framing::Empty => Err(H1Error::Request(
                "a request body where none was announced".into(),
            )),
        }
    }

    /// Ends the body in its framing.
    fn end_body(&mut self, out: &mut Vec<u8>) -> Result<(), H1Error> {
        match self.framing {
            Framing::Chunked => {
                out.extend_from_slice(b"0\r\n\r\n");
                Ok(())
            }
            Framing::Length(len) if self.body_sent < len => Err(H1Error::RequestBody(format!(
                "the request body ended after {} of its {len} bytes",
                self.body_sent
            ))),
            _ => Ok(()),
        }
    }
}
