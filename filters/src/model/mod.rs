//! The route tables: one immutable [`Snapshot`] of everything the waypoint serves.
//!
//! Configuration sources (the local Kubernetes YAML file, the xDS subscriber) build a
//! `Snapshot` outside of any lock and publish it in one atomic swap. A request reads the
//! snapshot once when it starts and finishes on it, whatever changes meanwhile.

mod identity;
mod protocol;
mod request_log;
mod snapshot;
pub mod telemetry;

pub use identity::{Identity, InvalidIdentity};
pub use protocol::Protocol;
pub use request_log::{RequestLog, Upstream};
pub use snapshot::{
    route_key, ConflictingAddress, Endpoint, NamespacedName, Service, ServicePort, Snapshot,
    Target, TargetPort, Waypoint, Workload,
};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What the waypoint knows about the HBONE tunnel a request arrived on.
#[derive(Debug, Clone)]
pub struct TunnelInfo {
    /// The peer's verified SPIFFE identity (the source workload).
    pub peer: Identity,
    /// The TCP peer address of the HBONE connection (normally the source node's ztunnel).
    pub peer_addr: Option<SocketAddr>,
    /// The original source IP: the CONNECT `forwarded: for=` value, else the peer address.
    pub source_ip: Option<IpAddr>,
    /// The CONNECT authority (`VIP:port` or `podIP:port`).
    pub authority: SocketAddr,
    /// What the authority resolved to.
    pub target: Target,
    /// The CONNECT request's `baggage` header, kept for telemetry.
    pub baggage: Option<String>,
    /// The CONNECT request's `traceparent` header, kept for tracing.
    pub traceparent: Option<String>,
}

/// Per-request context the HBONE layer attaches as a request extension.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The snapshot this request is evaluated against from start to finish.
    pub snapshot: Arc<Snapshot>,
    /// The tunnel the request arrived on.
    pub tunnel: Arc<TunnelInfo>,
}
