//! The waypoint's request path, as tower filters over one immutable configuration snapshot.
//!
//! - [`model`]: the route tables (services, ports, workloads, identities) that every
//!   configuration source (local YAML, xDS) fills and that every filter reads.
//! - [`route`]: decides which backend a request goes to; pure logic plus a tower layer.
//! - [`balance`]: endpoint selection for a chosen backend.
//! - [`error`]: the one place where proxy errors become HTTP responses.
//! - [`rbac`]: Envoy RBAC filter configs (what istiod sends) evaluated with Envoy's semantics.
//! - [`body`]: the boxed streaming body type shared by the filters.
//! - [`source`]: what the configuration sources share (options, the [`Publisher`]).
//! - [`duration`]: durations as configuration writes them.
//! - [`explain`]: why a request gets its answer, recorded by the decision code itself.

pub mod access_log;
mod ascii;
pub mod authn;
pub mod authz;
pub mod balance;
pub mod body;
pub mod budget;
pub mod cel;
pub mod connect;
pub mod dns;
pub mod duration;
pub mod error;
pub mod explain;
pub mod forward_proxy;
pub mod future;
pub mod model;
pub mod rbac;
pub mod route;
pub mod source;

pub use error::ProxyError;
pub use model::{RequestContext, Snapshot};
pub use source::{Publisher, SourceOptions};
pub mod retry;
