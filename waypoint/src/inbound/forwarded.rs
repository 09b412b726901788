//! Parsing of the CONNECT request's `Forwarded` header (RFC 7239), which ztunnel sets to
//! the original source address.

use std::net::{IpAddr, SocketAddr};

/// The first `for=` address in a `Forwarded` header value, if it is an IP, with its port
/// when it has one (ztunnel writes `for="ip:port"`).
pub fn forwarded_for(value: &str) -> Option<(IpAddr, Option<u16>)> {
    value
        .split([',', ';'])
        .filter_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
        })
        .find_map(|v| {
            let v = v.trim_matches('"');
            if let Ok(sa) = v.parse::<SocketAddr>() {
                return Some((sa.ip(), Some(sa.port())));
            }
            let ip = v
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok()?;
            Some((ip, None))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_for_values() {
        assert_eq!(
            forwarded_for("for=127.0.0.9"),
            Some(("127.0.0.9".parse().unwrap(), None))
        );
        assert_eq!(
            forwarded_for("proto=https;for=\"[2001:db8::1]:4711\""),
            Some(("2001:db8::1".parse().unwrap(), Some(4711)))
        );
        assert_eq!(
            forwarded_for("for=\"127.0.0.2:80\", for=127.0.0.3"),
            Some(("127.0.0.2".parse().unwrap(), Some(80)))
        );
        assert_eq!(forwarded_for("for=unknown"), None);
        assert_eq!(forwarded_for("by=127.0.0.1"), None);
    }
}
