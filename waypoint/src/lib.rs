//! `waypoint`: an L7 waypoint proxy for Istio ambient mesh, built on Pingora.
//!
//! See `ARCHITECTURE.md` for the data path. Modules, in the order a request meets them:
//! - [`hbone`]: the HBONE listener (mTLS + HTTP/2 CONNECT on 15008) and the tunnel stream;
//! - [`proxy`]: what runs inside a tunnel: HTTP sessions through the filter chain, or TCP;
//! - [`ext_authz`]: the external authorization client (CUSTOM policies);
//! - [`upstream`]: the pooled HBONE (or plain) client towards destination pods;
//! - [`tls`]: certificates, SPIFFE identities and verifiers;
//! - [`state`]: the current configuration snapshot and readiness;
//! - [`telemetry`]: Istio metrics, access logs and OpenTelemetry traces;
//! - [`admin`]: readiness, admin, config dump and Prometheus endpoints;
//! - [`server`]: assembles the Pingora server and owns shutdown.

pub mod admin;
pub mod ext_authz;
pub mod hbone;
pub mod jwks;
#[cfg(feature = "testing")]
pub mod loadgen;
pub mod proxy;
pub mod server;
pub mod state;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod upstream;
