//! How long a TCP tunnel to a port may last: Envoy's TCP proxy `idle_timeout` and
//! `max_downstream_connection_duration`, which istiod writes from a DestinationRule's
//! `connectionPool.tcp.idleTimeout` and `connectionPool.tcp.maxConnectionDuration`.

use std::time::Duration;

use serde::Serialize;

/// Time limits on the TCP tunnels to one Service port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TcpLimits {
    /// The tunnel is closed, both ways, once no byte has crossed it in either direction
    /// for this long; `None` for no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Duration>,
    /// The tunnel is closed this long after it was accepted, whatever its traffic;
    /// `None` for no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<Duration>,
}

impl TcpLimits {
    /// Whether any limit is set.
    pub fn is_set(&self) -> bool {
        self.idle_timeout.is_some() || self.max_duration.is_some()
    }

    /// Whether no limit is set.
    pub fn is_unset(&self) -> bool {
        !self.is_set()
    }
}
