//! Reading a request head, for the requests this server takes itself: HTTP/1.1 with no
//! body or a single `Content-Length`, and nothing that changes the connection (no
//! `Transfer-Encoding`, `Expect`, `Upgrade`, `TE`, no `CONNECT`). Anything else, malformed
//! input included, is left to hyper, which then serves the rest of the connection (its
//! errors and limits apply unchanged).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

/// Most headers a request head may carry (hyper's default limit).
const MAX_HEADERS: usize = 100;
/// A partial head longer than this goes to hyper, which applies its own limit (431).
pub(super) const MAX_PLAIN_HEAD: usize = 64 << 10;
/// Longest request target taken here (hyper answers 414 above its own limit).
const MAX_URI: usize = 8 << 10;

/// What the front of the received bytes holds.
// Moved once per request; boxing the head would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
pub(super) enum Parsed {
    /// A complete plain request head.
    Plain(Plain),
    /// Not a whole head yet.
    Partial,
    /// Something for hyper: another version, a body framing or header this server does
    /// not take, or malformed input.
    Other,
}

/// A plain request head, taken off the front of the buffer.
pub(super) struct Plain {
    /// The request, its body still to be attached.
    pub request: Request<()>,
    /// The body's length (`Content-Length`, 0 without one).
    pub body_len: u64,
    /// Whether the client keeps the connection after this request (no `Connection: close`).
    pub keep_alive: bool,
    /// Bytes of `buf` the head took.
    pub head_len: usize,
}

/// Parses the request head at the front of `buf`. Header values and the target are slices
/// of `buf` (no copy); `headers` (a recycled map, empty) receives the headers.
pub(super) fn parse(buf: &Bytes, mut headers: HeaderMap) -> Parsed {
    let mut parsed =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut req,
        buf,
        &mut parsed,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_PLAIN_HEAD => return Parsed::Partial,
        Ok(httparse::Status::Partial) | Err(_) => return Parsed::Other,
    };
    if req.version != Some(1) {
        return Parsed::Other;
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parsed::Other;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Other;
    };
    if method == Method::CONNECT || path.len() > MAX_URI {
        return Parsed::Other;
    }
    let Ok(uri) = Uri::from_maybe_shared(buf.slice_ref(path.as_bytes())) else {
        return Parsed::Other;
    };
    let mut body_len = None;
    let mut keep_alive = true;
    headers.reserve(req.headers.len());
    for h in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Parsed::Other;
        };
        match name {
            header::TRANSFER_ENCODING | header::EXPECT | header::UPGRADE | header::TE => {
                return Parsed::Other
            }
            header::CONTENT_LENGTH => match (body_len, digits(h.value)) {
                (None, Some(n)) => body_len = Some(n),
                _ => return Parsed::Other,
            },
            header::CONNECTION => {
                for token in h.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        return Parsed::Other;
                    }
                }
            }
            _ => {}
        }
        let Ok(value) = HeaderValue::from_maybe_shared(buf.slice_ref(h.value)) else {
            return Parsed::Other;
        };
        headers.append(name, value);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Parsed::Plain(Plain {
        request,
        body_len: body_len.unwrap_or(0),
        keep_alive,
        head_len,
    })
}

/// A `Content-Length` value of digits only (anything else, a list included, is hyper's to
/// judge; a response's value that is not is not written).
pub(super) fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(raw: &'static [u8]) -> Plain {
        match parse(&Bytes::from_static(raw), HeaderMap::new()) {
            Parsed::Plain(p) => p,
            Parsed::Partial => panic!("partial"),
            Parsed::Other => panic!("other"),
        }
    }

    fn is_other(raw: &'static [u8]) -> bool {
        matches!(
            parse(&Bytes::from_static(raw), HeaderMap::new()),
            Parsed::Other
        )
    }

    #[test]
    fn a_plain_get_and_a_post_with_a_length() {
        let p = plain(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Y: z\r\n\r\nrest");
        assert_eq!(p.request.method(), Method::GET);
        assert_eq!(p.request.uri(), "/a?b=1");
        assert_eq!(p.request.headers()["x-y"], "z");
        assert_eq!((p.body_len, p.keep_alive, p.head_len), (0, true, 40));
        let p =
            plain(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 12\r\nconnection: Close\r\n\r\n");
        assert_eq!((p.body_len, p.keep_alive), (12, false));
    }

    #[test]
    fn an_incomplete_head_waits_for_more() {
        let r = parse(
            &Bytes::from_static(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            HeaderMap::new(),
        );
        assert!(matches!(r, Parsed::Partial));
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        assert!(is_other(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"));
        assert!(is_other(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        assert!(is_other(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"
        ));
        assert!(is_other(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n"
        ));
        assert!(is_other(
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n"
        ));
        assert!(is_other(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        ));
        assert!(is_other(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\r\n"
        ));
        assert!(is_other(
            b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n"
        ));
        assert!(is_other(b"CONNECT x:1 HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(is_other(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(is_other(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"));
    }

    /// Hostile input: mutations of valid heads (bytes flipped, cut, duplicated, CR/LF and
    /// colons injected) never panic, and what is taken here is exactly what httparse reads
    /// as a whole HTTP/1.1 head with at most one digits-only Content-Length and none of the
    /// headers left to hyper. Bounded: 20,000 inputs from a fixed seed.
    #[test]
    fn mutated_heads_are_taken_only_when_plain() {
        use rand::{Rng, SeedableRng};
        let seeds: [&[u8]; 3] = [
            b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Y: z\r\n\r\n",
            b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 12\r\nconnection: close\r\n\r\nbody",
            b"PUT http://h/p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(22);
        let (mut plain, mut other) = (0, 0);
        for i in 0..20_000 {
            let mut raw = seeds[i % seeds.len()].to_vec();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..raw.len());
                match rng.gen_range(0..5) {
                    0 => raw[at] = rng.gen(),
                    1 => raw.truncate(at.max(1)),
                    2 => raw.insert(
                        at,
                        *[b'\r', b'\n', b':', b' ', b',']
                            .get(rng.gen_range(0..5))
                            .unwrap(),
                    ),
                    3 => {
                        let piece = raw[at..].iter().take(12).copied().collect::<Vec<_>>();
                        raw.splice(at..at, piece);
                    }
                    _ => raw[at] = raw[at].to_ascii_uppercase(),
                }
            }
            let buf = Bytes::from(raw);
            match parse(&buf, HeaderMap::new()) {
                Parsed::Plain(p) => {
                    plain += 1;
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut req = httparse::Request::new(&mut headers);
                    let status = req.parse(&buf).expect("httparse reads it too");
                    assert_eq!(status, httparse::Status::Complete(p.head_len), "{buf:?}");
                    assert_eq!(req.version, Some(1), "{buf:?}");
                    let lengths: Vec<&[u8]> = req
                        .headers
                        .iter()
                        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .map(|h| h.value)
                        .collect();
                    assert!(lengths.len() <= 1, "{buf:?}");
                    assert_eq!(
                        p.body_len,
                        lengths.first().map_or(0, |v| digits(v).unwrap())
                    );
                    for h in req.headers.iter() {
                        for name in ["transfer-encoding", "expect", "upgrade", "te"] {
                            assert!(!h.name.eq_ignore_ascii_case(name), "{buf:?}");
                        }
                    }
                    assert_eq!(p.request.headers().len(), req.headers.len());
                }
                Parsed::Partial => assert!(buf.len() <= MAX_PLAIN_HEAD),
                Parsed::Other => other += 1,
            }
        }
        // Both outcomes are exercised.
        assert!(
            plain > 1_000 && other > 1_000,
            "plain {plain}, other {other}"
        );
    }

    #[test]
    fn a_partial_head_past_the_limit_goes_to_hyper() {
        let mut raw = b"GET / HTTP/1.1\r\nx: ".to_vec();
        raw.resize(MAX_PLAIN_HEAD + 1, b'a');
        assert!(matches!(
            parse(&Bytes::from(raw), HeaderMap::new()),
            Parsed::Other
        ));
    }
}
