//! The HBONE listener (port 15008): Pingora owns the TCP listener and the TLS handshake;
//! [`connection`] runs HTTP/2 on each connection and accepts CONNECT streams, whose
//! tunnels go to [`crate::proxy`].
//!
//! - [`admission`]: before TLS: the connection cap (load shedding) and the handshake
//!   timeout;
//! - [`connection`]: one HBONE connection: peer identity, HTTP/2 with ztunnel's settings,
//!   CONNECT authority resolution, GOAWAY on shutdown, keepalive pings;
//! - the CONNECT headers carried into policy and telemetry are parsed by
//!   [`filters::connect`].
//!
//! The tunnel stream, HTTP/2 settings and SPIFFE verifiers are the [`hbone`] crate's.

pub mod admission;
pub mod connection;
pub mod listening;
pub mod rebalance;

pub use connection::HboneInbound;
