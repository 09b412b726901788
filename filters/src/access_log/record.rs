//! The facts about one finished request that access logs (and traces) report.

use std::time::{Duration, SystemTime};

use http::HeaderMap;

/// One finished HTTP request, as the access log sees it.
#[derive(Debug, Clone)]
pub struct HttpRecord {
    /// When the request headers arrived.
    pub start: SystemTime,
    /// Request method.
    pub method: String,
    /// The path (with query) the client sent, before any rewrite.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// The request headers as received.
    pub request_headers: HeaderMap,
    /// The response headers as sent.
    pub response_headers: HeaderMap,
    /// Status sent downstream.
    pub code: u16,
    /// Envoy response flags (`-` when none).
    pub flags: &'static str,
    /// Why the response is what it is (Envoy's `%RESPONSE_CODE_DETAILS%`).
    pub details: String,
    /// gRPC status of a gRPC request that got one.
    pub grpc_status: Option<u16>,
    /// Request body bytes received.
    pub bytes_received: u64,
    /// Request headers and body.
    pub request_total: u64,
    /// Response headers and body.
    pub response_total: u64,
    /// Response body bytes sent.
    pub bytes_sent: u64,
    /// Until the last response byte.
    pub duration: Duration,
    /// Time the upstream took to answer.
    pub upstream_service_time: Option<Duration>,
    /// `podIP:port` of the upstream.
    pub upstream_host: Option<String>,
    /// Envoy-style cluster name: `inbound-vip|<port>|http|<host>`.
    pub upstream_cluster: Option<String>,
    /// The CONNECT authority (`VIP:port`).
    pub downstream_local_address: String,
    /// The source (`forwarded` for, else the peer address).
    pub downstream_remote_address: String,
    /// `namespace/name` of the matched route.
    pub route_name: Option<String>,
    /// Why the connection to the upstream failed, when it did (Envoy's
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`).
    pub upstream_failure: Option<String>,
}
