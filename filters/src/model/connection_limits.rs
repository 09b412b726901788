//! Limits on each upstream HTTP connection of a Service port.

use serde::Serialize;

/// How long and how much an upstream HTTP connection to a port's endpoints is used
/// (DestinationRule `connectionPool`: `http.idleTimeout`, `http.maxRequestsPerConnection`,
/// `tcp.maxConnectionDuration`; the cluster's `common_http_protocol_options`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
pub struct ConnectionLimits {
    /// Closed after this long without a request (instead of the pool's 60 s).
    pub idle_timeout: Option<std::time::Duration>,
    /// Closed after this many requests (1 turns keep-alive off).
    pub max_requests: Option<u32>,
    /// Not used for new requests after this long since it opened.
    pub max_duration: Option<std::time::Duration>,
}

impl ConnectionLimits {
    /// Whether any limit is set.
    pub fn is_set(&self) -> bool {
        *self != Self::default()
    }
}
