//! Writing a response head for a plain HTTP/1.1 request, framed as hyper's server frames
//! it (so a connection answers the same whichever server took it): a body's own
//! `Content-Length` is kept, one of known size gets one, one of unknown size is chunked;
//! an empty body is `content-length: 0` (not on HEAD); HEAD, 204 and 304 carry no body;
//! `date` is added when absent; `connection: close` when the connection ends after it.

use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use http::header::{self, HeaderMap};
use http::{Method, StatusCode, Version};

/// The response body's size, as its `http_body` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodySize {
    /// Already over.
    Empty,
    /// Exactly this many bytes.
    Known(u64),
    /// Unknown.
    Unknown,
}

/// How the body goes on the wire after the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// Exactly this many bytes (0: none).
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Written as it comes; the connection's close ends it (an HTTP/1.0 response of
    /// unknown size).
    Close,
}

/// A head ready to send: the body's framing, and whether the connection ends after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Head {
    pub framing: Framing,
    pub last: bool,
}

/// A response hyper's server would refuse to write (the connection is closed instead).
#[derive(Debug, thiserror::Error)]
#[error("response not writable: {0}")]
pub(super) struct Unwritable(&'static str);

/// Writes the status line and headers of a response to `method` into `dst`. `keep_alive`
/// is whether the connection may serve another request after this one.
#[allow(clippy::too_many_arguments)]
pub(super) fn head(
    dst: &mut BytesMut,
    method: &Method,
    version: Version,
    status: StatusCode,
    reason: Option<&[u8]>,
    headers: &HeaderMap,
    body: BodySize,
    keep_alive: bool,
) -> Result<Head, Unwritable> {
    if status.is_informational() {
        return Err(Unwritable("1xx status"));
    }
    let head_req = *method == Method::HEAD;
    let bodiless = matches!(status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let can_body = !head_req && !bodiless;
    // The response's own version is written (hyper's rule): an HTTP/1.0 endpoint's answer
    // goes out as HTTP/1.0, without chunking.
    let v10 = version == Version::HTTP_10;
    let can_chunk = can_body && !v10;
    match (status, reason, v10) {
        (StatusCode::OK, None, false) => dst.extend_from_slice(b"HTTP/1.1 200 OK\r\n"),
        _ => {
            dst.extend_from_slice(if v10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
            dst.extend_from_slice(status.as_str().as_bytes());
            dst.extend_from_slice(b" ");
            let canonical = status.canonical_reason().unwrap_or("<none>").as_bytes();
            dst.extend_from_slice(reason.unwrap_or(canonical));
            dst.extend_from_slice(b"\r\n");
        }
    }
    let mut framing = None;
    let mut last = !keep_alive;
    let mut wrote_date = false;
    let mut wrote_close = false;
    // Headers whose values hyper joins on one line.
    let joined = |dst: &mut BytesMut, name: &'static [u8], values: header::GetAll<'_, _>| {
        dst.extend_from_slice(name);
        for (i, v) in values.into_iter().enumerate() {
            if i > 0 {
                dst.extend_from_slice(b", ");
            }
            dst.extend_from_slice(http::HeaderValue::as_bytes(v));
        }
    };
    for name in headers.keys() {
        match *name {
            header::CONTENT_LENGTH => {
                let value = &headers[name];
                if framing == Some(Framing::Chunked) {
                    return Err(Unwritable("content-length after transfer-encoding"));
                }
                match body {
                    BodySize::Empty if !head_req => continue,
                    BodySize::Empty => {}
                    BodySize::Known(n) => framing = Some(Framing::Length(n)),
                    BodySize::Unknown => {
                        let mut lens = headers
                            .get_all(name)
                            .iter()
                            .map(|v| super::parse::digits(v.as_bytes()));
                        let first = lens.next().flatten().ok_or(Unwritable("content-length"))?;
                        if lens.any(|l| l != Some(first)) {
                            return Err(Unwritable("several content-length values"));
                        }
                        framing = Some(Framing::Length(first));
                    }
                }
                dst.extend_from_slice(b"content-length: ");
                dst.extend_from_slice(value.as_bytes());
                dst.extend_from_slice(b"\r\n");
                continue;
            }
            header::TRANSFER_ENCODING => {
                if !can_chunk {
                    continue;
                }
                if framing.is_some() {
                    return Err(Unwritable("transfer-encoding after content-length"));
                }
                framing = Some(Framing::Chunked);
                joined(dst, b"transfer-encoding: ", headers.get_all(name));
                let chunked_last = headers
                    .get_all(name)
                    .iter()
                    .next_back()
                    .and_then(|v| v.as_bytes().rsplit(|b| *b == b',').next())
                    .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                dst.extend_from_slice(if chunked_last {
                    b"\r\n"
                } else {
                    b", chunked\r\n"
                });
                continue;
            }
            header::CONNECTION => {
                let close = headers
                    .get_all(name)
                    .iter()
                    .any(|v| has_close(v.as_bytes()));
                last |= close;
                wrote_close = close;
                joined(dst, b"connection: ", headers.get_all(name));
                if !keep_alive && !close {
                    dst.extend_from_slice(b", close");
                    wrote_close = true;
                }
                dst.extend_from_slice(b"\r\n");
                continue;
            }
            header::TRAILER => {
                if can_chunk {
                    joined(dst, b"trailer: ", headers.get_all(name));
                    dst.extend_from_slice(b"\r\n");
                }
                continue;
            }
            header::DATE => wrote_date = true,
            _ => {}
        }
        for value in headers.get_all(name) {
            dst.extend_from_slice(name.as_str().as_bytes());
            dst.extend_from_slice(b": ");
            dst.extend_from_slice(value.as_bytes());
            dst.extend_from_slice(b"\r\n");
        }
    }
    if !keep_alive && !wrote_close {
        dst.extend_from_slice(b"connection: close\r\n");
    }
    let framing = match framing {
        Some(f) => f,
        None => match body {
            BodySize::Unknown if can_chunk => {
                dst.extend_from_slice(b"transfer-encoding: chunked\r\n");
                Framing::Chunked
            }
            BodySize::Unknown if can_body => {
                last = true;
                Framing::Close
            }
            // Only for HEAD, 204 and 304, which carry no body anyway.
            BodySize::Unknown => Framing::Length(0),
            BodySize::Empty | BodySize::Known(0) => {
                if !head_req && !bodiless {
                    dst.extend_from_slice(b"content-length: 0\r\n");
                }
                Framing::Length(0)
            }
            BodySize::Known(n) => {
                if !bodiless {
                    dst.extend_from_slice(b"content-length: ");
                    dst.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    dst.extend_from_slice(b"\r\n");
                }
                Framing::Length(n)
            }
        },
    };
    let framing = if can_body {
        framing
    } else {
        Framing::Length(0)
    };
    if !wrote_date {
        dst.extend_from_slice(b"date: ");
        extend_date(dst);
        dst.extend_from_slice(b"\r\n");
    }
    dst.extend_from_slice(b"\r\n");
    Ok(Head { framing, last })
}

/// Whether a `Connection` value lists `close`.
fn has_close(value: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
}

thread_local! {
    /// The `date` value of the current second, formatted once per second and thread.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((0, [0; 29])) };
}

/// Appends the current time as an HTTP date (RFC 9110 5.6.7), at one-second resolution.
fn extend_date(dst: &mut BytesMut) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != now {
            let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(now));
            if text.len() == 29 {
                d.1.copy_from_slice(text.as_bytes());
                d.0 = now;
            }
        }
        dst.extend_from_slice(&d.1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(
        method: Method,
        status: u16,
        headers: &[(&str, &str)],
        body: BodySize,
        keep_alive: bool,
    ) -> (String, Head) {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let mut dst = BytesMut::new();
        let status = StatusCode::from_u16(status).unwrap();
        let head = head(
            &mut dst,
            &method,
            Version::HTTP_11,
            status,
            None,
            &map,
            body,
            keep_alive,
        )
        .unwrap();
        let text = String::from_utf8(dst.to_vec()).unwrap();
        // The date changes; its presence is checked, its value not.
        let (before, after) = text.split_once("date: ").expect("date header");
        (format!("{before}date: D\r\n\r\n"), assert_date(after, head))
    }

    fn assert_date(rest: &str, head: Head) -> Head {
        assert_eq!(rest.len(), 29 + 4, "{rest:?}");
        assert!(rest.ends_with(" GMT\r\n\r\n"), "{rest:?}");
        head
    }

    #[test]
    fn known_lengths_are_written_and_kept() {
        let (t, h) = write(Method::GET, 200, &[("x-a", "1")], BodySize::Known(5), true);
        assert_eq!(
            t,
            "HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\ndate: D\r\n\r\n"
        );
        assert_eq!(
            h,
            Head {
                framing: Framing::Length(5),
                last: false
            }
        );
        let (t, h) = write(
            Method::GET,
            404,
            &[("content-length", "7")],
            BodySize::Unknown,
            true,
        );
        assert_eq!(
            t,
            "HTTP/1.1 404 Not Found\r\ncontent-length: 7\r\ndate: D\r\n\r\n"
        );
        assert_eq!(h.framing, Framing::Length(7));
    }

    #[test]
    fn unknown_sizes_are_chunked_and_empty_bodies_say_zero() {
        let (t, h) = write(Method::GET, 200, &[], BodySize::Unknown, true);
        assert_eq!(
            t,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ndate: D\r\n\r\n"
        );
        assert_eq!(h.framing, Framing::Chunked);
        let (t, _) = write(
            Method::GET,
            503,
            &[("content-length", "0")],
            BodySize::Empty,
            true,
        );
        assert_eq!(
            t,
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\ndate: D\r\n\r\n"
        );
    }

    #[test]
    fn head_204_and_304_carry_no_body() {
        let (t, h) = write(
            Method::HEAD,
            200,
            &[("content-length", "9")],
            BodySize::Empty,
            true,
        );
        assert_eq!(t, "HTTP/1.1 200 OK\r\ncontent-length: 9\r\ndate: D\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(0));
        let (t, h) = write(Method::GET, 204, &[], BodySize::Unknown, true);
        assert_eq!(t, "HTTP/1.1 204 No Content\r\ndate: D\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(0));
    }

    #[test]
    fn a_closing_connection_says_so_once() {
        let (t, h) = write(Method::GET, 200, &[], BodySize::Known(0), false);
        assert_eq!(
            t,
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\ndate: D\r\n\r\n"
        );
        assert!(h.last);
        let (t, h) = write(
            Method::GET,
            400,
            &[("connection", "close")],
            BodySize::Known(0),
            true,
        );
        assert_eq!(
            t,
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: D\r\n\r\n"
        );
        assert!(h.last);
    }

    #[test]
    fn an_http_10_answer_goes_out_as_http_10_until_close() {
        let mut dst = BytesMut::new();
        let map = HeaderMap::new();
        let h = head(
            &mut dst,
            &Method::GET,
            Version::HTTP_10,
            StatusCode::OK,
            None,
            &map,
            BodySize::Unknown,
            true,
        )
        .unwrap();
        assert!(dst.starts_with(b"HTTP/1.0 200 OK\r\ndate: "), "{dst:?}");
        assert_eq!(
            h,
            Head {
                framing: Framing::Close,
                last: true
            }
        );
    }

    #[test]
    fn a_date_of_the_response_is_kept() {
        let mut map = HeaderMap::new();
        map.insert(
            header::DATE,
            "Tue, 01 Dec 2026 00:00:00 GMT".parse().unwrap(),
        );
        let mut dst = BytesMut::new();
        head(
            &mut dst,
            &Method::GET,
            Version::HTTP_11,
            StatusCode::OK,
            None,
            &map,
            BodySize::Empty,
            true,
        )
        .unwrap();
        assert_eq!(
            &dst[..],
            b"HTTP/1.1 200 OK\r\ndate: Tue, 01 Dec 2026 00:00:00 GMT\r\ncontent-length: 0\r\n\r\n"
        );
    }
}
