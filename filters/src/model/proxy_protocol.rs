//! The PROXY protocol header the waypoint sends at the start of each upstream connection
//! to a Service's endpoints (DestinationRule `trafficPolicy.proxyProtocol`; istiod wraps the
//! inner transport socket of the `internal_upstream` socket in a PROXY protocol socket).
//!
//! The encodings follow HAProxy's PROXY protocol specification (versions 1 and 2). The
//! addresses are the downstream connection's, as Envoy's upstream PROXY socket uses them:
//! the original client and the address it connected to (the Service VIP and port).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use serde::Serialize;

/// Which form of the PROXY protocol header to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ProxyProtocolVersion {
    /// The human-readable text form (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary form (12-byte signature, then the addresses).
    V2,
}

/// The header for one upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProxyHeader {
    /// The form to send.
    pub version: ProxyProtocolVersion,
    /// The original client and the address it connected to; `None` when the source is not
    /// known (then the header says so: `UNKNOWN` in v1, the `LOCAL` command in v2).
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

/// The version 2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

impl ProxyHeader {
    /// The header for a connection from `source` to `destination`.
    pub fn new(
        version: ProxyProtocolVersion,
        source: Option<SocketAddr>,
        destination: SocketAddr,
    ) -> Self {
        Self {
            version,
            addresses: source.map(|s| (s, destination)),
        }
    }

    /// The header's bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self.version {
            ProxyProtocolVersion::V1 => self.v1().into_bytes(),
            ProxyProtocolVersion::V2 => self.v2(),
        }
    }

    /// Both addresses in one family: a mixed pair is sent as IPv6 (IPv4-mapped).
    fn same_family(&self) -> Option<(SocketAddr, SocketAddr)> {
        let (s, d) = self.addresses?;
        let v6 = |a: SocketAddr| match a.ip() {
            IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
            IpAddr::V6(_) => a,
        };
        Some(if s.is_ipv4() == d.is_ipv4() {
            (s, d)
        } else {
            (v6(s), v6(d))
        })
    }

    fn v1(&self) -> String {
        match self.same_family() {
            None => "PROXY UNKNOWN\r\n".to_string(),
            Some((s, d)) => format!(
                "PROXY {} {} {} {} {}\r\n",
                if s.is_ipv4() { "TCP4" } else { "TCP6" },
                s.ip(),
                d.ip(),
                s.port(),
                d.port()
            ),
        }
    }

    fn v2(&self) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        let Some((s, d)) = self.same_family() else {
            // Version 2, LOCAL; AF_UNSPEC; no addresses.
            out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
            return out;
        };
        // Version 2, PROXY.
        out.push(0x21);
        match (s.ip(), d.ip()) {
            (IpAddr::V4(si), IpAddr::V4(di)) => {
                // AF_INET, STREAM; 12 bytes of addresses.
                out.extend_from_slice(&[0x11, 0x00, 12]);
                out.extend_from_slice(&si.octets());
                out.extend_from_slice(&di.octets());
            }
            (si, di) => {
                let v6 = |ip: IpAddr| match ip {
                    IpAddr::V6(ip) => ip,
                    IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                };
                let (si, di): (Ipv6Addr, Ipv6Addr) = (v6(si), v6(di));
                // AF_INET6, STREAM; 36 bytes of addresses.
                out.extend_from_slice(&[0x21, 0x00, 36]);
                out.extend_from_slice(&si.octets());
                out.extend_from_slice(&di.octets());
            }
        }
        out.extend_from_slice(&s.port().to_be_bytes());
        out.extend_from_slice(&d.port().to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::{ProxyHeader, ProxyProtocolVersion::*};

    fn header(
        version: super::ProxyProtocolVersion,
        source: &str,
        destination: &str,
    ) -> ProxyHeader {
        ProxyHeader::new(
            version,
            Some(source.parse().unwrap()),
            destination.parse().unwrap(),
        )
    }

    #[test]
    fn version_1_is_the_text_form() {
        // The spec's examples: "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
        // is the longest TCP4 line; TCP6 carries the addresses in their text form.
        assert_eq!(
            header(V1, "255.255.255.255:65535", "255.255.255.255:65535").encode(),
            b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
        );
        assert_eq!(
            header(V1, "192.168.0.1:56324", "192.168.0.11:443").encode(),
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        assert_eq!(
            header(V1, "[2001:db8::1]:40000", "[2001:db8::2]:80").encode(),
            b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 80\r\n"
        );
        assert_eq!(
            ProxyHeader::new(V1, None, "10.0.0.1:80".parse().unwrap()).encode(),
            b"PROXY UNKNOWN\r\n"
        );
        // Mixed families: both as IPv6.
        assert_eq!(
            header(V1, "10.0.0.1:1000", "[2001:db8::2]:80").encode(),
            b"PROXY TCP6 ::ffff:10.0.0.1 2001:db8::2 1000 80\r\n"
        );
    }

    #[test]
    fn version_2_is_the_binary_form() {
        let mut want: Vec<u8> = vec![
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54,
            0x0A, // signature
            0x21, // version 2, PROXY
            0x11, // AF_INET, STREAM
            0x00, 0x0C, // 12 bytes follow
            192, 168, 0, 1, // source
            192, 168, 0, 11, // destination
            0xDC, 0x04, // 56324
            0x01, 0xBB, // 443
        ];
        assert_eq!(
            header(V2, "192.168.0.1:56324", "192.168.0.11:443").encode(),
            want
        );
        want.truncate(12);
        want.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]); // AF_INET6, STREAM, 36 bytes
        want.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        want.extend_from_slice(&[0x9C, 0x40, 0x00, 0x50]); // 40000, 80
        assert_eq!(
            header(V2, "[2001:db8::1]:40000", "[2001:db8::2]:80").encode(),
            want
        );
        want.truncate(12);
        want.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]); // LOCAL, AF_UNSPEC, no addresses
        assert_eq!(
            ProxyHeader::new(V2, None, "10.0.0.1:80".parse().unwrap()).encode(),
            want
        );
    }
}
