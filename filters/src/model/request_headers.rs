//! What the waypoint does to request headers before routing, as Envoy's connection
//! manager does with istiod's settings for the waypoint's `main_internal` listener
//! (`generate_request_id`, `forward_client_cert_details`, `use_remote_address: false`).

use serde::Serialize;

/// The connection manager's request-header settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RequestHeaders {
    /// Add an `x-request-id` (a random UUID) when the request has none (Envoy's
    /// `generate_request_id`, on by default; an existing one is kept).
    pub generate_request_id: bool,
    /// Remove `x-forwarded-client-cert` (Envoy's default `SANITIZE`); `false` forwards it
    /// (`FORWARD_ONLY`, `ALWAYS_FORWARD_ONLY`, and `APPEND_FORWARD` with nothing to append
    /// on the internal listener).
    pub sanitize_client_cert: bool,
}

impl Default for RequestHeaders {
    fn default() -> Self {
        Self {
            generate_request_id: true,
            sanitize_client_cert: true,
        }
    }
}

impl RequestHeaders {
    /// Applies the settings to `headers`: the request id, `x-forwarded-proto` (`http`
    /// when absent: the waypoint's internal listener is plaintext), and the client
    /// certificate header.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        if self.generate_request_id && !headers.contains_key(REQUEST_ID) {
            if let Ok(v) = http::HeaderValue::from_str(&request_id()) {
                headers.insert(REQUEST_ID, v);
            }
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

/// A random UUID-shaped request id (version 4 layout), as Envoy generates.
pub fn request_id() -> String {
    let b: [u8; 16] = rand::random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        8 | (b[8] & 3),
        &hex[17..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_keeps_and_sanitizes() {
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-client-cert", "By=spiffe://x".parse().unwrap());
        RequestHeaders::default().apply(&mut h);
        let id = h["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
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
        }
        .apply(&mut h);
        assert!(!h.contains_key("x-request-id"));
        assert!(h.contains_key("x-forwarded-client-cert"));
    }
}
