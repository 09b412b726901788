//! What the waypoint does to request headers before routing, as Envoy's connection
//! manager does with istiod's settings for the waypoint's `main_internal` listener
//! (`generate_request_id`, `forward_client_cert_details`, `use_remote_address: false`),
//! and the connection-level settings of the same connection manager (HTTP/1.0,
//! `common_http_protocol_options.idle_timeout`).

use serde::Serialize;

/// The connection manager's request-header, per-stream and per-connection settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestHeaders {
    /// Add an `x-request-id` (a random UUID) when the request has none (Envoy's
    /// `generate_request_id`, on by default; an existing one is kept).
    pub generate_request_id: bool,
    /// Remove `x-forwarded-client-cert` (Envoy's default `SANITIZE`); `false` forwards it
    /// (`FORWARD_ONLY`, `ALWAYS_FORWARD_ONLY`, and `APPEND_FORWARD` with nothing to append
    /// on the internal listener).
    pub sanitize_client_cert: bool,
    /// Envoy's `stream_idle_timeout` (ProxyConfig `connectionSettings.httpStreamIdleTimeout`):
    /// a request with no activity (headers or body data either way) for this long is
    /// answered 408 (`SI`, `stream_idle_timeout`) before its response starts, reset after.
    /// `None` (istiod's `0s`) is no timeout.
    pub stream_idle_timeout: Option<std::time::Duration>,
    /// HTTP/1.1 header names keep the case the client wrote them in (ProxyConfig
    /// `proxyHeaders.preserveHttp1HeaderCase`; the connection manager's `preserve_case`
    /// header formatter): recorded as requests arrive, for upstream connections that
    /// write them so, and responses written back in the case the endpoint used.
    pub preserve_header_case: bool,
    /// HTTP/1.0 requests are served (Envoy's `http_protocol_options.accept_http_10`,
    /// istiod's `HTTP10` proxy metadata); without it they are answered `426 Upgrade
    /// Required` (details `low_version`), as Envoy answers them.
    pub accept_http_10: bool,
    /// The `Host` given to an HTTP/1.0 request that has none (Envoy's
    /// `default_host_for_http_10`; only with [`Self::accept_http_10`]). A valid header
    /// value: the translators check it.
    pub default_host_for_http_10: Option<String>,
    /// Envoy's `common_http_protocol_options.idle_timeout` of the connection manager
    /// (istiod: the `IDLE_TIMEOUT` proxy metadata, ProxyConfig
    /// `connectionSettings.httpIdleTimeout`): the HTTP connection inside a tunnel that has
    /// had no request in flight for this long is closed (HTTP/2: GOAWAY first). `None`
    /// (unset or `0s`) sets no bound of its own.
    pub idle_timeout: Option<std::time::Duration>,
    /// Envoy's `common_http_protocol_options.max_connection_duration` of the connection
    /// manager (ProxyConfig `connectionSettings.httpMaxConnectionDuration`): the HTTP
    /// connection inside a tunnel is drained this long after it began (HTTP/1.1: closed
    /// when idle, else after the response in flight, sent with `connection: close`;
    /// HTTP/2: GOAWAY), and closed at the end of Envoy's drain period (5 s) whatever is
    /// left. `None` is no limit.
    pub max_connection_duration: Option<std::time::Duration>,
    /// Envoy's `common_http_protocol_options.max_stream_duration` of the connection
    /// manager (ProxyConfig `connectionSettings.httpMaxStreamDuration`): a request still
    /// going this long after its headers arrived is answered 408 `downstream duration
    /// timeout` (details `max_duration_timeout`) before its response starts, reset after.
    /// `None` is no limit.
    pub max_stream_duration: Option<std::time::Duration>,
    /// What becomes of request headers whose names contain `_` (Envoy's
    /// `common_http_protocol_options.headers_with_underscores_action`, ProxyConfig
    /// `connectionSettings.httpHeadersWithUnderscoresAction`).
    pub underscore_headers: UnderscoreHeaders,
}

/// Envoy's `headers_with_underscores_action` for request headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum UnderscoreHeaders {
    /// Kept (Envoy's default).
    #[default]
    Allow,
    /// The request is refused: HTTP/1.1 with 400 and the connection closed, HTTP/2 with
    /// its stream reset.
    RejectRequest,
    /// Such headers are removed before anything reads the request.
    DropHeader,
}

impl UnderscoreHeaders {
    /// Whether `headers` has a name with `_` in it.
    pub fn any_in(headers: &http::HeaderMap) -> bool {
        headers.keys().any(|k| k.as_str().contains('_'))
    }

    /// Removes the headers whose names contain `_`; how many names went.
    pub fn drop_from(headers: &mut http::HeaderMap) -> usize {
        let names: Vec<http::HeaderName> = headers
            .keys()
            .filter(|k| k.as_str().contains('_'))
            .cloned()
            .collect();
        for n in &names {
            headers.remove(n);
        }
        names.len()
    }
}

impl Default for RequestHeaders {
    fn default() -> Self {
        Self {
            generate_request_id: true,
            sanitize_client_cert: true,
            stream_idle_timeout: None,
            preserve_header_case: false,
            accept_http_10: false,
            default_host_for_http_10: None,
            idle_timeout: None,
            max_connection_duration: None,
            max_stream_duration: None,
            underscore_headers: UnderscoreHeaders::Allow,
        }
    }
}

impl RequestHeaders {
    /// Applies the settings to `headers`: the request id, `x-forwarded-proto` (`http`
    /// when absent: the waypoint's internal listener is plaintext), and the client
    /// certificate header.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        if self.generate_request_id && !headers.contains_key(REQUEST_ID) {
            headers.insert(REQUEST_ID, request_id_value());
        }
        if !headers.contains_key(FORWARDED_PROTO) {
            headers.insert(FORWARDED_PROTO, http::HeaderValue::from_static("http"));
        }
        if self.sanitize_client_cert {
            headers.remove(CLIENT_CERT);
        }
    }
}

const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
const FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");
const CLIENT_CERT: http::HeaderName = http::HeaderName::from_static("x-forwarded-client-cert");

/// A random UUID (version 4), as Envoy generates for `x-request-id`, as ASCII bytes.
/// Written through a lookup table: it runs for every request without an id, and
/// formatting byte by byte cost several thousand instructions per request.
fn request_id_bytes() -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut out = [0u8; 36];
    let mut j = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[j] = b'-';
            j += 1;
        }
        out[j] = HEX[(byte >> 4) as usize];
        out[j + 1] = HEX[(byte & 0x0f) as usize];
        j += 2;
    }
    out
}

/// Ids cut from one block: one allocation per this many ids rather than one each. Small,
/// since a block lives as long as any of its ids (a request that lasts holds 576 bytes).
const IDS_PER_BLOCK: usize = 16;

/// A generated request id as a header value. The values share a per-thread block
/// ([`IDS_PER_BLOCK`] ids each), so generating one seldom allocates.
fn request_id_value() -> http::HeaderValue {
    thread_local! {
        static BLOCK: std::cell::RefCell<bytes::BytesMut> =
            std::cell::RefCell::new(bytes::BytesMut::new());
    }
    BLOCK.with(|block| {
        let mut block = block.borrow_mut();
        if block.capacity() < 36 {
            *block = bytes::BytesMut::with_capacity(36 * IDS_PER_BLOCK);
        }
        block.extend_from_slice(&request_id_bytes());
        http::HeaderValue::from_maybe_shared(block.split_to(36).freeze())
            .expect("a UUID is a valid header value")
    })
}

/// A random UUID (version 4) request id, as Envoy generates.
pub fn request_id() -> String {
    String::from_utf8_lossy(&request_id_bytes()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cut_from_one_block_are_distinct_uuids() {
        let ids: Vec<_> = (0..3 * IDS_PER_BLOCK).map(|_| request_id_value()).collect();
        let set: std::collections::HashSet<_> = ids.iter().map(|v| v.as_bytes()).collect();
        assert_eq!(set.len(), ids.len());
        for id in &ids {
            let s = id.to_str().unwrap();
            assert_eq!(s.len(), 36);
            assert_eq!(&s[14..15], "4", "version 4: {s}");
        }
    }

    #[test]
    fn generates_keeps_and_sanitizes() {
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-client-cert", "By=spiffe://x".parse().unwrap());
        RequestHeaders::default().apply(&mut h);
        let id = h["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_eq!(
            id.split('-').map(str::len).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(id.bytes().all(|c| c == b'-' || c.is_ascii_hexdigit()));
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-forwarded-client-cert"));
        // Present ones are kept.
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        RequestHeaders::default().apply(&mut h);
        assert_eq!(h["x-request-id"], id.as_str());
        assert_eq!(h["x-forwarded-proto"], "https");
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-client-cert", "By=spiffe://x".parse().unwrap());
        RequestHeaders {
            generate_request_id: false,
            sanitize_client_cert: false,
            ..Default::default()
        }
        .apply(&mut h);
        assert!(!h.contains_key("x-request-id"));
        assert!(h.contains_key("x-forwarded-client-cert"));
    }

    #[test]
    fn finds_and_drops_names_with_underscores() {
        let mut h = http::HeaderMap::new();
        h.insert("x-ok", "1".parse().unwrap());
        assert!(!UnderscoreHeaders::any_in(&h));
        h.append("x_bad", "1".parse().unwrap());
        h.append("x_bad", "2".parse().unwrap());
        h.insert("other_one", "3".parse().unwrap());
        assert!(UnderscoreHeaders::any_in(&h));
        assert_eq!(UnderscoreHeaders::drop_from(&mut h), 2);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-ok"], "1");
    }
}
