//! `waypoint`: an L7 waypoint proxy for Istio ambient mesh, built on Pingora.
//!
//! See `ARCHITECTURE.md` for the data path. Modules, in the order a request meets them:
//! - [`inbound`]: the HBONE listener (mTLS + HTTP/2 CONNECT on 15008); the tunnel stream
//!   and the SPIFFE verifiers are the [`hbone`] crate's;
//! - [`proxy`]: what runs inside a tunnel: HTTP sessions through the filter chain, or TCP;
//! - [`ext_authz`]: the external authorization client (CUSTOM policies);
//! - [`upstream`]: the pooled HBONE (or plain) client towards destination pods;
//! - [`state`]: the current configuration snapshot and readiness;
//! - [`telemetry`]: Istio metrics, access logs and OpenTelemetry traces;
//! - [`admin`]: readiness, admin, config dump and Prometheus endpoints;
//! - [`server`]: assembles the Pingora server and owns shutdown;
//! - [`cli`]: the command line (`run`, `check`, `dev-ca`, Envoy's flags under pilot-agent).
//!
//! Configuration comes from `kube-config` (a local file of Kubernetes objects) or `xds`
//! (istiod); both fill the same `filters::model::Snapshot`.

pub mod admin;
pub mod alloc;
pub mod cli;
pub mod ext_authz;
pub mod inbound;
pub mod jwks;
pub mod proxy;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod upstream;
pub mod woken;
