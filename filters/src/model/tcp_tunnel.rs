//! HTTP tunneling of a port's TCP traffic through a proxy at the endpoint: Envoy's TCP
//! proxy `tunneling_config`, which istiod writes from a DestinationRule's
//! `trafficPolicy.tunnel` (`tunnelingconfig.Apply`): the waypoint opens an HTTP `CONNECT`
//! (or `POST`) request to the chosen endpoint naming `hostname`, and once the proxy
//! accepts it relays the tunnel's bytes inside that request.

use serde::Serialize;

/// How a port's TCP tunnels are carried through an HTTP proxy at the endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpTunnel {
    /// The `host:port` the proxy is asked to reach (the request's authority / `Host`).
    pub hostname: String,
    /// The request method.
    pub method: TunnelMethod,
    /// Sent in HTTP/2 (the port's cluster has HTTP/2 protocol options, explicit or for the
    /// client's protocol), else HTTP/1.1.
    pub http2: bool,
}

/// The method of the tunneling request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelMethod {
    /// `CONNECT hostname` (DestinationRule `tunnel.protocol: CONNECT`, the default).
    Connect,
    /// `POST path` with the hostname as authority (DestinationRule `tunnel.protocol:
    /// POST`; Envoy's `use_post`, path `/` unless `post_path` says otherwise).
    Post {
        /// The request path.
        path: String,
    },
}

impl TcpTunnel {
    /// A tunnel to `host` port `port`, as istiod joins DestinationRule `targetHost` and
    /// `targetPort` (an IPv6 address in brackets).
    pub fn to(host: &str, port: u16, method: TunnelMethod) -> Self {
        let hostname = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Self {
            hostname,
            method,
            http2: false,
        }
    }

    /// This tunnel, in HTTP/2 when `http2`.
    pub fn over_http2(mut self, http2: bool) -> Self {
        self.http2 = http2;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_are_joined_as_an_authority() {
        assert_eq!(
            TcpTunnel::to("proxy.example", 3128, TunnelMethod::Connect).hostname,
            "proxy.example:3128"
        );
        assert_eq!(
            TcpTunnel::to("fd00::1", 443, TunnelMethod::Connect).hostname,
            "[fd00::1]:443"
        );
    }
}
