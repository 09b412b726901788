//! The HBONE CONNECT request's headers as ztunnel writes them, parsed without trusting
//! them: `forwarded` (RFC 7239), which carries the original source address, and `baggage`
//! (W3C), which carries the source workload's labels.

use std::net::{IpAddr, SocketAddr};

/// Most baggage members read; the rest are ignored.
pub const MAX_BAGGAGE_MEMBERS: usize = 32;

/// The `key=value` members of a `baggage` header value, keys and values trimmed, member
/// properties (after `;`) dropped, members without a value skipped; at most
/// [`MAX_BAGGAGE_MEMBERS`] members are looked at.
pub fn baggage(value: &str) -> impl Iterator<Item = (&str, &str)> {
    value
        .split(',')
        .take(MAX_BAGGAGE_MEMBERS)
        .filter_map(|member| {
            let (k, v) = member.split_once('=')?;
            let v = v.split(';').next().unwrap_or_default().trim();
            (!v.is_empty()).then_some((k.trim(), v))
        })
}

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

    /// A deterministic xorshift generator for the property tests.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn hostile_values_never_panic_and_what_ztunnel_writes_round_trips() {
        const PIECES: &[&str] = &[
            "for=",
            "FOR=",
            "\"",
            "[",
            "]",
            "127.0.0.1",
            ":",
            "8080",
            "99999",
            ";",
            ",",
            " ",
            "=",
            "proto=http",
            "2001:db8::1",
            "unknown",
            "_hidden",
            "by=",
            "host=a",
            "\u{0}",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let n = rng.next() % 10;
            let v: String = (0..n)
                .map(|_| PIECES[(rng.next() % PIECES.len() as u64) as usize])
                .collect();
            let _ = forwarded_for(&v);
            // What ztunnel sends: `for="ip:port"`, IPv6 in brackets.
            let ip: IpAddr = if rng.next().is_multiple_of(2) {
                std::net::Ipv4Addr::from(rng.next() as u32).into()
            } else {
                std::net::Ipv6Addr::from(((rng.next() as u128) << 64) | rng.next() as u128).into()
            };
            let port = rng.next() as u16;
            let header = format!("for=\"{}\"", SocketAddr::new(ip, port));
            assert_eq!(forwarded_for(&header), Some((ip, Some(port))), "{header}");
        }
    }

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

    #[test]
    fn baggage_members_drop_properties_and_empty_values() {
        let members: Vec<_> =
            baggage(" k8s.namespace.name = ns ,app.name=;p=1, service.name=svc;prop ,junk")
                .collect();
        assert_eq!(
            members,
            [("k8s.namespace.name", "ns"), ("service.name", "svc")]
        );
        let many = "k=v,".repeat(100);
        assert_eq!(baggage(&many).count(), MAX_BAGGAGE_MEMBERS);
    }
}
