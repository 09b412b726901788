//! Where a provider's `service` is reached.
//!
//! - A Service hostname known to the snapshot (`name.ns.svc.cluster.local`, the shorter
//!   `name.ns` / `name.ns.svc`, optionally prefixed `ns/`): its endpoints for the Service
//!   `port`, round-robin, through the upstream pools (HBONE for pods in the mesh, TCP
//!   otherwise), as istiod's cluster for the provider would.
//! - An IP literal: that address, plaintext TCP.
//! - Any other name: resolved with the system resolver, plaintext TCP (istiod would need a
//!   ServiceEntry for it; the local configuration has none).
//!
//! A provider from xDS (an ext_authz filter naming an `outbound|<port>||<host>` cluster)
//! is only ever the snapshot's Service `<host>` (built from that cluster and its EDS
//! endpoints): no IP literal, no DNS, as Envoy reaches nothing but the cluster's endpoints.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use filters::authz::ext::{CheckError, Provider};
use filters::balance::{self, Picked};
use filters::model::{Identity, NamespacedName, Service, Snapshot, Workload};
use filters::route::Backend;

/// A resolved provider endpoint.
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
    }
}

/// Resolves `provider` against `snapshot`.
pub async fn resolve(snapshot: &Snapshot, provider: &Provider) -> Result<Endpoint, CheckError> {
    let unreachable = |reason: String| CheckError::Unreachable {
        provider: provider.name.clone(),
        reason,
    };
    let host = host_of(&provider.service);
    let authority = format!("{host}:{}", provider.port);
    if let Some(cluster) = &provider.cluster {
        let service = snapshot
            .services()
            .values()
            .find(|s| s.hostname == host)
            .ok_or_else(|| {
                unreachable(format!(
                    "cluster {cluster}: no Service {host} (the cluster has not arrived)"
                ))
            })?;
        return service_endpoint(service, provider, unreachable);
    }
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(Endpoint {
            picked: direct(SocketAddr::new(ip, provider.port), host),
            h2: false,
            authority,
        });
    }
    let service = snapshot.services().values().find(|s| {
        s.hostname == host
            || s.hostname
                .strip_prefix(host)
                .is_some_and(|rest| rest.starts_with('.') && host.contains('.'))
    });
    if let Some(service) = service {
        return service_endpoint(service, provider, unreachable);
    }
    let mut addrs = tokio::net::lookup_host((host, provider.port))
        .await
        .map_err(|e| {
            unreachable(format!(
                "{host} is no known Service and does not resolve: {e}"
            ))
        })?;
    let address = addrs
        .next()
        .ok_or_else(|| unreachable(format!("{host} resolves to no address")))?;
    Ok(Endpoint {
        picked: direct(address, host),
        h2: false,
        authority,
    })
}

/// An endpoint of `service`'s port `provider.port`, as the balancer picks it.
fn service_endpoint(
    service: &Arc<Service>,
    provider: &Provider,
    unreachable: impl Fn(String) -> CheckError,
) -> Result<Endpoint, CheckError> {
    let port = service.port(provider.port).ok_or_else(|| {
        unreachable(format!(
            "Service {} has no port {}",
            service.name, provider.port
        ))
    })?;
    let h2 = port.protocol.prefers_h2();
    let picked = balance::pick(
        &Backend::Service {
            service: service.clone(),
            port: provider.port,
        },
        None,
    )
    .map_err(|e| unreachable(e.to_string()))?;
    Ok(Endpoint {
        picked,
        h2,
        authority: format!("{}:{}", service.hostname, provider.port),
    })
}
