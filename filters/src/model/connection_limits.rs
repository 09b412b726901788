//! Limits on each upstream HTTP connection of a Service port.

use std::time::Duration;

use serde::Serialize;

/// How long and how much an upstream HTTP connection to a port's endpoints is used
/// (DestinationRule `connectionPool`: `http.idleTimeout`, `http.maxRequestsPerConnection`,
/// `tcp.maxConnectionDuration`, `http.maxConcurrentStreams`, `http.http2KeepAlive`,
/// `tcp.tcpKeepalive`, `tcp.connectTimeout`; the cluster's `common_http_protocol_options`,
/// its `http2_protocol_options`, `upstream_connection_options` and `connect_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
pub struct ConnectionLimits {
    /// How long opening a connection to an endpoint may take (TCP, and for a mesh pod
    /// the HBONE tunnel, then TLS originated inside it) before it fails as `UF`; `None`
    /// for [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Option<Duration>,
    /// Closed after this long without a request (instead of the pool's 60 s).
    pub idle_timeout: Option<Duration>,
    /// Closed after this many requests (1 turns keep-alive off).
    pub max_requests: Option<u32>,
    /// Not used for new requests after this long since it opened.
    pub max_duration: Option<Duration>,
    /// HTTP/2: at most this many streams at once on one connection; when every
    /// connection to the endpoint is at the limit, another is opened.
    pub max_concurrent_streams: Option<u32>,
    /// HTTP/2: PINGs that prove the connection alive.
    pub h2_keepalive: Option<H2Keepalive>,
    /// TCP keepalive on the waypoint's own sockets to the endpoints.
    pub tcp_keepalive: Option<TcpKeepalive>,
    /// HTTP/1.1: header names are written in the case the client used (ProxyConfig
    /// `proxyHeaders.preserveHttp1HeaderCase`; the cluster's `preserve_case` formatter),
    /// and the endpoint's response header case is kept.
    pub preserve_header_case: bool,
}

/// Istio's default connect timeout (MeshConfig `connectTimeout`), used when a port sets
/// none.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ConnectionLimits {
    /// Whether any limit is set.
    pub fn is_set(&self) -> bool {
        *self != Self::default()
    }

    /// The connect timeout of a port with these limits (or none).
    pub fn connect_timeout_of(limits: Option<&Self>) -> Duration {
        limits
            .and_then(|l| l.connect_timeout)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }
}

/// HTTP/2 connection keepalive (Envoy `KeepaliveSettings`, DestinationRule
/// `http2KeepAlive`): a PING every `interval`; a connection whose PING is not answered
/// within `timeout` is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct H2Keepalive {
    /// Time between PINGs.
    pub interval: Duration,
    /// How long a PING may go unanswered.
    pub timeout: Duration,
}

/// TCP keepalive (Envoy `TcpKeepalive`, DestinationRule `tcp.tcpKeepalive`): `SO_KEEPALIVE`
/// with the system's settings, each overridden when set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
pub struct TcpKeepalive {
    /// Idle time before the first probe.
    pub time: Option<Duration>,
    /// Time between probes.
    pub interval: Option<Duration>,
    /// Unanswered probes before the connection is dropped.
    pub probes: Option<u32>,
}
