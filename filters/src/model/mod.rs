//! The route tables: one immutable [`Snapshot`] of everything the waypoint serves.
//!
//! Configuration sources (the local Kubernetes YAML file, the xDS subscriber) build a
//! `Snapshot` outside of any lock and publish it in one atomic swap. A request reads the
//! snapshot once when it starts and finishes on it, whatever changes meanwhile.

mod connection_cap;
mod connection_limits;
mod identity;
mod protocol;
mod proxy_protocol;
mod request_headers;
mod request_log;
mod service_port;
mod snapshot;
mod tcp_limits;
mod tcp_tunnel;
pub mod telemetry;
mod upstream_tls;

pub use connection_cap::ConnectionCap;
pub use connection_limits::{ConnectionLimits, H2Keepalive, TcpKeepalive, DEFAULT_CONNECT_TIMEOUT};
pub use identity::{Identity, InvalidIdentity};
pub use protocol::{Protocol, UpstreamProtocol};
pub use proxy_protocol::{ProxyHeader, ProxyProtocolVersion};
pub use request_headers::{request_id, RequestHeaders, UnderscoreHeaders};
pub use request_log::{LogSlot, RequestLog, Upstream};
pub use snapshot::{
    bound, route_key, with_key, with_service_key, ConflictingAddress, Endpoint, NamespacedName,
    OriginalDst, Service, ServicePort, Snapshot, SnapshotParts, Target, TargetPort, Unlisted,
    Waypoint, Workload,
};
pub use tcp_limits::TcpLimits;
pub use tcp_tunnel::{TcpTunnel, TunnelMethod};
pub use upstream_tls::{ClientCertificate, Crl, PrivateKeyPem, TlsRoots, UpstreamTls};

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
    /// The original source port, with `source_ip`: the port of `forwarded: for="ip:port"`
    /// (as ztunnel writes it), else the peer address's; `None` when `for=` has no port.
    pub source_port: Option<u16>,
    /// The CONNECT authority (`VIP:port` or `podIP:port`).
    pub authority: SocketAddr,
    /// What the authority resolved to.
    pub target: Target,
    /// The CONNECT request's `baggage` header, kept for telemetry.
    pub baggage: Option<String>,
    /// The CONNECT request's `traceparent` header, kept for tracing.
    pub traceparent: Option<String>,
    /// `peer`'s principal as a URI (`spiffe://...`), formatted on first use (policies ask
    /// on every request); start it empty (`Default::default()`) and read it with
    /// [`TunnelInfo::principal`] or [`TunnelInfo::principal_uri`].
    pub principal_cache: std::sync::OnceLock<String>,
    /// The request log the tunnel's next request reuses (start it `Default::default()`).
    pub log_slot: LogSlot,
}

impl TunnelInfo {
    /// The peer's principal without `spiffe://` (`<trust-domain>/ns/<ns>/sa/<sa>`).
    pub fn principal(&self) -> &str {
        &self.principal_uri()["spiffe://".len()..]
    }

    /// The peer's principal as a URI (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`).
    pub fn principal_uri(&self) -> &str {
        self.principal_cache
            .get_or_init(|| format!("spiffe://{}", self.peer.principal()))
    }

    /// The original source address (Envoy's downstream remote address); port 0 when the
    /// source's port is not known.
    pub fn source_addr(&self) -> Option<SocketAddr> {
        self.source_ip
            .map(|ip| SocketAddr::new(ip, self.source_port.unwrap_or(0)))
    }
}

/// Per-request context the HBONE layer attaches as a request extension.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The snapshot this request is evaluated against from start to finish.
    pub snapshot: Arc<Snapshot>,
    /// The tunnel the request arrived on.
    pub tunnel: Arc<TunnelInfo>,
    /// What the chain records about the request for its telemetry (`None` on mirror
    /// copies and outside the HTTP handler). Carried here rather than as an extension of
    /// its own: one allocation less per request.
    pub log: Option<RequestLog>,
    /// What routing decided, for the inner services ([`crate::route::RouteDecision::of`]);
    /// `None` before the routing layer.
    pub decision: Option<crate::route::RouteDecision>,
}

/// Request contexts for unit tests: a Service `default/echo` at `127.96.0.10:80` with one
/// pod, a client `sleep` at `127.0.0.7`.
#[cfg(test)]
pub(crate) mod test_support {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;

    /// A context whose snapshot has the policies in `authz`.
    pub fn context_with(authz: crate::authz::PolicySet) -> RequestContext {
        let wl = Arc::new(Workload {
            name: NamespacedName::new("default", "echo-0"),
            ips: vec!["127.128.0.1".parse().unwrap()],
            identity: Identity::new("cluster.local", "default", "echo"),
            labels: BTreeMap::new(),
            hbone: true,
            served: false,
            named_ports: BTreeMap::new(),
        });
        let svc = Service {
            name: NamespacedName::new("default", "echo"),
            hostname: "echo.default.svc.cluster.local".into(),
            vips: vec!["127.96.0.10".parse().unwrap()],
            ranges: Vec::new(),
            ports: vec![ServicePort::new(
                Some("http".into()),
                80,
                TargetPort::Number(8080),
                Protocol::Http,
                vec![Endpoint {
                    workload: wl.clone(),
                    port: 8080,
                }],
            )],
            served: true,
        };
        let mut parts = SnapshotParts::empty(
            1,
            "test".into(),
            Waypoint {
                gateway: NamespacedName::new("default", "waypoint"),
                trust_domain: "cluster.local".into(),
            },
        );
        parts.services = vec![Arc::new(svc)];
        parts.workloads = vec![wl];
        parts.authz = authz;
        let snapshot = Snapshot::new(parts).unwrap();
        let authority = "127.96.0.10:80".parse().unwrap();
        let target = snapshot.resolve(authority).expect("served VIP");
        RequestContext {
            log: None,
            decision: None,
            snapshot: Arc::new(snapshot),
            tunnel: Arc::new(TunnelInfo {
                peer: Identity::new("cluster.local", "default", "sleep"),
                peer_addr: Some("127.0.0.7:40000".parse().unwrap()),
                source_ip: Some("127.0.0.7".parse().unwrap()),
                source_port: None,
                authority,
                target,
                baggage: None,
                traceparent: None,
                principal_cache: Default::default(),
                log_slot: Default::default(),
            }),
        }
    }

    /// A context without policies.
    pub fn context() -> RequestContext {
        context_with(Default::default())
    }
}
