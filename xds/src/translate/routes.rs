//! The snapshot's route tables from the listener's route specs: each cluster a route names
//! resolved to the Service port it stands for, or to a DestinationRule subset of one.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use filters::model::{NamespacedName, Service, Workload};
use filters::route::model::{BackendTarget, Filter, Route, RouteKind, Rule, WeightedBackend};
use filters::route::{Backend, PortRoutes, RouteTable};

use super::route::{Extra, RouteSpec};
use super::{service_port, tcp_route, Resources};

/// Backends for DestinationRule subset clusters, by cluster name: the Service restricted to
/// the subset's endpoints (as EDS sends them, already filtered by the subset's labels). Not
/// addressable by VIP; routes name them.
pub(super) fn subset_backends(
    res: &Resources,
    by_host: &BTreeMap<String, Arc<Service>>,
    workloads: &BTreeMap<IpAddr, Arc<Workload>>,
    trust_domain: &str,
) -> BTreeMap<String, Backend> {
    let mut out = BTreeMap::new();
    for c in res.clusters.values().filter(|c| c.subset.is_some()) {
        let Some(parent) = by_host.get(&c.host) else {
            continue;
        };
        let subset = Service {
            name: parent.name.clone(),
            hostname: parent.hostname.clone(),
            served: false,
            vips: Vec::new(),
            ranges: Vec::new(),
            ports: vec![service_port(c, res, workloads, trust_domain)],
        };
        let backend = Backend::Service {
            service: Arc::new(subset),
            port: c.port,
        };
        out.insert(c.name.clone(), backend);
    }
    out
}

/// What route clusters resolve to: a Service port, or a DestinationRule subset of one.
pub(super) struct Backends<'a> {
    pub(super) res: &'a Resources,
    pub(super) by_host: BTreeMap<String, Arc<Service>>,
    pub(super) subsets: BTreeMap<String, Backend>,
}

impl Backends<'_> {
    /// The backend `cluster` stands for, or why there is none.
    pub(super) fn cluster(&self, cluster: &str) -> Result<Backend, String> {
        if let Some(b) = self.subsets.get(cluster) {
            return Ok(b.clone());
        }
        let c = self
            .res
            .clusters
            .get(cluster)
            .ok_or_else(|| format!("cluster {cluster} not found"))?;
        match self.by_host.get(&c.host) {
            Some(s) => Ok(Backend::Service {
                service: s.clone(),
                port: c.port,
            }),
            None => Err(format!("cluster {cluster}: no Service {}", c.host)),
        }
    }
}

pub(super) fn route(spec: &RouteSpec, service: &Arc<Service>, resolve: &Backends<'_>) -> Route {
    let backends = spec
        .clusters
        .iter()
        .map(|c| WeightedBackend {
            target: match resolve.cluster(&c.name) {
                Ok(b) => BackendTarget::Backend(b),
                Err(why) => BackendTarget::Invalid(why),
            },
            weight: c.weight,
            filters: c.filters.clone(),
        })
        .collect();
    let mut filters = Vec::new();
    for e in &spec.extra {
        match e {
            Extra::Redirect(r) => filters.push(Filter::Redirect(r.clone())),
            Extra::Rewrite(r) => filters.push(Filter::Rewrite(r.clone())),
            Extra::DirectResponse(d) => filters.push(Filter::DirectResponse(d.clone())),
            Extra::Filter(f) => filters.push(f.clone()),
            Extra::Mirror { cluster, fraction } => match resolve.cluster(cluster).ok() {
                Some(backend) => {
                    filters.push(Filter::Mirror(Arc::new(filters::route::model::Mirror {
                        backend,
                        fraction: *fraction,
                    })))
                }
                None => {
                    ::tracing::warn!(%cluster, route = %spec.name, "mirror cluster unknown; not mirroring")
                }
            },
        }
    }
    // Each level on its own, in Envoy's order (route, then virtual host): a level's
    // removals do not undo an outer level's `set`.
    filters.extend(
        spec.request_headers
            .iter()
            .cloned()
            .map(Filter::RequestHeaders),
    );
    filters.extend(
        spec.response_headers
            .iter()
            .cloned()
            .map(Filter::ResponseHeaders),
    );
    let name = if spec.name.is_empty() {
        "default".to_string()
    } else {
        spec.name.clone()
    };
    Route {
        name: NamespacedName::new(&service.name.namespace, &name),
        kind: RouteKind::Http,
        created: None,
        operation: spec.operation.clone(),
        rules: vec![Rule {
            name: None,
            matches: vec![spec.matched.clone()],
            filters,
            backends,
            timeouts: spec.timeouts,
            retry: spec.retry.clone(),
            hash_policy: spec.hash_policy.clone(),
        }],
    }
}

/// The route of a TCP chain whose tunnels go elsewhere than the port's own
/// `inbound-vip|<port>|tcp|<host>` cluster: one rule without matches over the chain's
/// clusters (another Service's, a subset's, or weighted clusters), each new tunnel drawing
/// one by weight. A cluster CDS does not know stays in the draw as an invalid backend: the
/// tunnels drawing it are closed (`NC`), as Envoy's are.
pub(super) fn tcp_routes(
    chain: &str,
    clusters: &[tcp_route::TcpCluster],
    service: &Arc<Service>,
    port: u16,
    resolve: &Backends<'_>,
) -> Option<PortRoutes> {
    let own = format!("inbound-vip|{port}|tcp|{}", service.hostname);
    if let [only] = clusters {
        if only.name == own {
            return None;
        }
    }
    let backends = clusters
        .iter()
        .map(|c| WeightedBackend {
            target: match resolve.cluster(&c.name) {
                Ok(b) => BackendTarget::Backend(b),
                Err(why) => BackendTarget::Invalid(why),
            },
            weight: c.weight,
            filters: Vec::new(),
        })
        .collect();
    let route = Arc::new(Route {
        name: NamespacedName::new(&service.name.namespace, chain),
        kind: RouteKind::Tcp,
        created: None,
        operation: None,
        rules: vec![Rule {
            name: None,
            matches: Vec::new(),
            filters: Vec::new(),
            backends,
            timeouts: Default::default(),
            retry: None,
            hash_policy: Vec::new(),
        }],
    });
    Some(PortRoutes {
        producer: RouteTable::ordered(&[route]),
        consumers: BTreeMap::new(),
        kind: Some(RouteKind::Tcp),
    })
}
