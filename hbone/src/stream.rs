//! [`H2Stream`]: one HTTP/2 CONNECT stream as a byte stream (`AsyncRead` + `AsyncWrite`).
//!
//! The same type carries a tunnel on both sides of the waypoint: the downstream tunnel
//! from ztunnel (handed to Pingora's HTTP session as its transport) and the upstream
//! tunnel to a destination pod (handed to hyper's client connection).

use std::any::Any;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

static NEXT_ID: AtomicI32 = AtomicI32::new(1);

/// Largest chunk handed to h2 in one write; h2 splits it into frames.
const MAX_WRITE: usize = 1 << 20;
/// Writes up to this size are gathered in the stream's own buffer, kept between writes;
/// larger ones get a buffer of their own that is not kept.
const KEPT_WRITE_BUFFER: usize = 16 << 10;

/// A bidirectional byte stream over one HTTP/2 stream.
pub struct H2Stream {
    send: SendStream<Bytes>,
    /// `None` only after drop handed it to the linger task.
    recv: Option<RecvStream>,
    /// Received but not yet read (also holds bytes peeked for protocol detection).
    buf: BytesMut,
    /// Where writes are gathered into a DATA frame. Once h2 has sent a frame and dropped
    /// it, the next write reuses the same memory (no allocation per write).
    wbuf: BytesMut,
    eof: bool,
    shut: bool,
    id: UniqueIDType,
    /// Kept alive as long as the stream (e.g. a pool's in-use counter).
    _guard: Option<Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("H2Stream")
            .field("id", &self.id)
            .field("stream", &self.send.stream_id())
            .finish()
    }
}

impl H2Stream {
    /// Wraps the two halves of an HTTP/2 stream.
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv: Some(recv),
            buf: BytesMut::new(),
            wbuf: BytesMut::new(),
            eof: false,
            shut: false,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            _guard: None,
        }
    }

    /// Attaches a value dropped together with the stream.
    pub fn with_guard(mut self, guard: impl Any + Send + Sync) -> Self {
        self._guard = Some(Box::new(guard));
        self
    }

    /// Reads until at least `want` bytes are buffered (or the peer stops sending) without
    /// consuming them; returns what is buffered.
    pub async fn fill(&mut self, want: usize) -> io::Result<&[u8]> {
        while self.buf.len() < want && !self.eof {
            std::future::poll_fn(|cx| self.poll_fill(cx)).await?;
        }
        Ok(&self.buf)
    }

    /// Bytes buffered so far.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// The next received bytes without a copy: what is buffered first, then each DATA
    /// frame's payload as h2 hands it over (empty frames skipped); `None` at the end of the
    /// stream.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if !self.buf.is_empty() {
            return Poll::Ready(Ok(Some(self.buf.split().freeze())));
        }
        while !self.eof {
            match ready!(self.poll_data(cx))? {
                Some(data) if data.is_empty() => continue,
                Some(data) => return Poll::Ready(Ok(Some(data))),
                None => break,
            }
        }
        Poll::Ready(Ok(None))
    }

    /// Puts bytes taken with [`Self::poll_recv`] back in front of what is read next.
    pub fn unread(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut buf = BytesMut::with_capacity(data.len() + self.buf.len());
        buf.extend_from_slice(data);
        buf.extend_from_slice(&self.buf);
        self.buf = buf;
    }

    /// Sends all of `data` as DATA frames without copying it (each frame a slice of it),
    /// as flow control allows; what is sent is taken off the front of `data`.
    pub fn poll_send(&mut self, cx: &mut Context<'_>, data: &mut Bytes) -> Poll<io::Result<()>> {
        while !data.is_empty() {
            let n = ready!(self.poll_capacity(cx, data.len()))?;
            self.send
                .send_data(data.split_to(n), false)
                .map_err(h2_to_io)?;
        }
        Poll::Ready(Ok(()))
    }

    /// Ends our side of the stream (END_STREAM), once; the peer's side stays readable.
    pub fn end_stream(&mut self) {
        if !self.shut {
            self.shut = true;
            // The peer may already have reset the stream; the half-close is best effort.
            let _ = self.send.send_data(Bytes::new(), true);
        }
    }

    /// Waits until h2 grants capacity to send at least one byte of `want`; returns how many.
    fn poll_capacity(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        let want = want.min(MAX_WRITE);
        self.send.reserve_capacity(want);
        while self.send.capacity() == 0 {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "HBONE stream closed",
                    )))
                }
            }
        }
        Poll::Ready(Ok(self.send.capacity().min(want)))
    }

    /// Receives one more DATA frame into the buffer.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(data) = ready!(self.poll_data(cx))? {
            self.buf.extend_from_slice(&data);
        }
        Poll::Ready(Ok(()))
    }

    /// The next DATA frame's payload (its flow-control capacity released), or `None` at
    /// the end of the stream (then `eof` is set).
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        let Some(recv) = self.recv.as_mut() else {
            self.eof = true;
            return Poll::Ready(Ok(None));
        };
        match ready!(recv.poll_data(cx)) {
            Some(Ok(data)) => {
                let _ = recv.flow_control().release_capacity(data.len());
                Poll::Ready(Ok(Some(data)))
            }
            Some(Err(e)) if e.reason() != Some(h2::Reason::NO_ERROR) => {
                Poll::Ready(Err(h2_to_io(e)))
            }
            Some(Err(_)) | None => {
                self.eof = true;
                Poll::Ready(Ok(None))
            }
        }
    }
}

/// How long a tunnel we closed waits for the peer to close its side before it is reset.
const LINGER: std::time::Duration = std::time::Duration::from_secs(5);

impl Drop for H2Stream {
    /// Dropping the receive half of a stream the peer is still sending on resets it
    /// (CANCEL), which can discard a response the peer has not read yet. After our
    /// END_STREAM, linger until the peer ends its side too, then close cleanly.
    fn drop(&mut self) {
        if !self.shut || self.eof {
            return;
        }
        let (Some(mut recv), Ok(rt)) = (self.recv.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        rt.spawn(async move {
            let drain = async {
                while let Some(Ok(data)) = recv.data().await {
                    let _ = recv.flow_control().release_capacity(data.len());
                }
            };
            let _ = tokio::time::timeout(LINGER, drain).await;
        });
    }
}

/// Converts an h2 error into an I/O error, keeping resets recognisable.
pub fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"))
    } else {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            // Straight from the frame into the reader: only what does not fit is buffered
            // (one copy of every tunnelled byte instead of two). A frame with no payload
            // (h2 passes on END_STREAM's) is skipped: the next poll finds the end.
            while !this.eof {
                let Some(data) = ready!(this.poll_data(cx))? else {
                    break;
                };
                if data.is_empty() {
                    continue;
                }
                let n = data.len().min(out.remaining());
                out.put_slice(&data[..n]);
                this.buf.extend_from_slice(&data[n..]);
                break;
            }
            return Poll::Ready(Ok(()));
        }
        let n = this.buf.len().min(out.remaining());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    /// Gathers the slices into one DATA frame: writers such as Pingora's chunked body
    /// encoder write a chunk as size line, data and CRLF, which as three frames cost
    /// three flow-control reservations and, when capacity had to be waited for, a task
    /// hop and a TLS record each.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(this.poll_capacity(cx, total))?;
        let mut own;
        let frame = if n <= KEPT_WRITE_BUFFER {
            // Reclaims the memory of earlier frames once h2 has let go of them.
            this.wbuf.reserve(n);
            &mut this.wbuf
        } else {
            own = BytesMut::with_capacity(n);
            &mut own
        };
        for b in bufs {
            let take = (n - frame.len()).min(b.len());
            frame.extend_from_slice(&b[..take]);
            if frame.len() == n {
                break;
            }
        }
        let frame = frame.split().freeze();
        this.send.send_data(frame, false).map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().end_stream();
        Poll::Ready(Ok(()))
    }
}

#[async_trait]
impl Shutdown for H2Stream {
    async fn shutdown(&mut self) {
        let _ = tokio::io::AsyncWriteExt::shutdown(self).await;
    }
}

impl UniqueID for H2Stream {
    fn id(&self) -> UniqueIDType {
        self.id
    }
}

impl Ssl for H2Stream {}

impl GetTimingDigest for H2Stream {
    fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for H2Stream {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for H2Stream {
    fn get_socket_digest(&self) -> Option<Arc<pingora_core::protocols::SocketDigest>> {
        None
    }
}

#[async_trait]
impl Peek for H2Stream {
    async fn try_peek(&mut self, out: &mut [u8]) -> io::Result<bool> {
        let have = self.fill(out.len()).await?;
        let n = have.len().min(out.len());
        out[..n].copy_from_slice(&have[..n]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A client stream to an h2 server over memory: what the client sends, the server's
    /// [`H2Stream`] reads.
    async fn pair() -> (SendStream<Bytes>, H2Stream) {
        let (stream, send, _recv) = crate::testing::stream_pair().await;
        (send, stream)
    }

    #[tokio::test]
    async fn frames_are_read_in_order_to_the_end_of_the_stream() {
        let (mut send, mut stream) = pair().await;
        send.send_data(Bytes::from_static(b"hello"), false).unwrap();
        send.send_data(Bytes::from_static(b" world"), false)
            .unwrap();
        send.send_data(Bytes::new(), true).unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello world");
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_read_is_kept_for_the_next_reads() {
        let (mut send, mut stream) = pair().await;
        send.send_data(Bytes::from_static(b"0123456789"), true)
            .unwrap();
        let mut small = [0u8; 4];
        let n = stream.read(&mut small).await.unwrap();
        assert_eq!(&small[..n], b"0123");
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"456789");
    }
}
