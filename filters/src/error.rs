//! The one place where proxy errors become HTTP responses.
//!
//! Every filter and the upstream client return [`ProxyError`]; the downstream session
//! turns it into a response with [`ProxyError::to_response`]. Each error records where it
//! came from and whether retrying the request elsewhere is safe.

use http::{Response, StatusCode};

use crate::body::{self, Body};

/// Why the proxy could not produce an upstream response.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request is malformed (for example a path with `%00`).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A JWT was present but did not verify.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// An AuthorizationPolicy denied the request.
    #[error("denied by {0}")]
    Denied(String),
    /// No route matched the request.
    #[error("no route matched {0}")]
    NoRoute(String),
    /// The chosen backend has no ready endpoints.
    #[error("no healthy upstream for {0}")]
    NoHealthyUpstream(String),
    /// The dynamic forward proxy could not resolve the request's host (Envoy's `DF`).
    #[error("DNS resolution of {0} failed")]
    DnsResolutionFailed(String),
    /// The dynamic forward proxy's DNS cache is full (Envoy answers 503 with no response
    /// flag).
    #[error("DNS cache overflow: {0}")]
    DnsCacheOverflow(String),
    /// The backend's circuit breaker is open: too many requests in flight (Envoy's `UO`).
    #[error("upstream overflow: {0}")]
    Overflow(String),
    /// Connecting (TCP, TLS or the HBONE CONNECT) to the endpoint failed.
    #[error("upstream connect to {endpoint} failed: {reason}")]
    UpstreamConnect {
        /// The endpoint address.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// Connecting to the endpoint took longer than the port's connect timeout (the
    /// cluster's `connect_timeout`, DestinationRule `connectionPool.tcp.connectTimeout`).
    #[error("upstream connect to {endpoint} timed out after {after:?}")]
    UpstreamConnectTimeout {
        /// The endpoint address.
        endpoint: String,
        /// The timeout.
        after: std::time::Duration,
    },
    /// The upstream connection failed or was reset after the request was sent.
    #[error("upstream {endpoint} reset: {reason}")]
    UpstreamReset {
        /// The endpoint address.
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// The upstream did not answer in time.
    #[error("upstream request timeout")]
    UpstreamTimeout,
    /// Nothing happened on the stream (no headers, no body data either way) for the
    /// connection manager's `stream_idle_timeout` before the response started (Envoy's
    /// `SI`, 408).
    #[error("stream idle timeout")]
    StreamIdleTimeout,
    /// The stream's maximum duration (the connection manager's
    /// `common_http_protocol_options.max_stream_duration`) ran out before the response
    /// started (Envoy: 408, details `max_duration_timeout`, no flag; gRPC
    /// `DEADLINE_EXCEEDED`).
    #[error("downstream duration timeout")]
    StreamMaxDuration,
    /// The matched rule has no usable backend (none, weight 0, or an invalid backendRef).
    #[error("no usable backend: {0}")]
    InvalidBackend(String),
    /// The configuration cannot serve this request (a bug or a bad snapshot).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// The HTTP status sent downstream for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Denied(_) => StatusCode::FORBIDDEN,
            ProxyError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::NoHealthyUpstream(_)
            | ProxyError::DnsResolutionFailed(_)
            | ProxyError::DnsCacheOverflow(_)
            | ProxyError::Overflow(_)
            | ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamConnectTimeout { .. }
            | ProxyError::UpstreamReset { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::StreamIdleTimeout | ProxyError::StreamMaxDuration => {
                StatusCode::REQUEST_TIMEOUT
            }
            ProxyError::InvalidBackend(_) | ProxyError::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// Envoy's response flag for this error, as access logs and metrics report it.
    pub fn response_flag(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "DPE",
            ProxyError::Denied(_) | ProxyError::Unauthenticated(_) => "-",
            ProxyError::NoRoute(_) => "NR",
            ProxyError::NoHealthyUpstream(_) => "UH",
            ProxyError::Overflow(_) => "UO",
            // Envoy's forward proxy answers without setting a flag.
            ProxyError::DnsCacheOverflow(_) => "-",
            ProxyError::DnsResolutionFailed(_) => "DF",
            ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamConnectTimeout { .. } => "UF",
            ProxyError::UpstreamReset { .. } => "UC",
            ProxyError::UpstreamTimeout => "UT",
            ProxyError::StreamIdleTimeout => "SI",
            ProxyError::StreamMaxDuration => "-",
            ProxyError::InvalidBackend(_) => "NC",
            ProxyError::Internal(_) => "DPE",
        }
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%` for this error.
    pub fn details(&self) -> std::borrow::Cow<'static, str> {
        match self {
            ProxyError::BadRequest(_) => "bad_request".into(),
            ProxyError::Unauthenticated(_) => "jwt_authn_access_denied".into(),
            ProxyError::Denied(policy) => {
                format!("rbac_access_denied_matched_policy[{policy}]").into()
            }
            ProxyError::NoRoute(_) => "route_not_found".into(),
            ProxyError::NoHealthyUpstream(_) => "no_healthy_upstream".into(),
            ProxyError::Overflow(_) => "overflow".into(),
            ProxyError::DnsResolutionFailed(_) => "dns_resolution_failure".into(),
            ProxyError::DnsCacheOverflow(_) => "dns_cache_overflow".into(),
            ProxyError::UpstreamConnect { .. } => {
                "upstream_reset_before_response_started{connection_failure}".into()
            }
            ProxyError::UpstreamConnectTimeout { .. } => {
                "upstream_reset_before_response_started{connection_timeout}".into()
            }
            ProxyError::UpstreamReset { .. } => {
                "upstream_reset_before_response_started{connection_termination}".into()
            }
            ProxyError::UpstreamTimeout => "response_timeout".into(),
            ProxyError::StreamIdleTimeout => "stream_idle_timeout".into(),
            ProxyError::StreamMaxDuration => "max_duration_timeout".into(),
            ProxyError::InvalidBackend(_) => "cluster_not_found".into(),
            ProxyError::Internal(_) => "internal_error".into(),
        }
    }

    /// Whether the request can safely be retried on another connection: true only when
    /// the upstream never saw it.
    pub fn is_retry_safe(&self) -> bool {
        self.is_connect_failure()
    }

    /// Whether connecting to the endpoint failed or timed out (retry policy
    /// `connect-failure`; a local-origin failure for outlier detection).
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamConnectTimeout { .. }
        )
    }

    /// The response sent downstream. The body is Envoy's short text for the condition.
    pub fn to_response(&self) -> Response<Body> {
        let text = match self {
            ProxyError::BadRequest(_) => "Bad Request".to_string(),
            ProxyError::Denied(_) => "RBAC: access denied".to_string(),
            ProxyError::Unauthenticated(e) => e
                .split(':')
                .next()
                .unwrap_or("Jwt verification fails")
                .to_string(),
            ProxyError::NoRoute(_) => "route not found".to_string(),
            ProxyError::NoHealthyUpstream(_) => "no healthy upstream".to_string(),
            ProxyError::DnsResolutionFailed(_) => "DNS resolution failure".to_string(),
            ProxyError::DnsCacheOverflow(_) => "DNS cache overflow".to_string(),
            ProxyError::Overflow(_) => {
                "upstream connect error or disconnect/reset before headers. reset reason: overflow"
                    .to_string()
            }
            ProxyError::UpstreamConnect { reason, .. } => {
                format!("upstream connect error or disconnect/reset before headers. reset reason: connection failure, transport failure reason: {reason}")
            }
            ProxyError::UpstreamConnectTimeout { .. } => {
                "upstream connect error or disconnect/reset before headers. reset reason: connection timeout".to_string()
            }
            ProxyError::UpstreamReset { reason, .. } => {
                format!("upstream connect error or disconnect/reset before headers. reset reason: {reason}")
            }
            ProxyError::UpstreamTimeout => "upstream request timeout".to_string(),
            ProxyError::StreamIdleTimeout => "stream timeout".to_string(),
            ProxyError::StreamMaxDuration => "downstream duration timeout".to_string(),
            ProxyError::InvalidBackend(_) => "no usable backend".to_string(),
            ProxyError::Internal(_) => "internal error".to_string(),
        };
        let mut resp = Response::new(body::full(text));
        *resp.status_mut() = self.status();
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        resp.extensions_mut()
            .insert(ResponseFlag(self.response_flag()));
        resp
    }
}

/// The gRPC status Envoy gives a local reply with this HTTP status (its HTTP-to-gRPC
/// mapping, as used for gRPC requests).
pub fn grpc_status_for(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

impl ProxyError {
    /// The response for a gRPC request: a trailers-only reply (HTTP 200, `grpc-status`,
    /// `grpc-message`), as Envoy sends for gRPC requests it answers locally.
    pub fn to_grpc_response(&self) -> Response<Body> {
        let mut resp = Response::new(body::empty());
        let message = self.to_string().replace(['\r', '\n'], " ");
        let code = match self {
            // Envoy names the status for this one.
            ProxyError::StreamMaxDuration => 4, // DEADLINE_EXCEEDED
            _ => grpc_status_for(self.status()),
        };
        set_grpc_status(resp.headers_mut(), code, &message);
        resp.extensions_mut()
            .insert(ResponseFlag(self.response_flag()));
        resp
    }
}

/// Whether a request (by its headers) is gRPC: its content type is `application/grpc*`.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Makes `headers` a trailers-only gRPC answer: `application/grpc`, `grpc-status: code`
/// and, when it is a non-empty valid header value, `grpc-message`.
pub fn set_grpc_status(headers: &mut http::HeaderMap, code: u32, message: &str) {
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", http::HeaderValue::from(code));
    if let Some(v) = http::HeaderValue::from_str(message)
        .ok()
        .filter(|_| !message.is_empty())
    {
        headers.insert("grpc-message", v);
    }
}

/// Envoy-style response flag attached to locally generated responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseFlag(pub &'static str);

/// Envoy-style response code details of a response the proxy answered itself without an
/// error (`direct_response`, `fault_filter_abort`); upstream answers are `via_upstream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseDetails(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_errors_to_statuses_and_flags() {
        let e = ProxyError::NoHealthyUpstream("default/a:80".into());
        let r = e.to_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            r.extensions().get::<ResponseFlag>(),
            Some(&ResponseFlag("UH"))
        );
        assert_eq!(
            ProxyError::NoRoute("x".into()).status(),
            StatusCode::NOT_FOUND
        );
        assert!(ProxyError::UpstreamConnect {
            endpoint: "a".into(),
            reason: "refused".into()
        }
        .is_retry_safe());
        assert!(!ProxyError::UpstreamTimeout.is_retry_safe());
    }

    #[test]
    fn a_stream_over_its_maximum_duration_is_408_and_deadline_exceeded_for_grpc() {
        let e = ProxyError::StreamMaxDuration;
        assert_eq!(e.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(e.response_flag(), "-");
        assert_eq!(e.details(), "max_duration_timeout");
        let g = e.to_grpc_response();
        assert_eq!(g.headers()["grpc-status"], "4");
        assert_eq!(g.headers()["grpc-message"], "downstream duration timeout");
    }
}
