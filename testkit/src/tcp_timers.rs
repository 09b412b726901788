//! The kernel's timers on TCP connections (`/proc/net/tcp`, Linux): how a test sees that
//! another process turned TCP keepalive on for its socket.

use std::net::SocketAddr;

/// A connection's pending timer kind in `/proc/net/tcp`: keepalive.
pub const KEEPALIVE: u8 = 2;

/// For each established IPv4 connection on this machine whose remote end is `to`: its
/// pending timer kind (0 none, [`KEEPALIVE`], ...) and when that timer fires, in clock
/// ticks (`USER_HZ`, 100 on Linux).
///
/// # Panics
/// When `to` is IPv6 or `/proc/net/tcp` cannot be read.
pub fn timers_to(to: SocketAddr) -> Vec<(u8, u64)> {
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    let hex = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(to.ip().octets()),
        to.port()
    );
    std::fs::read_to_string("/proc/net/tcp")
        .expect("/proc/net/tcp")
        .lines()
        .skip(1)
        .filter_map(|l| {
            // sl local_address rem_address st tx:rx tr:tm->when ...
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(2) != Some(&hex.as_str()) || f.get(3) != Some(&"01") {
                return None;
            }
            let (tr, when) = f.get(5)?.split_once(':')?;
            Some((
                u8::from_str_radix(tr, 16).ok()?,
                u64::from_str_radix(when, 16).ok()?,
            ))
        })
        .collect()
}
