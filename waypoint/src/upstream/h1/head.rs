//! Message heads: the request line and headers written to the endpoint, with the body's
//! framing, and the response head parsed from its bytes.
//!
//! Framing follows what hyper's client did here before (RFC 9112 6): a body that is
//! already over sends no framing headers of its own; a `Content-Length` or
//! `Transfer-Encoding` the request carries is respected; otherwise a body of known size
//! gets a `Content-Length`, and one of unknown size is chunked (GET, HEAD and CONNECT are
//! sent without a body instead).

use std::io::Write as _;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

use super::H1Error;

/// Most headers a response head may carry (hyper's limit, which applied before).
pub const MAX_HEADERS: usize = 100;
/// Most bytes a response head may take (hyper's read buffer limit, which applied before).
pub const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;

/// How the request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body bytes follow the head.
    Empty,
    /// Exactly this many bytes follow.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// Decides the request body's framing, adjusting the framing headers as hyper would:
/// `body_over` when the body has ended already, `exact` its size when known.
pub fn framing(
    method: &Method,
    headers: &mut HeaderMap,
    body_over: bool,
    exact: Option<u64>,
) -> Result<Framing, H1Error> {
    if body_over {
        headers.remove(header::TRANSFER_ENCODING);
        return Ok(Framing::Empty);
    }
    if let Some(te) = headers.get(header::TRANSFER_ENCODING) {
        if !is_chunked(te) {
            return Err(H1Error::Request(
                "the request's transfer-encoding does not end in chunked".into(),
            ));
        }
        headers.remove(header::CONTENT_LENGTH);
        return Ok(Framing::Chunked);
    }
    if let Some(len) = content_length(headers).map_err(H1Error::Request)? {
        return Ok(Framing::Length(len));
    }
    match exact {
        Some(len) => {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            Ok(Framing::Length(len))
        }
        None if matches!(*method, Method::GET | Method::HEAD | Method::CONNECT) => {
            Ok(Framing::Empty)
        }
        None => {
            headers.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            );
            Ok(Framing::Chunked)
        }
    }
}

/// Writes the request line and headers into `out`.
pub fn encode_request(out: &mut Vec<u8>, method: &Method, uri: &http::Uri, headers: &HeaderMap) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    match uri.path_and_query() {
        // Origin form, as the chain passes requests on: no formatting needed.
        Some(pq) if uri.authority().is_none() => out.extend_from_slice(pq.as_str().as_bytes()),
        _ => {
            let _ = write!(out, "{uri}");
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
}

/// Where one header's name and value sit in a head: byte ranges.
pub type Spot = (usize, usize, usize, usize);

/// Parses one response head from the front of `buf`, taking its bytes off: `None` while
/// the head is incomplete. Header values share the head's bytes (no copy); names are
/// copied only when they are not standard ones. `headers` is reused for the result, and
/// `spots` (kept by the connection) records where the headers sit, so nothing the size of
/// the header limit is zeroed per response.
pub fn parse_response(
    buf: &mut BytesMut,
    mut headers: HeaderMap,
    spots: &mut Vec<Spot>,
) -> Result<Option<ResponseHead>, H1Error> {
    let mut parsed =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut parsed,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(H1Error::Response("the response head is too large".into()))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(H1Error::Response(format!("invalid response head: {e}"))),
    };
    let status = StatusCode::from_u16(res.code.unwrap_or_default())
        .map_err(|_| H1Error::Response("invalid status code".into()))?;
    let version = match res.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Where each header sits in the head, so the values can be cut from it once it is
    // taken off the buffer.
    let base = buf.as_ptr() as usize;
    spots.clear();
    spots.extend(res.headers.iter().map(|h| {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        (name, name + h.name.len(), value, value + h.value.len())
    }));
    let head: Bytes = buf.split_to(len).freeze();
    headers.clear();
    headers.reserve(spots.len());
    for &(ns, ne, vs, ve) in spots.iter() {
        let name = HeaderName::from_bytes(&head[ns..ne])
            .map_err(|_| H1Error::Response("invalid header name".into()))?;
        // Checked, not copied: a `Bytes` is kept as it is.
        let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
            .map_err(|_| H1Error::Response(format!("invalid value of header {name}")))?;
        headers.append(name, value);
    }
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
    }))
}

/// How a response body is delimited (RFC 9112 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked.
    Chunked,
    /// Until the connection closes.
    UntilClose,
}

/// The response body's length, from the request's method and the response head.
pub fn response_length(method: &Method, head: &ResponseHead) -> Result<BodyLength, H1Error> {
    if *method == Method::HEAD
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED
    {
        return Ok(BodyLength::Empty);
    }
    if let Some(te) = head.headers.get(header::TRANSFER_ENCODING) {
        if head.version == Version::HTTP_11 && is_chunked(te) {
            return Ok(BodyLength::Chunked);
        }
        return Ok(BodyLength::UntilClose);
    }
    match content_length(&head.headers).map_err(H1Error::Response)? {
        Some(0) => Ok(BodyLength::Empty),
        Some(len) => Ok(BodyLength::Length(len)),
        None => Ok(BodyLength::UntilClose),
    }
}

/// Whether the connection may carry another request after this response.
pub fn keeps_alive(request_headers: &HeaderMap, head: &ResponseHead) -> bool {
    let says = |headers: &HeaderMap, token: &str| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if says(request_headers, "close") || says(&head.headers, "close") {
        return false;
    }
    head.version == Version::HTTP_11 || says(&head.headers, "keep-alive")
}

/// Whether a `Transfer-Encoding` value ends in `chunked`.
fn is_chunked(te: &HeaderValue) -> bool {
    te.to_str()
        .ok()
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
}

/// The `Content-Length`, when present; several must agree. The error says what is wrong;
/// the caller says whose message it was.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, String> {
    let mut found = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        for part in v.to_str().unwrap_or("x").split(',') {
            let n: u64 = part
                .trim()
                .parse()
                .map_err(|_| format!("invalid content-length {v:?}"))?;
            if found.is_some_and(|f| f != n) {
                return Err("conflicting content-length values".into());
            }
            found = Some(n);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_of_unknown_size_is_chunked_except_on_get() {
        let mut h = HeaderMap::new();
        assert_eq!(
            framing(&Method::POST, &mut h, false, None).unwrap(),
            Framing::Chunked
        );
        assert_eq!(h["transfer-encoding"], "chunked");
        let mut h = HeaderMap::new();
        assert_eq!(
            framing(&Method::GET, &mut h, false, None).unwrap(),
            Framing::Empty
        );
        assert!(h.is_empty());
    }

    #[test]
    fn a_known_size_becomes_content_length_and_a_given_one_is_kept() {
        let mut h = HeaderMap::new();
        assert_eq!(
            framing(&Method::PUT, &mut h, false, Some(5)).unwrap(),
            Framing::Length(5)
        );
        assert_eq!(h["content-length"], "5");
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("7"));
        assert_eq!(
            framing(&Method::PUT, &mut h, false, Some(5)).unwrap(),
            Framing::Length(7)
        );
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("0"));
        assert_eq!(
            framing(&Method::POST, &mut h, true, None).unwrap(),
            Framing::Empty
        );
        assert_eq!(h["content-length"], "0", "kept as the client sent it");
    }

    #[test]
    fn the_request_line_is_origin_form() {
        let mut out = Vec::new();
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("echo"));
        encode_request(&mut out, &Method::GET, &"/a?b=c".parse().unwrap(), &h);
        assert_eq!(out, b"GET /a?b=c HTTP/1.1\r\nhost: echo\r\n\r\n");
    }

    #[test]
    fn a_head_is_parsed_in_pieces_and_values_share_its_bytes() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nx-a: b"[..]);
        assert!(parse_response(&mut buf, HeaderMap::new(), &mut Vec::new())
            .unwrap()
            .is_none());
        buf.extend_from_slice(b"\r\n\r\nabc");
        let head = parse_response(&mut buf, HeaderMap::new(), &mut Vec::new())
            .unwrap()
            .unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.headers["x-a"], "b");
        assert_eq!(&buf[..], b"abc");
        assert_eq!(
            response_length(&Method::GET, &head).unwrap(),
            BodyLength::Length(3)
        );
        assert_eq!(
            response_length(&Method::HEAD, &head).unwrap(),
            BodyLength::Empty
        );
    }

    #[test]
    fn bad_heads_are_refused_by_what_is_wrong() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 2000 OK\r\n\r\n"[..]);
        assert!(parse_response(&mut buf, HeaderMap::new(), &mut Vec::new()).is_err());
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"[..],
        );
        let head = parse_response(&mut buf, HeaderMap::new(), &mut Vec::new())
            .unwrap()
            .unwrap();
        let e = response_length(&Method::GET, &head).unwrap_err();
        assert!(e.to_string().contains("conflicting"), "{e}");
    }

    #[test]
    fn keep_alive_follows_version_and_connection_headers() {
        let head = |v: Version, conn: Option<&'static str>| {
            let mut headers = HeaderMap::new();
            if let Some(c) = conn {
                headers.insert("connection", HeaderValue::from_static(c));
            }
            ResponseHead {
                status: StatusCode::OK,
                version: v,
                headers,
            }
        };
        let none = HeaderMap::new();
        assert!(keeps_alive(&none, &head(Version::HTTP_11, None)));
        assert!(!keeps_alive(&none, &head(Version::HTTP_11, Some("close"))));
        assert!(!keeps_alive(&none, &head(Version::HTTP_10, None)));
        assert!(keeps_alive(
            &none,
            &head(Version::HTTP_10, Some("keep-alive"))
        ));
    }
}
