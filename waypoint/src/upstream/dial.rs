//! Reaching a Service by `host:port` through the snapshot: what the waypoint's own clients
//! (ext_authz checks, span export) dial, as Envoy reaches an extension provider through its
//! cluster's endpoints.
//!
//! - A Service hostname known to the snapshot (`name.ns.svc.cluster.local`, the shorter
//!   `name.ns` / `name.ns.svc`, optionally prefixed `ns/`): its endpoints for the Service
//!   `port`, as the port's balancer picks them, through the upstream pools (HBONE for pods
//!   in the mesh, TCP otherwise).
//! - An IP literal: that address, plaintext TCP.
//! - Any other name, or the name of a Service whose port sends to the original
//!   destination (headless): resolved with the system resolver, plaintext TCP.
//!
//! A destination from xDS (an `outbound|<port>||<host>` cluster) is only ever the snapshot's
//! Service `<host>` (built from that cluster and its EDS endpoints): no IP literal, no DNS,
//! as Envoy reaches nothing but the cluster's endpoints.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use filters::balance::{self, Picked};
use filters::model::{Identity, NamespacedName, Service, Snapshot, Workload};
use filters::route::Backend;

/// What to reach.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// A Service hostname (optionally `ns/hostname`), an IP literal or another DNS name.
    pub host: &'a str,
    /// The Service port (or the port at the address).
    pub port: u16,
    /// The xDS cluster standing for the Service, when the destination came over xDS: then
    /// only the snapshot's Service `host` is reached.
    pub cluster: Option<&'a str>,
}

/// Why a destination cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    /// An xDS destination whose cluster (and so its Service) is not in the snapshot.
    #[error("cluster {cluster}: no Service {host} (the cluster has not arrived)")]
    ClusterMissing {
        /// The cluster name.
        cluster: String,
        /// The Service hostname.
        host: String,
    },
    /// The Service does not declare the port.
    #[error("Service {service} has no port {port}")]
    NoPort {
        /// The Service.
        service: NamespacedName,
        /// The port asked for.
        port: u16,
    },
    /// The Service port has no endpoint to pick.
    #[error("{0}")]
    NoEndpoint(String),
    /// Not a Service of the snapshot, and the resolver does not know it either.
    #[error("{host} is no known Service and does not resolve: {reason}")]
    Unresolved {
        /// The name.
        host: String,
        /// The resolver's error.
        reason: String,
    },
    /// The resolver returned no address.
    #[error("{0} resolves to no address")]
    NoAddress(String),
}

/// A resolved endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Where the request goes.
    pub picked: Picked,
    /// Whether the port speaks HTTP/2 (declared `http2`/`grpc`).
    pub h2: bool,
    /// `host:port` for the request's authority.
    pub authority: String,
}

fn host_of(service: &str) -> &str {
    service.split_once('/').map(|(_, h)| h).unwrap_or(service)
}

fn direct(address: SocketAddr, host: &str) -> Picked {
    Picked {
        address,
        workload: Arc::new(Workload {
            name: NamespacedName::new("external", host),
            ips: vec![address.ip()],
            identity: Identity::new("external", "external", "external"),
            labels: BTreeMap::new(),
            hbone: false,
            served: false,
            named_ports: BTreeMap::new(),
        }),
        in_flight: None,
        outlier: None,
        tls: None,
        connection_limits: None,
        connection_cap: None,
        proxy_protocol: None,
    }
}

/// The Service of `snapshot` that `host` names (full hostname, or a shorter `name.ns` /
/// `name.ns.svc` form), if any.
pub fn service<'a>(snapshot: &'a Snapshot, host: &str) -> Option<&'a Arc<Service>> {
    let host = host_of(host);
    snapshot.services().values().find(|s| {
        s.hostname == host
            || s.hostname
                .strip_prefix(host)
                .is_some_and(|rest| rest.starts_with('.') && host.contains('.'))
    })
}

/// [`resolve`], with the `:authority` a provider names instead of the destination's own
/// (none when `authority` is empty): the gRPC log services' endpoints.
pub async fn resolve_as(
    snapshot: &Snapshot,
    to: Destination<'_>,
    authority: &str,
) -> Result<Endpoint, DialError> {
    let mut endpoint = resolve(snapshot, to).await?;
    if !authority.is_empty() {
        endpoint.authority = authority.to_string();
    }
    Ok(endpoint)
}

/// Resolves `to` against `snapshot`.
pub async fn resolve(snapshot: &Snapshot, to: Destination<'_>) -> Result<Endpoint, DialError> {
    let host = host_of(to.host);
    let authority = format!("{host}:{}", to.port);
    if let Some(cluster) = to.cluster {
        let service = snapshot
            .services()
            .values()
            .find(|s| s.hostname == host)
            .ok_or_else(|| DialError::ClusterMissing {
                cluster: cluster.to_string(),
                host: host.to_string(),
            })?;
        return service_endpoint(service, to.port);
    }
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(Endpoint {
            picked: direct(SocketAddr::new(ip, to.port), host),
            h2: false,
            authority,
        });
    }
    let mut host = host;
    if let Some(service) = service(snapshot, host) {
        if service
            .port(to.port)
            .is_none_or(|p| p.original_dst().is_none())
        {
            return service_endpoint(service, to.port);
        }
        // A headless Service (or a `resolution: NONE` entry) has no endpoints to pick
        // from: its name resolves to its pods' addresses, as a client's lookup would.
        host = service.hostname.as_str();
    }
    let mut addrs = tokio::net::lookup_host((host, to.port))
        .await
        .map_err(|e| DialError::Unresolved {
            host: host.to_string(),
            reason: e.to_string(),
        })?;
    let address = addrs
        .next()
        .ok_or_else(|| DialError::NoAddress(host.to_string()))?;
    Ok(Endpoint {
        picked: direct(address, host),
        h2: false,
        authority,
    })
}

/// An endpoint of `service`'s port `port`, as the balancer picks it.
fn service_endpoint(service: &Arc<Service>, port: u16) -> Result<Endpoint, DialError> {
    let declared = service.port(port).ok_or_else(|| DialError::NoPort {
        service: service.name.clone(),
        port,
    })?;
    let h2 = declared.protocol.prefers_h2();
    let picked = balance::pick(
        &Backend::Service {
            service: service.clone(),
            port,
        },
        None,
    )
    .map_err(|e| DialError::NoEndpoint(e.to_string()))?;
    Ok(Endpoint {
        picked,
        h2,
        authority: format!("{}:{port}", service.hostname),
    })
}
