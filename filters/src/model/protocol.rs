use serde::Serialize;

/// The application protocol of a service port, which decides how a tunnel is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP (upstream HTTP/1.1, whatever the client speaks, as Istio's `http` ports).
    Http,
    /// HTTP/2 (h2c); gRPC included.
    Http2,
    /// gRPC over HTTP/2.
    Grpc,
    /// Opaque TCP: bytes are copied, no L7 processing.
    Tcp,
    /// Not declared: the first bytes of the tunnel decide (HTTP/1, h2c preface, else TCP).
    Unknown,
}

impl Protocol {
    /// Resolves a port's protocol the way Istio does: `appProtocol` first, then the
    /// port name prefix (`http-web`, `grpc`, `tcp-db`, ...).
    pub fn resolve(app_protocol: Option<&str>, port_name: Option<&str>) -> Protocol {
        if let Some(p) = app_protocol.and_then(Self::from_name) {
            return p;
        }
        port_name
            .and_then(|name| Self::from_name(name.split('-').next().unwrap_or(name)))
            .unwrap_or(Protocol::Unknown)
    }

    fn from_name(name: &str) -> Option<Protocol> {
        match name.to_ascii_lowercase().as_str() {
            "http" | "kubernetes.io/ws" | "kubernetes.io/wss" => Some(Protocol::Http),
            "http2" | "h2c" | "kubernetes.io/h2c" => Some(Protocol::Http2),
            "grpc" | "grpc-web" => Some(Protocol::Grpc),
            // TLS and the database protocols are opaque to a waypoint.
            "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => Some(Protocol::Tcp),
            _ => None,
        }
    }

    /// Whether requests on this port are handled as HTTP.
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    /// Whether the upstream should be spoken to in HTTP/2 regardless of the client.
    pub fn prefers_h2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

/// The HTTP version requests are sent upstream in (Envoy's cluster
/// `HttpProtocolOptions`; istiod's `setUpstreamProtocol`: HTTP/2 for `http2`/`grpc` ports,
/// HTTP/1.1 for `http` ports, the client's for ports of unknown protocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// Always HTTP/1.1.
    Http1,
    /// Always HTTP/2.
    Http2,
    /// The client's.
    Downstream,
}

impl UpstreamProtocol {
    /// istiod's choice for a port of `protocol` with no further settings.
    pub fn for_port(protocol: Protocol) -> Self {
        match protocol {
            Protocol::Http2 | Protocol::Grpc => UpstreamProtocol::Http2,
            Protocol::Http => UpstreamProtocol::Http1,
            Protocol::Tcp | Protocol::Unknown => UpstreamProtocol::Downstream,
        }
    }

    /// Whether a request the client sent as HTTP/2 (`client_h2`) goes upstream as HTTP/2.
    pub fn h2(self, client_h2: bool) -> bool {
        match self {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Downstream => client_h2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_protocol_then_name_prefix() {
        assert_eq!(
            Protocol::resolve(Some("grpc"), Some("tcp-x")),
            Protocol::Grpc
        );
        assert_eq!(Protocol::resolve(None, Some("http-web")), Protocol::Http);
        assert_eq!(Protocol::resolve(None, Some("http2")), Protocol::Http2);
        assert_eq!(Protocol::resolve(None, Some("tcp-db")), Protocol::Tcp);
        assert_eq!(Protocol::resolve(None, Some("web")), Protocol::Unknown);
        assert_eq!(Protocol::resolve(Some("weird"), None), Protocol::Unknown);
        assert_eq!(
            Protocol::resolve(Some("kubernetes.io/h2c"), None),
            Protocol::Http2
        );
        assert_eq!(Protocol::resolve(None, None), Protocol::Unknown);
    }
}
