//! HBONE: mutual TLS carrying HTTP/2 CONNECT tunnels, on port 15008.
//!
//! - [`inbound`]: the listener side (Pingora owns the TCP listener and the TLS handshake;
//!   this module runs HTTP/2 and accepts CONNECT streams).
//! - [`stream`]: one CONNECT stream as a byte stream, used on both sides.
//! - [`settings`]: the HTTP/2 settings ztunnel uses, and keepalive.
//! - [`forwarded`]: the CONNECT headers carried into policy and telemetry.

pub mod forwarded;
pub mod inbound;
pub mod settings;
pub mod stream;

pub use stream::H2Stream;

/// The HBONE port.
pub const HBONE_PORT: u16 = 15008;
