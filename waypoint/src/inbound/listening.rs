//! Whether a TCP address is listening, from Linux's socket tables (`/proc/net/tcp`,
//! `/proc/net/tcp6`), without connecting to it.

use std::net::{IpAddr, SocketAddr};

/// `Some(true)` when a socket listens on `addr` (or on the unspecified address at its
/// port); `None` when the tables cannot be read (not Linux).
pub fn is_listening(addr: SocketAddr) -> Option<bool> {
    let table = match addr.ip() {
        IpAddr::V4(_) => "/proc/net/tcp",
        IpAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table).ok()?;
    Some(listens(&text, addr))
}

/// Whether `table` (the text of `/proc/net/tcp` or `tcp6`) has a LISTEN socket on `addr`.
fn listens(table: &str, addr: SocketAddr) -> bool {
    const LISTEN: &str = "0A";
    let port = format!("{:04X}", addr.port());
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let (Some(local), Some(_remote), Some(state)) =
            (fields.nth(1), fields.next(), fields.next())
        else {
            return false;
        };
        let Some((ip, p)) = local.split_once(':') else {
            return false;
        };
        state == LISTEN && p == port && (ip.chars().all(|c| c == '0') || ip == hex_ip(addr.ip()))
    })
}

/// An address as the kernel prints it: each 32-bit word in host (little-endian) order.
fn hex_ip(ip: IpAddr) -> String {
    let octets = match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    octets
        .chunks(4)
        .map(|w| format!("{:02X}{:02X}{:02X}{:02X}", w[3], w[2], w[1], w[0]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_listener_is_seen_and_a_free_port_is_not() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert_eq!(is_listening(addr), Some(true));
        drop(l);
        assert_eq!(is_listening(addr), Some(false));
    }

    #[test]
    fn reads_the_kernels_format() {
        let table = "  sl  local_address rem_address   st\n   0: 0100007F:3A98 00000000:0000 0A 0\n   1: 00000000:1F90 00000000:0000 0A 0\n   2: 0100007F:0050 0100007F:D431 01 0\n";
        assert!(listens(table, "127.0.0.1:15000".parse().unwrap()));
        assert!(
            listens(table, "10.0.0.1:8080".parse().unwrap()),
            "0.0.0.0 listens on all"
        );
        assert!(
            !listens(table, "127.0.0.1:80".parse().unwrap()),
            "established, not listening"
        );
        assert!(!listens(table, "127.0.0.2:15000".parse().unwrap()));
    }
}
