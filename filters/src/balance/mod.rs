//! Endpoint selection for a chosen backend: round robin, or consistent hashing ([`ring`])
//! when the port is configured for it and the request has a hash.

pub mod ring;

use crate::model::{Endpoint, ServicePort};

/// Picks the next endpoint of `port` in round-robin order, skipping endpoints without an
/// address. `None` when the port has no usable endpoint.
pub fn round_robin(port: &ServicePort) -> Option<&Endpoint> {
    let n = port.endpoints.len();
    if n == 0 {
        return None;
    }
    let start = port.next_index();
    (0..n)
        .map(|i| &port.endpoints[(start + i) % n])
        .find(|e| e.address().is_some())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::model::{Identity, NamespacedName, Protocol, TargetPort, Workload};

    fn ep(name: &str, ip: Option<&str>) -> Endpoint {
        Endpoint {
            workload: Arc::new(Workload {
                name: NamespacedName::new("default", name),
                ips: ip.map(|i| i.parse().unwrap()).into_iter().collect(),
                identity: Identity::new("cluster.local", "default", "default"),
                labels: BTreeMap::new(),
                hbone: true,
                served: false,
                named_ports: BTreeMap::new(),
            }),
            port: 8080,
        }
    }

    #[test]
    fn cycles_and_skips_addressless() {
        let port = ServicePort::new(
            None,
            80,
            TargetPort::Number(8080),
            Protocol::Http,
            vec![
                ep("a", Some("127.128.0.1")),
                ep("b", None),
                ep("c", Some("127.128.0.3")),
            ],
        );
        let picks: Vec<_> = (0..6)
            .map(|_| round_robin(&port).unwrap().workload.name.name.clone())
            .collect();
        assert_eq!(picks, ["a", "c", "c", "a", "c", "c"]);
        let empty = ServicePort::new(None, 80, TargetPort::Number(1), Protocol::Http, vec![]);
        assert!(round_robin(&empty).is_none());
    }
}

/// An endpoint chosen for one request or tunnel.
#[derive(Debug, Clone)]
pub struct Picked {
    /// `podIP:targetPort`.
    pub address: std::net::SocketAddr,
    /// The workload behind it (its identity and whether it speaks HBONE).
    pub workload: std::sync::Arc<crate::model::Workload>,
}

/// Chooses the endpoint for `backend`: by `hash` when the Service port balances by
/// consistent hashing and the request has one, else round-robin over the port's endpoints;
/// or the addressed pod itself.
pub fn pick(
    backend: &crate::route::Backend,
    hash: Option<u64>,
) -> Result<Picked, crate::ProxyError> {
    use crate::route::Backend;
    use crate::ProxyError;
    match backend {
        Backend::Service { service, port } => {
            let sp = service.port(*port).ok_or_else(|| {
                ProxyError::Internal(format!("{} has no port {port}", service.name))
            })?;
            let hashed = match (sp.hash_ring(), hash) {
                (Some(ring), Some(h)) => ring.get(h).map(|i| &sp.endpoints[i]),
                _ => None,
            };
            let ep = hashed
                .or_else(|| round_robin(sp))
                .ok_or_else(|| ProxyError::NoHealthyUpstream(backend.describe()))?;
            Ok(Picked {
                address: ep
                    .address()
                    .expect("round_robin returns addressed endpoints"),
                workload: ep.workload.clone(),
            })
        }
        Backend::Workload { workload, port } => {
            let ip = workload
                .primary_ip()
                .ok_or_else(|| ProxyError::NoHealthyUpstream(backend.describe()))?;
            Ok(Picked {
                address: std::net::SocketAddr::new(ip, *port),
                workload: workload.clone(),
            })
        }
    }
}
