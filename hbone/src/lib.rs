//! HBONE transport, shared by the waypoint and its test kit: mutual TLS with SPIFFE
//! identities carrying HTTP/2 CONNECT tunnels on port 15008.
//!
//! - [`stream`]: one CONNECT stream as a byte stream, used on both sides of a tunnel;
//! - [`settings`]: the HTTP/2 settings ztunnel uses, keepalive, the TLS read buffer;
//! - [`tls`]: certificates (reloadable), SPIFFE identities, the verifiers for both
//!   directions, and a development CA.
//!
//! The listener (`waypoint::inbound`) and the pooled client towards pods
//! (`waypoint::upstream`) live in the product crate; this crate holds only what both
//! the proxy and a peer (a ztunnel, a test client) need.

pub mod settings;
pub mod stream;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;

pub use stream::H2Stream;

/// The HBONE port.
pub const HBONE_PORT: u16 = 15008;
