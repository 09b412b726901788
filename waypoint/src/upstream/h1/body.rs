//! The response body, read from the connection by whoever polls it (the downstream
//! server's task), and the connection handed back to its pool when the body ends.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use super::head::BodyLength;
use super::{Connection, H1Error, Home, Upload};

/// Most bytes a chunk-size line (with extensions) or the trailer section may take.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64 * 1024;

/// Where the body is in its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoder {
    /// This many bytes still to come.
    Length(u64),
    /// Chunked: the next chunk-size line.
    ChunkSize,
    /// Chunked: this many bytes of the current chunk still to come.
    ChunkData(u64),
    /// Chunked: the CRLF after a chunk's data.
    ChunkEnd,
    /// Chunked: the trailer section after the last chunk.
    Trailers,
    /// Everything until the endpoint closes the connection.
    UntilClose,
    /// Over.
    Done,
}

/// A response body read straight from its HTTP/1.1 connection.
pub struct ResponseBody<H: Home> {
    conn: Option<Box<Connection>>,
    /// The rest of the request, when the endpoint answered before reading all of it:
    /// written as the body is polled.
    upload: Option<Upload>,
    decoder: Decoder,
    /// Whether the connection may take another request once the body is over.
    reusable: bool,
    home: Option<H>,
}

impl<H: Home> ResponseBody<H> {
    pub(super) fn new(
        conn: Box<Connection>,
        upload: Option<Upload>,
        length: BodyLength,
        reusable: bool,
        home: H,
    ) -> Self {
        let decoder = match length {
            BodyLength::Empty => Decoder::Done,
            BodyLength::Length(n) => Decoder::Length(n),
            BodyLength::Chunked => Decoder::ChunkSize,
            BodyLength::UntilClose => Decoder::UntilClose,
        };
        let mut body = Self {
            conn: Some(conn),
            upload,
            decoder,
            reusable: reusable && length != BodyLength::UntilClose,
            home: Some(home),
        };
        if body.decoder == Decoder::Done {
            body.finish();
        }
        body
    }

    /// The body is over: the connection goes back to its pool if it can take another
    /// request (all of the request was written, nothing more was sent after the
    /// response), else it closes; a request still being written is cut short, as Envoy
    /// resets an upstream request whose response completed first.
    fn finish(&mut self) {
        self.decoder = Decoder::Done;
        if let (Some(conn), Some(home)) = (self.conn.take(), self.home.take()) {
            if self.reusable && self.upload.is_none() && conn.read.is_empty() {
                home.checkin(conn);
            }
        }
    }

    /// Takes at most `n` bytes already read as a data frame (sharing the read buffer).
    fn take(conn: &mut Connection, n: u64) -> Bytes {
        let n = (n.min(usize::MAX as u64) as usize).min(conn.read.len());
        conn.read.split_to(n).freeze()
    }
}

impl<H: Home> http_body::Body for ResponseBody<H> {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(upload) = this.upload.as_mut() {
                match upload.poll_progress(conn, cx) {
                    Ok(_) if upload.done(conn) => this.upload = None,
                    Ok(_) => {}
                    // The client's request body failed: so does the exchange.
                    Err(e @ H1Error::RequestBody(_)) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(e)));
                    }
                    // The endpoint stopped reading: its answer may still come.
                    Err(e) => {
                        tracing::debug!(error = %e, "request body not all written");
                        this.upload = None;
                        this.reusable = false;
                    }
                }
            }
            let buffered = conn.read.len();
            match this.decoder {
                Decoder::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Decoder::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Decoder::Length(rest) if buffered > 0 => {
                    let data = Self::take(conn, rest);
                    let rest = rest - data.len() as u64;
                    this.decoder = Decoder::Length(rest);
                    if rest == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoder::UntilClose if buffered > 0 => {
                    let data = Self::take(conn, u64::MAX);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoder::ChunkData(rest) if buffered > 0 => {
                    let data = Self::take(conn, rest);
                    let rest = rest - data.len() as u64;
                    this.decoder = if rest == 0 {
                        Decoder::ChunkEnd
                    } else {
                        Decoder::ChunkData(rest)
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoder::ChunkSize => {
                    if let Some(end) = find_crlf(&conn.read) {
                        let size = chunk_size(&conn.read[..end])?;
                        conn.read.advance(end + 2);
                        this.decoder = if size == 0 {
                            Decoder::Trailers
                        } else {
                            Decoder::ChunkData(size)
                        };
                        continue;
                    }
                    if buffered > MAX_CHUNK_LINE {
                        return Poll::Ready(Some(Err(H1Error::Response(
                            "chunk size line too long".into(),
                        ))));
                    }
                }
                Decoder::ChunkEnd if buffered >= 2 => {
                    if &conn.read[..2] != b"\r\n" {
                        return Poll::Ready(Some(Err(H1Error::Response(
                            "chunk data not followed by CRLF".into(),
                        ))));
                    }
                    conn.read.advance(2);
                    this.decoder = Decoder::ChunkSize;
                    continue;
                }
                Decoder::Trailers if buffered > 0 => {
                    if let Some(trailers) = trailers(&mut conn.read)? {
                        this.finish();
                        return match trailers {
                            Some(t) => Poll::Ready(Some(Ok(Frame::trailers(t)))),
                            None => Poll::Ready(None),
                        };
                    }
                    if buffered > MAX_TRAILERS {
                        return Poll::Ready(Some(Err(H1Error::Response(
                            "trailer section too large".into(),
                        ))));
                    }
                }
                _ => {}
            }
            // More bytes are needed. Body bytes of an HBONE stream come as h2 received them
            // (no copy into the read buffer); what lies past the body is buffered.
            let direct = matches!(this.decoder, Decoder::Length(_) | Decoder::UntilClose);
            let read = match direct.then(|| conn.poll_recv_direct(cx)).flatten() {
                Some(polled) => match ready!(polled)? {
                    Some(mut data) => {
                        if let Decoder::Length(rest) = this.decoder {
                            if data.len() as u64 > rest {
                                conn.read.extend_from_slice(&data[rest as usize..]);
                                data.truncate(rest as usize);
                            }
                            let rest = rest - data.len() as u64;
                            this.decoder = Decoder::Length(rest);
                            if rest == 0 {
                                this.finish();
                            }
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    // The stream ended.
                    None => 0,
                },
                None => ready!(conn.poll_fill(cx))?,
            };
            if read == 0 {
                if this.decoder == Decoder::UntilClose {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                this.conn = None;
                return Poll::Ready(Some(Err(H1Error::Response(
                    "the endpoint closed the connection before the response body ended".into(),
                ))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decoder, Decoder::Done | Decoder::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Length(n) => SizeHint::with_exact(n),
            Decoder::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// A chunk-size line's size (extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let digits = line.split(|b| *b == b';').next().unwrap_or_default();
    let digits = std::str::from_utf8(digits)
        .ok()
        .map(|d| d.trim_matches(|c| c == ' ' || c == '\t'))
        .filter(|d| !d.is_empty() && d.len() <= 16);
    digits
        .and_then(|d| u64::from_str_radix(d, 16).ok())
        .ok_or_else(|| H1Error::Response("invalid chunk size".into()))
}

/// The trailer section, once complete: taken off the buffer, `Some(None)` when empty.
fn trailers(buf: &mut bytes::BytesMut) -> Result<Option<Option<HeaderMap>>, H1Error> {
    let mut parsed = [httparse::EMPTY_HEADER; super::head::MAX_HEADERS];
    match httparse::parse_headers(buf, &mut parsed) {
        Ok(httparse::Status::Complete((len, headers))) => {
            let map = if headers.is_empty() {
                None
            } else {
                let mut map = HeaderMap::with_capacity(headers.len());
                for h in headers {
                    let name = http::HeaderName::from_bytes(h.name.as_bytes())
                        .map_err(|_| H1Error::Response("invalid trailer name".into()))?;
                    let value = http::HeaderValue::from_bytes(h.value)
                        .map_err(|_| H1Error::Response("invalid trailer value".into()))?;
                    map.append(name, value);
                }
                Some(map)
            };
            buf.advance(len);
            Ok(Some(map))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(H1Error::Response(format!("invalid trailers: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_hex_with_extensions_ignored() {
        assert_eq!(chunk_size(b"1a").unwrap(), 26);
        assert_eq!(chunk_size(b"0;name=value").unwrap(), 0);
        assert!(chunk_size(b"").is_err());
        assert!(chunk_size(b"zz").is_err());
        assert!(
            chunk_size(b"11111111111111111").is_err(),
            "more than 64 bits"
        );
    }

    #[test]
    fn an_empty_trailer_section_is_none() {
        let mut buf = bytes::BytesMut::from(&b"\r\nrest"[..]);
        assert_eq!(trailers(&mut buf).unwrap(), Some(None));
        assert_eq!(&buf[..], b"rest");
        let mut buf = bytes::BytesMut::from(&b"grpc-status: 0\r\n"[..]);
        assert_eq!(trailers(&mut buf).unwrap(), None, "incomplete");
        buf.extend_from_slice(b"\r\n");
        let t = trailers(&mut buf).unwrap().unwrap().unwrap();
        assert_eq!(t["grpc-status"], "0");
    }
}
