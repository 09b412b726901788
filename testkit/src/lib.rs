//! Test kit: the pieces of an ambient mesh around a waypoint, on loopback. Used by the
//! waypoint's integration tests, the conformance harness and `waypoint-bench`; nothing the
//! shipped binary links.
//!
//! - [`client`]: an HBONE client (the source ztunnel's role) used by tests, the load tools
//!   and `waypoint-bench request`; [`source`]: the headers a source ztunnel puts on the
//!   CONNECT (`baggage`, `forwarded`, `traceparent`);
//! - [`ztunnel`]: a fake destination ztunnel: an HBONE server on a pod IP that checks the
//!   caller's identity and the CONNECT authority, then serves an app;
//! - [`echo`]: the echo app, compatible with the Gateway API conformance echo server;
//! - [`h2_app`]: an h2c app counting connections and streams, holding and freezing them;
//! - [`tcp_timers`]: the kernel's timers on TCP connections (keepalive set by another process);
//! - [`tunnel_proxy`]: an HTTP CONNECT/POST tunneling proxy (HTTP/1.1 and h2c) in front of
//!   a TCP echo, recording the tunnel requests it sees;
//! - [`raw_http`]: an HTTP/1.1 pod app keeping request heads byte for byte (header case);
//! - [`ext_authz`]: gRPC and HTTP external authorization servers;
//! - [`istio_dump`]: istiod's resources for an httpbin waypoint, served over xDS;
//! - [`jwt`]: a JWT issuer (keys, JWKS, tokens);
//! - [`mesh`]: writes local configuration files of Kubernetes objects;
//! - [`otlp`]: OTLP trace collectors (gRPC and HTTP/protobuf) keeping what they receive;
//! - [`process`]: runs the `waypoint` binary as a child process;
//! - [`tls_echo`]: the echo app over plain mTLS (the benchmark's nginx upstream);
//! - [`ads_server`], [`sds_server`]: in-process xDS and SDS servers (istiod's and
//!   pilot-agent's roles);
//! - [`loadgen`]: the HBONE load generator (open and closed loop, latency histograms).

pub mod ads_server;
pub mod als;
pub mod ca_server;
pub mod client;
pub mod dns_server;
pub mod echo;
pub mod ext_authz;
pub mod full_backlog;
pub mod h2_app;
pub mod istio_dump;
pub mod istiod;
pub mod jwt;
pub mod loadgen;
pub mod mesh;
pub mod otlp;
pub mod process;
pub mod proxy_front;
pub mod raw_http;
pub mod sds_server;
pub mod silent;
pub mod source;
pub mod tcp_timers;
pub mod tls_echo;
pub mod tunnel_proxy;
pub mod ztunnel;

pub use ads_server::{AdsServer, Reply};
pub use sds_server::SdsServer;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// A loopback IP nobody else in this process (or, very probably, on this machine) uses,
/// standing in for a pod IP. Probes that `ip:port` can be bound.
pub fn free_loopback_ip(port: u16) -> IpAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let salt = std::process::id().wrapping_mul(2654435761);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed).wrapping_add(salt);
        // 127.128.0.0/9 minus .0/.255 host parts; leaves 127.0-127 for VIPs and the rest.
        let ip = Ipv4Addr::new(
            127,
            128 + ((n >> 16) % 120) as u8,
            (n >> 8) as u8,
            1 + (n % 250) as u8,
        );
        if std::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(ip), port)).is_ok() {
            return IpAddr::V4(ip);
        }
    }
}

/// `N` distinct free TCP ports on 127.0.0.1 (all held open while choosing, so they differ).
pub fn free_ports<const N: usize>() -> [u16; N] {
    free_ports_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// `N` distinct free TCP ports on `ip` (all held open while choosing, so they differ).
///
/// A port is free only until someone else takes it. On 127.0.0.1 that someone can be any
/// client socket's ephemeral port or a listener of a test running in parallel; on an IP of
/// [`free_loopback_ip`], nobody else in this process binds, and clients connect from
/// 127.0.0.1.
pub fn free_ports_on<const N: usize>(ip: IpAddr) -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| {
            std::net::TcpListener::bind(SocketAddr::new(ip, 0))
                .unwrap_or_else(|e| panic!("bind {ip}:0: {e}"))
        })
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local addr").port())
}
