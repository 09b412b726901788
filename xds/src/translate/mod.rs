//! Envoy resources, as istiod sends them to a waypoint, into the model.
//!
//! Each resource is validated on its own ([`listener::convert`], [`cluster::convert`],
//! [`endpoint::convert`]); a resource outside the supported subset is an
//! [`InvalidResource`] (NACKed with that reason) and never half-applied. [`build`] then
//! combines the accepted resources into a complete [`Snapshot`]. [`rbac`] converts the
//! RBAC filters' configurations.

pub mod access_log;
pub mod cluster;
mod cluster_fields;
mod cluster_hash;
mod connection_manager;
pub mod endpoint;
mod error;
pub mod ext_authz;
pub mod forward_proxy;
mod grpc_access_log;
mod header_case;
pub mod inline_cluster;
pub mod jwt;
pub mod listener;
mod matcher;
mod metadata;
mod outlier;
pub mod per_filter;
mod protocol_options;
pub mod provider_cluster;
mod proxy_protocol;
pub mod rbac;
mod residual;
pub mod route;
mod routes;
pub mod secret;
mod slow_start;
mod stats;
mod tcp_proxy;
pub mod tcp_route;
mod telemetry;
pub mod tracing;
mod upstream_connection;
pub mod upstream_tls;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use filters::model::{
    route_key, ConflictingAddress, Endpoint, Identity, NamespacedName, Service, ServicePort,
    Snapshot, SnapshotParts, TargetPort, Waypoint, Workload,
};
use filters::route::model::Route;
use filters::route::{PortRoutes, RouteTable};

pub use cluster::ClusterInfo;
pub use endpoint::EndpointInfo;
pub use error::InvalidResource;
pub use listener::{Chain, ListenerInfo};
use routes::{route, subset_backends, tcp_routes, Backends};

/// The accepted resources of every type, by name.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    /// Listeners.
    pub listeners: BTreeMap<String, ListenerInfo>,
    /// Clusters.
    pub clusters: BTreeMap<String, ClusterInfo>,
    /// `outbound|<port>||<host>` EDS clusters (extension providers' servers), by name: not
    /// routable; their Services let the ext_authz client reach the server.
    pub outbound: BTreeMap<String, ClusterInfo>,
    /// Endpoints, by EDS resource name.
    pub endpoints: BTreeMap<String, Vec<EndpointInfo>>,
    /// Route configurations from RDS, by name.
    pub routes: BTreeMap<String, Vec<route::RouteSpec>>,
    /// The secrets istiod serves over ADS, by name: CA bundles (`configmap://…-cacert`,
    /// `kubernetes://…-cacert`) and client certificates (`kubernetes://…`).
    pub secrets: BTreeMap<String, secret::AdsSecret>,
}

impl Resources {
    /// The RDS names the listeners refer to.
    pub fn rds_names(&self) -> std::collections::BTreeSet<String> {
        self.listeners
            .values()
            .flat_map(|l| l.chains.iter())
            .filter_map(|(_, c)| match c {
                Chain::Http { rds, .. } => rds.clone(),
                Chain::Tcp { .. } => None,
            })
            .collect()
    }

    /// The ADS secrets the clusters' TLS verifies with or presents.
    pub fn secret_names(&self) -> std::collections::BTreeSet<String> {
        self.clusters
            .values()
            .flat_map(|c| [&c.tls_secrets.roots, &c.tls_secrets.certificate])
            .filter_map(|n| n.clone())
            .collect()
    }
}

/// Why a part of a resource is refused: the field path and what is wrong there.
pub type Bad = (String, String);

/// A protobuf `Duration` as Envoy reads a timeout: `None` when absent or zero.
fn duration(d: Option<&envoy_types::pb::google::protobuf::Duration>) -> Option<Duration> {
    let d = d?;
    let total = Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32);
    (!total.is_zero()).then_some(total)
}

/// What the snapshot is built for.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Snapshot version.
    pub version: u64,
    /// `xds:<server>`.
    pub source: String,
    /// The waypoint itself.
    pub waypoint: Waypoint,
}

/// Parses a `main_internal` chain name: `inbound-vip|<port>||<host>-<http|tcp>`.
fn vip_chain(name: &str) -> Option<(u16, &str)> {
    let rest = name.strip_prefix("inbound-vip|")?;
    let (port, rest) = rest.split_once('|')?;
    let host = rest.strip_prefix('|')?;
    let host = host
        .strip_suffix("-http")
        .or_else(|| host.strip_suffix("-tcp"))
        .unwrap_or(host);
    Some((port.parse().ok()?, host))
}

/// Combines accepted resources into a snapshot: the addresses `main_internal` serves,
/// workloads from endpoints, Services from clusters, then per served port its routes, RBAC
/// chain and JWT rules, and the tracing settings.
pub fn build(res: &Resources, opts: &BuildOptions) -> Result<Snapshot, ConflictingAddress> {
    let main = res.listeners.get("main_internal");
    let (vips, served_pods) = served_addresses(main);
    let workloads = workloads(res, &opts.waypoint.trust_domain, &served_pods);
    let td = opts.waypoint.trust_domain.as_str();
    let services = services(res, &vips, &workloads, td);
    let by_host: BTreeMap<String, Arc<Service>> = services
        .iter()
        .map(|s| (s.hostname.clone(), s.clone()))
        .collect();
    let backends = Backends {
        res,
        subsets: subset_backends(res, &by_host, &workloads, td),
        by_host,
    };
    let chains = main.map(|l| port_chains(l, &backends)).unwrap_or_default();
    let mut telemetry = telemetry::config(main, &opts.waypoint);
    telemetry.listener_logs = telemetry::listener_logs(res);
    if let Some(l) = main {
        telemetry.service_access_logs =
            telemetry::service_access_logs(l, &backends.by_host, &telemetry);
        telemetry.service_metric_overrides =
            telemetry::service_metric_overrides(l, &backends.by_host, &telemetry);
    }
    Snapshot::new(SnapshotParts {
        version: opts.version,
        source: opts.source.clone(),
        waypoint: opts.waypoint.clone(),
        services,
        workloads: workloads.into_values().collect(),
        routes: chains.routes,
        authz: filters::authz::PolicySet::rbac(chains.rbac, normalization(main)),
        authn: chains.authn,
        telemetry,
        request_headers: request_headers(main),
    })
}

/// The addresses `main_internal`'s chain matcher serves, by host: Service VIPs (single
/// addresses) and ranges (a ServiceEntry's CIDR `addresses`, which istiod writes into the
/// IP matcher as they are, `ConvertAddressToCidr`); and the pod IPs addressed directly
/// (`direct-http` / `direct-tcp` chains).
fn served_addresses(main: Option<&ListenerInfo>) -> (BTreeMap<&str, Served>, Vec<IpAddr>) {
    let mut served_pods: Vec<IpAddr> = Vec::new();
    let mut vips: BTreeMap<&str, Served> = BTreeMap::new();
    if let Some(l) = main {
        for m in &l.matches {
            for net in &m.ips {
                let ip = net.addr();
                match vip_chain(&m.chain) {
                    Some((_, host)) => {
                        let v = vips.entry(host).or_default();
                        if net.prefix_len() < net.max_prefix_len() {
                            let net = net.trunc();
                            if !v.ranges.contains(&net) {
                                v.ranges.push(net);
                            }
                        } else if !v.vips.contains(&ip) {
                            v.vips.push(ip);
                        }
                    }
                    None if m.chain.starts_with("direct-") => served_pods.push(ip),
                    None => {}
                }
            }
        }
    }
    (vips, served_pods)
}

/// What `main_internal` serves of one host.
#[derive(Debug, Default, Clone)]
struct Served {
    vips: Vec<IpAddr>,
    ranges: Vec<ipnet::IpNet>,
}

/// Workloads, one per pod (keyed by the endpoint address), with the further IPs of
/// dual-stack endpoints.
fn workloads(
    res: &Resources,
    trust_domain: &str,
    served_pods: &[IpAddr],
) -> BTreeMap<IpAddr, Arc<Workload>> {
    let mut workloads: BTreeMap<IpAddr, Arc<Workload>> = BTreeMap::new();
    let inline = res
        .clusters
        .values()
        .filter_map(|c| c.inline_endpoints.as_ref());
    for eps in res.endpoints.values().chain(inline) {
        for e in eps {
            let ip = e.address.ip();
            let w = workloads
                .entry(ip)
                .or_insert_with(|| Arc::new(workload(e, trust_domain, served_pods.contains(&ip))));
            // A pod's further IPs (dual stack), from whichever endpoint of it carries them.
            if e.additional.iter().any(|a| !w.ips.contains(a)) {
                let w = Arc::make_mut(w);
                for a in &e.additional {
                    if !w.ips.contains(a) {
                        w.ips.push(*a);
                    }
                }
            }
        }
    }
    workloads
}

/// Services from the clusters (and the outbound clusters of extension providers), grouped
/// by host; served when `main_internal` serves a VIP.
fn services(
    res: &Resources,
    vips: &BTreeMap<&str, Served>,
    workloads: &BTreeMap<IpAddr, Arc<Workload>>,
    trust_domain: &str,
) -> Vec<Arc<Service>> {
    let mut by_host: BTreeMap<&str, Vec<&ClusterInfo>> = BTreeMap::new();
    for c in res.clusters.values().filter(|c| c.subset.is_none()) {
        by_host.entry(c.host.as_str()).or_default().push(c);
    }
    // An extension provider's server: its cluster's port, unless an inbound-vip cluster of
    // the same Service port (this waypoint serves it) stands for it already.
    for c in res.outbound.values() {
        let ports = by_host.entry(c.host.as_str()).or_default();
        if !ports.iter().any(|p| p.port == c.port) {
            ports.push(c);
        }
    }
    let tcp = tcp_settings(res);
    let mut services = Vec::new();
    for (host, clusters) in &by_host {
        let first = clusters[0];
        let ports = clusters
            .iter()
            .map(|c| {
                let port = service_port(c, res, workloads, trust_domain);
                match tcp.get(&(*host, c.port)) {
                    Some((t, cluster)) => {
                        // The chain's cluster decides the tunnel's HTTP version, as in
                        // Envoy: HTTP/2 when it has HTTP/2 options.
                        let http2 = res.clusters.get(*cluster).is_some_and(|c| c.http2_options);
                        port.with_tcp_limits(t.limits)
                            .with_hash_policy(t.hash_policy.clone())
                            .with_tcp_tunnel(t.tunnel.clone().map(|t| t.over_http2(http2)))
                    }
                    None => port,
                }
            })
            .collect();
        let v = vips.get(host).cloned().unwrap_or_default();
        services.push(Arc::new(Service {
            name: NamespacedName::new(&first.namespace, &first.service),
            hostname: host.to_string(),
            served: !v.vips.is_empty() || !v.ranges.is_empty(),
            vips: v.vips,
            ranges: v.ranges,
            ports,
        }));
    }
    services
}

/// The TCP proxy settings of each Service port `main_internal` serves over TCP, with the
/// chain's cluster, by host and port.
fn tcp_settings(res: &Resources) -> BTreeMap<(&str, u16), (&tcp_proxy::TcpSettings, &str)> {
    let Some(main) = res.listeners.get("main_internal") else {
        return BTreeMap::new();
    };
    main.chains
        .iter()
        .filter_map(|(name, chain)| match chain {
            // Several clusters: the first one's (istiod takes the settings from the first
            // route's destination too).
            Chain::Tcp {
                settings, clusters, ..
            } => vip_chain(name).and_then(|(port, host)| {
                let first = clusters.first()?;
                Some(((host, port), (settings, first.name.as_str())))
            }),
            Chain::Http { .. } => None,
        })
        .collect()
}

/// The Service port a cluster stands for, with the endpoints EDS sent for it.
fn service_port(
    c: &ClusterInfo,
    res: &Resources,
    workloads: &BTreeMap<IpAddr, Arc<Workload>>,
    trust_domain: &str,
) -> ServicePort {
    let assigned = match &c.inline_endpoints {
        Some(inline) => Some(inline),
        None => res.endpoints.get(&c.eds_name),
    };
    let mut localities = Vec::new();
    let mut locality_weights: Vec<u32> = Vec::new();
    let mut weights: Vec<u32> = Vec::new();
    let (eps, priorities): (Vec<Endpoint>, Vec<u32>) = assigned
        .into_iter()
        .flatten()
        .filter(|e| {
            let left_out = c.leaves_out_sidecar_mtls && e.sidecar_mtls && !e.hbone;
            if left_out {
                ::tracing::warn!(cluster = %c.name, endpoint = %e.address, "a sidecar endpoint needs Istio mTLS, which the waypoint does not originate to an extension provider; left out");
            }
            !left_out
        })
        .filter_map(|e| {
            workloads.get(&e.address.ip()).map(|w| {
                let ep = Endpoint {
                    workload: w.clone(),
                    port: e.address.port(),
                };
                let l = e.locality as usize;
                if locality_weights.len() <= l {
                    locality_weights.resize(l + 1, 0);
                }
                locality_weights[l] = e.locality_weight;
                localities.push(e.locality);
                weights.push(e.weight);
                (ep, e.priority)
            })
        })
        .unzip();
    let target = eps.first().map(|e| e.port).unwrap_or(c.port);
    let dns = c.dns.as_ref().map(|d| {
        let workload = Workload {
            name: NamespacedName::new(&c.namespace, &d.hostname),
            ips: Vec::new(),
            identity: filters::model::Identity::new(trust_domain, &c.namespace, ""),
            labels: Default::default(),
            hbone: false,
            served: false,
            named_ports: Default::default(),
        };
        Arc::new(filters::dns::DnsTarget::new(
            &d.hostname,
            d.port,
            d.logical,
            workload,
        ))
    });
    let target = dns.as_ref().map(|d| d.port).unwrap_or(target);
    let forward_proxy = c.forward_proxy.as_ref().map(|cache| {
        Arc::new(filters::forward_proxy::ForwardProxy {
            cache: cache.name.clone(),
            wildcard: None,
            max_hosts: cache.max_hosts,
            host_ttl: cache.host_ttl,
            workload: outside(c, trust_domain),
        })
    });
    let original_dst = c.original_dst.map(|port_override| {
        Arc::new(filters::model::OriginalDst {
            port_override,
            workload: outside(c, trust_domain),
        })
    });
    ServicePort::new(None, c.port, TargetPort::Number(target), c.protocol, eps)
        .with_dns(dns)
        .with_forward_proxy(forward_proxy)
        .with_original_dst(original_dst)
        .with_priorities(priorities)
        .with_endpoint_weights(weights)
        .with_locality_weights(
            c.locality_weighted
                .then_some((localities, locality_weights)),
        )
        .with_balancing(c.balancing)
        .with_slow_start(c.slow_start)
        .with_max_requests(c.max_requests)
        .with_connection_cap(c.connection_cap.clone())
        .with_outlier(c.outlier.clone())
        .with_tls(cluster_tls(c, res))
        .with_proxy_protocol(c.proxy_protocol)
        .with_retry_limit(c.retry_limit)
        .with_upstream_protocol(c.upstream_protocol)
        .with_connection_limits(Some(c.connection_limits))
}

/// The cluster's TLS, with the CA bundle and the client certificate of its ADS secrets
/// when it names them. Until a secret has arrived its part stays empty, so every handshake
/// fails, as Envoy's does while a secret is missing.
fn cluster_tls(c: &ClusterInfo, res: &Resources) -> Option<filters::model::UpstreamTls> {
    use secret::AdsSecret;
    let mut tls = c.tls.clone()?;
    let missing = |name: &str, role: &str, got: Option<&AdsSecret>| match got {
        None => {
            ::tracing::warn!(cluster = %c.name, secret = %name, role, "the secret has not arrived; TLS handshakes fail until it does")
        }
        Some(other) => {
            ::tracing::warn!(cluster = %c.name, secret = %name, role, got = other.kind(), "the secret is not what the cluster needs; TLS handshakes fail")
        }
    };
    if let Some(name) = &c.tls_secrets.roots {
        match res.secrets.get(name) {
            Some(AdsSecret::CaBundle { roots, crl }) => {
                tls.roots = filters::model::TlsRoots::Pem(roots.clone());
                // The secret's CRL replaces the cluster's own, as Envoy merges the secret
                // into the default validation context.
                if let Some(crl) = crl {
                    tls.crl = Some(filters::model::Crl::Pem(crl.clone()));
                }
            }
            other => missing(name, "CA bundle", other),
        }
    }
    if let Some(name) = &c.tls_secrets.certificate {
        match res.secrets.get(name) {
            Some(AdsSecret::Certificate { chain, key }) => {
                tls.client_certificate = Some(filters::model::ClientCertificate::Pem {
                    chain: chain.clone(),
                    key: key.clone(),
                })
            }
            other => missing(name, "client certificate", other),
        }
    }
    Some(tls)
}

/// The workload an address outside the mesh stands for, for the cluster `c`'s Service.
fn outside(c: &ClusterInfo, trust_domain: &str) -> Arc<Workload> {
    Arc::new(Workload {
        name: NamespacedName::new(&c.namespace, &c.host),
        ips: Vec::new(),
        identity: filters::model::Identity::new(trust_domain, &c.namespace, ""),
        labels: Default::default(),
        hbone: false,
        served: false,
        named_ports: Default::default(),
    })
}

/// The path normalization of the HTTP chains (istiod gives every chain the same, from
/// MeshConfig `pathNormalization`); Istio's default (BASE) without one.
fn normalization(main: Option<&ListenerInfo>) -> filters::authz::path::Normalization {
    main.and_then(|l| {
        l.chains.iter().find_map(|(_, c)| match c {
            Chain::Http { normalization, .. } => Some(*normalization),
            Chain::Tcp { .. } => None,
        })
    })
    .unwrap_or_default()
}

/// The request-header settings of the HTTP chains (istiod gives every chain the same);
/// Envoy's defaults without one.
fn request_headers(main: Option<&ListenerInfo>) -> filters::model::RequestHeaders {
    main.and_then(|l| {
        l.chains.iter().find_map(|(_, c)| match c {
            Chain::Http {
                request_headers, ..
            } => Some(request_headers.clone()),
            Chain::Tcp { .. } => None,
        })
    })
    .unwrap_or_default()
}

/// What the `main_internal` chains give each served Service port.
#[derive(Default)]
struct PortChains {
    routes: BTreeMap<String, PortRoutes>,
    rbac: filters::authz::RbacChains,
    authn: filters::authn::JwtRules,
}

/// Routes (inline or from RDS), the RBAC chain and JWT rules of every served Service port.
fn port_chains(l: &ListenerInfo, backends: &Backends<'_>) -> PortChains {
    let (res, by_host) = (backends.res, &backends.by_host);
    let mut out = PortChains::default();
    for (name, chain) in &l.chains {
        let Some((port, host)) = vip_chain(name) else {
            continue;
        };
        let Some(service) = by_host.get(host) else {
            continue;
        };
        let authz = match chain {
            Chain::Http { authz, .. } | Chain::Tcp { authz, .. } => authz,
        };
        if let Chain::Http { jwt, .. } = chain {
            if !jwt.is_empty() {
                out.authn
                    .services
                    .entry(service.name.to_string())
                    .or_insert_with(|| jwt.clone());
            }
        }
        if !authz.is_empty() {
            out.rbac
                .0
                .insert(route_key(&service.name, port), Arc::new(authz.clone()));
        }
        let (routes, rds) = match chain {
            Chain::Http { routes, rds, .. } => (routes, rds),
            Chain::Tcp { clusters, .. } => {
                if let Some(table) = tcp_routes(name, clusters, service, port, backends) {
                    out.routes.insert(route_key(&service.name, port), table);
                }
                continue;
            }
        };
        // Routes from RDS that have not arrived yet leave the port without routes (the
        // Service is used as is) until they do.
        let routes = match rds {
            Some(name) => res.routes.get(name).map(Vec::as_slice).unwrap_or(&[]),
            None => routes.as_slice(),
        };
        let compiled: Vec<Arc<Route>> = routes
            .iter()
            .map(|spec| Arc::new(route(spec, service, backends)))
            .collect();
        let table = PortRoutes {
            producer: RouteTable::ordered(&compiled),
            consumers: BTreeMap::new(),
            kind: None,
        };
        out.routes.insert(route_key(&service.name, port), table);
    }
    out
}

fn workload(e: &EndpointInfo, trust_domain: &str, served: bool) -> Workload {
    let ip = e.address.ip();
    let (name, ns, labels) = match &e.workload {
        Some(w) => {
            let mut labels = BTreeMap::new();
            labels.insert(
                "service.istio.io/canonical-name".to_string(),
                w.canonical_service.clone(),
            );
            labels.insert(
                "service.istio.io/canonical-revision".to_string(),
                w.canonical_revision.clone(),
            );
            labels.insert("app".to_string(), w.canonical_service.clone());
            labels.insert("version".to_string(), w.canonical_revision.clone());
            (w.name.clone(), w.namespace.clone(), labels)
        }
        None => (ip.to_string(), "unknown".to_string(), BTreeMap::new()),
    };
    Workload {
        name: NamespacedName::new(&ns, &name),
        // The endpoint's address first: it is the one connections try first.
        ips: std::iter::once(ip)
            .chain(e.additional.iter().copied())
            .collect(),
        // EDS does not carry the service account: the destination must present an
        // identity of the trust domain (as Istio's connect_originate cluster checks).
        identity: Identity::new(trust_domain, &ns, ""),
        labels,
        hbone: e.hbone,
        served,
        named_ports: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests;
