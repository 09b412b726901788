//! Endpoint selection for a chosen backend, as the cluster's load-balancing policy says:
//! round robin, random, least request (the less loaded of two random endpoints, Envoy's
//! default choice count; Istio's default policy), or consistent hashing ([`ring`],
//! [`maglev`]) for requests that have a hash.

pub mod locality;
pub mod maglev;
pub mod outlier;
pub mod ring;
pub mod slow_start;
pub mod weighted;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::model::{Endpoint, Service, ServicePort};

/// A load-balancing policy, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// In turn.
    #[default]
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// The endpoint with fewer requests in flight, of two drawn at random.
    LeastRequest,
    /// Consistent hashing over a ring of points (`RING_HASH`), sized within these bounds.
    RingHash(ring::RingSize),
    /// Consistent hashing over a Maglev table of this many slots (`MAGLEV`; a prime).
    Maglev(u64),
}

/// A port's balancing state, built with its endpoints.
#[derive(Debug, Default)]
pub enum Balancing {
    /// In turn.
    #[default]
    RoundRobin,
    /// Uniformly at random.
    Random,
    /// The less loaded of two random endpoints.
    LeastRequest,
    /// Consistent hashing; requests without a hash go round-robin.
    Hash(HashTable),
}

/// The table a request's hash is looked up in.
#[derive(Debug)]
pub enum HashTable {
    /// Envoy's ring hash.
    Ring(ring::Ring),
    /// Envoy's Maglev.
    Maglev(maglev::Maglev),
}

impl HashTable {
    /// The endpoint for `hash` among those `ok` accepts.
    pub fn get_where(&self, hash: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            HashTable::Ring(r) => r.get_where(hash, ok),
            HashTable::Maglev(m) => m.get_where(hash, ok),
        }
    }
}

impl Balancing {
    /// The state for `policy` over `endpoints`, weighted by `weights` (in endpoint order)
    /// where the policy builds a table.
    pub fn new(policy: Policy, endpoints: &[Endpoint], weights: Option<&[u32]>) -> Self {
        match policy {
            Policy::RoundRobin => Balancing::RoundRobin,
            Policy::Random => Balancing::Random,
            Policy::LeastRequest => Balancing::LeastRequest,
            Policy::RingHash(size) => {
                Balancing::Hash(HashTable::Ring(ring::Ring::new(endpoints, weights, size)))
            }
            Policy::Maglev(size) => Balancing::Hash(HashTable::Maglev(maglev::Maglev::new(
                endpoints, weights, size,
            ))),
        }
    }
}

/// The endpoints a pick must leave out: those outlier detection has ejected (at one
/// reading of the clock; none when the port is in panic), and those of a priority above
/// the lowest one that still has an endpoint to take the request (locality failover).
#[derive(Clone, Copy)]
struct Ejected<'a> {
    ejected: Option<(&'a outlier::Tracker, u64)>,
    level: Option<(&'a [u32], u32)>,
    /// The locality drawn by weight, when the port balances localities by weight.
    locality: Option<(&'a [u32], u32)>,
}

impl<'a> Ejected<'a> {
    fn of(port: &'a ServicePort) -> Self {
        let ejected = port.outlier().and_then(|t| {
            let now = outlier::now_ms();
            (!t.in_panic(now)).then_some((t, now))
        });
        let mut this = Ejected {
            ejected,
            level: None,
            locality: None,
        };
        if let Some(priorities) = port.priorities() {
            // Without ejections the level is the configuration's; only outlier detection
            // moves it, so only then is it looked for per pick.
            let lowest = match this.ejected {
                None => port.lowest_priority(),
                Some(_) => (0..port.endpoints.len())
                    .filter(|i| port.endpoints[*i].address().is_some() && !this.is_ejected(*i))
                    .map(|i| priorities[i])
                    .min(),
            };
            this.level = lowest.map(|l| (priorities, l));
        }
        this
    }

    /// Leaves out, as well, the endpoints outside a locality drawn by weight among those
    /// that can take the request (all of them when none can).
    fn in_weighted_locality(mut self, port: &'a ServicePort) -> Self {
        if let Some(l) = port.localities() {
            let usable = |i: usize| port.endpoints[i].address().is_some() && !self.contains(i);
            let chosen = l.choose(usable).unwrap_or(u32::MAX);
            self.locality = Some((l.of(), chosen));
        }
        self
    }

    fn is_ejected(self, i: usize) -> bool {
        self.ejected.is_some_and(|(t, now)| t.is_ejected(i, now))
    }

    fn contains(self, i: usize) -> bool {
        self.is_ejected(i)
            || self.level.is_some_and(|(p, level)| p[i] != level)
            || self.locality.is_some_and(|(of, l)| of[i] != l)
    }
}

/// Whether endpoint `i` can take a request: it has an address and is not ejected.
fn usable(port: &ServicePort, ejected: Ejected, i: usize) -> bool {
    port.endpoints[i].address().is_some() && !ejected.contains(i)
}

/// Indexes of the endpoints that can take a request.
fn candidates<'a>(
    port: &'a ServicePort,
    ejected: Ejected<'a>,
) -> impl Iterator<Item = usize> + Clone + 'a {
    (0..port.endpoints.len()).filter(move |i| usable(port, ejected, *i))
}

/// A random usable endpoint.
fn random(port: &ServicePort, ejected: Ejected) -> Option<usize> {
    use rand::seq::IteratorRandom;
    candidates(port, ejected).choose(&mut rand::thread_rng())
}

/// The endpoint with fewer requests in flight, of two distinct random ones. It runs per
/// request (Istio's default policy), so the common case, both draws usable, draws two
/// indexes without collecting anything.
fn least_request(port: &ServicePort, ejected: Ejected) -> Option<usize> {
    use rand::Rng;
    let load = |i: usize| port.active(i).load(Ordering::Relaxed);
    let n = port.endpoints.len();
    if n >= 2 {
        let mut rng = rand::thread_rng();
        let a = rng.gen_range(0..n);
        let b = (a + rng.gen_range(1..n)) % n;
        if usable(port, ejected, a) && usable(port, ejected, b) {
            return Some(if load(b) < load(a) { b } else { a });
        }
    }
    use rand::seq::IteratorRandom;
    let two = candidates(port, ejected).choose_multiple(&mut rand::thread_rng(), 2);
    two.into_iter().min_by_key(|i| load(*i))
}

/// Picks the next endpoint of `port` in round-robin order, skipping endpoints without an
/// address. `None` when the port has no usable endpoint.
pub fn round_robin(port: &ServicePort) -> Option<&Endpoint> {
    let none = Ejected {
        ejected: None,
        level: None,
        locality: None,
    };
    round_robin_index(port, none).map(|i| &port.endpoints[i])
}

fn round_robin_index(port: &ServicePort, ejected: Ejected) -> Option<usize> {
    let n = port.endpoints.len();
    if n == 0 {
        return None;
    }
    let start = port.next_index();
    (0..n)
        .map(|i| (start + i) % n)
        .find(|i| usable(port, ejected, *i))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::model::{Identity, NamespacedName, Protocol, Service, TargetPort, Workload};

    pub(super) fn ep(name: &str, ip: Option<&str>) -> Endpoint {
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

    fn service(policy: Policy) -> Arc<Service> {
        let port = ServicePort::new(
            None,
            80,
            TargetPort::Number(8080),
            Protocol::Http,
            vec![ep("a", Some("127.128.0.1")), ep("b", Some("127.128.0.2"))],
        )
        .with_balancing(policy);
        Arc::new(Service {
            name: NamespacedName::new("default", "svc"),
            hostname: "svc.default.svc.cluster.local".into(),
            vips: vec![],
            ranges: Vec::new(),
            ports: vec![port],
            served: true,
        })
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint_until_it_is_free() {
        let svc = service(Policy::LeastRequest);
        let backend = crate::route::Backend::Service {
            service: svc.clone(),
            port: 80,
        };
        let busy = pick(&backend, None).unwrap();
        let busy_name = busy.workload.name.name.clone();
        // With one request in flight on it, the other endpoint wins every draw of two.
        for _ in 0..20 {
            let p = pick(&backend, None).unwrap();
            assert_ne!(p.workload.name.name, busy_name);
        }
        assert_eq!(
            svc.ports[0].active(0).load(Ordering::Relaxed)
                + svc.ports[0].active(1).load(Ordering::Relaxed),
            1
        );
        drop(busy);
        assert_eq!(
            svc.ports[0].active(0).load(Ordering::Relaxed)
                + svc.ports[0].active(1).load(Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn random_and_hash_pick_addressed_endpoints() {
        let backend = crate::route::Backend::Service {
            service: service(Policy::Random),
            port: 80,
        };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            seen.insert(pick(&backend, None).unwrap().workload.name.name.clone());
        }
        assert_eq!(seen.len(), 2);
        let hashed = crate::route::Backend::Service {
            service: service(Policy::RingHash(ring::RingSize { min: 64, max: 64 })),
            port: 80,
        };
        let first = pick(&hashed, Some(42)).unwrap().workload.name.name.clone();
        for _ in 0..8 {
            assert_eq!(pick(&hashed, Some(42)).unwrap().workload.name.name, first);
        }
    }

    #[test]
    fn original_destination_is_the_authority_over_hbone_for_mesh_pods_only() {
        let ctx = crate::model::test_support::context();
        let outside = Arc::new(crate::model::Workload {
            hbone: false,
            ..(*ep("outside", None).workload).clone()
        });
        let original = crate::model::OriginalDst {
            port_override: Some(9443),
            workload: outside,
        };
        let port = ServicePort::new(None, 443, TargetPort::Number(443), Protocol::Tcp, vec![])
            .with_original_dst(Some(Arc::new(original)));
        let backend = crate::route::Backend::Service {
            service: Arc::new(Service {
                name: NamespacedName::new("default", "headless"),
                hostname: "headless.default.svc.cluster.local".into(),
                vips: vec![],
                ranges: Vec::new(),
                ports: vec![port],
                served: true,
            }),
            port: 443,
        };
        let crate::route::Backend::Service { service, .. } = &backend else {
            unreachable!()
        };
        let o = service.port(443).unwrap().original_dst().unwrap();
        // The test snapshot's mesh pod: HBONE to it, at the overriding port.
        let p = pick_original(
            &backend,
            o,
            "127.128.0.1:443".parse().unwrap(),
            &ctx.snapshot,
        )
        .unwrap();
        assert_eq!(p.address, "127.128.0.1:9443".parse().unwrap());
        assert!(p.workload.hbone);
        // Any other address: plain TCP.
        let p = pick_original(
            &backend,
            o,
            "127.200.0.9:443".parse().unwrap(),
            &ctx.snapshot,
        )
        .unwrap();
        assert_eq!(p.address, "127.200.0.9:9443".parse().unwrap());
        assert!(!p.workload.hbone);
        // Without the tunnel's destination there is nothing to pick.
        assert!(matches!(
            pick(&backend, None),
            Err(crate::ProxyError::NoHealthyUpstream(_))
        ));
    }
}

/// An endpoint chosen for one request or tunnel.
#[derive(Debug, Clone)]
pub struct Picked {
    /// `podIP:targetPort`.
    pub address: std::net::SocketAddr,
    /// The workload behind it (its identity and whether it speaks HBONE).
    pub workload: std::sync::Arc<crate::model::Workload>,
    /// Counts the request as in flight to the endpoint until dropped (least request).
    pub in_flight: Option<InFlight>,
    /// Where to report how the attempt ended, when the port has outlier detection.
    pub outlier: Option<OutlierReport>,
    /// TLS to originate to the endpoint inside the tunnel, if the port has it.
    pub tls: Option<Arc<crate::model::UpstreamTls>>,
    /// Limits on the upstream HTTP connections to the endpoint.
    pub connection_limits: Option<crate::model::ConnectionLimits>,
    /// The cap on the cluster's HTTP/2 connections, if the port has one.
    pub connection_cap: Option<Arc<crate::model::ConnectionCap>>,
    /// The PROXY protocol header to send first on each connection, if the port has one.
    pub proxy_protocol: Option<crate::model::ProxyProtocolVersion>,
}

impl Picked {
    /// Tells outlier detection how the attempt to this endpoint ended.
    pub fn report(&self, outcome: outlier::Outcome) {
        if let Some(r) = &self.outlier {
            r.report(outcome);
        }
    }
}

/// The endpoint an attempt went to, for outlier detection.
#[derive(Debug, Clone)]
pub struct OutlierReport {
    service: Arc<Service>,
    port: u16,
    endpoint: usize,
    address: std::net::SocketAddr,
    /// The state of a resolved address ([`crate::dns`]); `None`: the port's.
    tracker: Option<Arc<outlier::Tracker>>,
}

impl OutlierReport {
    /// Records `outcome` for the endpoint.
    pub fn report(&self, outcome: outlier::Outcome) {
        let tracker = match &self.tracker {
            Some(t) => Some(&**t),
            None => self.service.port(self.port).and_then(|p| p.outlier()),
        };
        if let Some(t) = tracker {
            if t.record(self.endpoint, outcome, outlier::now_ms()) {
                tracing::warn!(
                    service = %self.service.name,
                    port = self.port,
                    endpoint = %self.address,
                    "outlier detection ejected an endpoint"
                );
            }
        }
    }
}

/// A request counted in flight, to an endpoint (least request) and to its port (the
/// circuit breaker); the counts drop with it.
#[derive(Debug)]
pub struct InFlight {
    service: Arc<Service>,
    port: u16,
    endpoint: Option<usize>,
    counted: bool,
}

impl InFlight {
    fn add(&self, delta: isize) {
        let Some(p) = self.service.port(self.port) else {
            return;
        };
        let apply = |c: &std::sync::atomic::AtomicUsize| {
            if delta > 0 {
                c.fetch_add(1, Ordering::Relaxed);
            } else {
                c.fetch_sub(1, Ordering::Relaxed);
            }
        };
        if let Some(i) = self.endpoint {
            apply(p.active(i));
        }
        if self.counted {
            apply(p.requests());
        }
    }
}

impl Clone for InFlight {
    fn clone(&self) -> Self {
        self.add(1);
        Self {
            service: self.service.clone(),
            port: self.port,
            endpoint: self.endpoint,
            counted: self.counted,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.add(-1);
    }
}

/// The endpoint of a port whose upstream is a host name: an address it resolved to
/// ([`crate::dns`]), or 503 `UH` while it has none (or all are ejected). The port's
/// consistent hashing and outlier detection apply over the resolved addresses, as does its
/// circuit breaker; other policies take the addresses in turn.
fn pick_resolved(
    backend: &crate::route::Backend,
    service: &Arc<crate::model::Service>,
    sp: &ServicePort,
    dns: &crate::dns::DnsTarget,
    hash: Option<u64>,
) -> Result<Picked, crate::ProxyError> {
    let outlier = sp.outlier().map(|t| t.policy());
    let Some(p) = dns.pick_with(sp.policy(), outlier, hash) else {
        tracing::warn!(
            host = %dns.hostname,
            service = %service.name,
            "no healthy upstream: {} has no resolved address to take the request",
            dns.hostname
        );
        return Err(crate::ProxyError::NoHealthyUpstream(backend.describe()));
    };
    let mut picked = pick_address(backend, p.address, p.workload)?;
    picked.outlier = p.outlier.map(|(tracker, endpoint)| OutlierReport {
        service: service.clone(),
        port: sp.port,
        endpoint,
        address: p.address,
        tracker: Some(tracker),
    });
    Ok(picked)
}

/// The pick of a port whose upstream is not a list of endpoints, once its address is
/// known (a resolved name, or the host a request named): the port's circuit breaker
/// applies; balancing, least request and outlier detection do not.
pub fn pick_address(
    backend: &crate::route::Backend,
    address: std::net::SocketAddr,
    workload: Arc<crate::model::Workload>,
) -> Result<Picked, crate::ProxyError> {
    let crate::route::Backend::Service { service, port } = backend else {
        return Err(crate::ProxyError::Internal(format!(
            "{} is not a Service port",
            backend.describe()
        )));
    };
    let (service, port) = (service, *port);
    let sp = service.port(port).ok_or_else(|| {
        crate::ProxyError::Internal(format!("{} has no port {port}", service.name))
    })?;
    let counted = sp.counts_requests();
    if counted {
        let before = sp.requests().fetch_add(1, Ordering::Relaxed);
        if sp.max_requests().is_some_and(|max| before >= max) {
            sp.requests().fetch_sub(1, Ordering::Relaxed);
            return Err(crate::ProxyError::Overflow(backend.describe()));
        }
    }
    Ok(Picked {
        address,
        workload,
        in_flight: counted.then(|| InFlight {
            service: service.clone(),
            port,
            endpoint: None,
            counted,
        }),
        outlier: None,
        tls: sp.tls.clone(),
        connection_limits: sp.connection_limits,
        connection_cap: sp.connection_cap.clone(),
        proxy_protocol: sp.proxy_protocol,
    })
}

/// The endpoint of an original-destination port ([`crate::model::OriginalDst`]): the
/// tunnel's `authority` (its port replaced by the override, if any), reached over HBONE
/// when `snapshot` knows it as a mesh workload, else over plain TCP.
pub fn pick_original(
    backend: &crate::route::Backend,
    original: &crate::model::OriginalDst,
    authority: std::net::SocketAddr,
    snapshot: &crate::model::Snapshot,
) -> Result<Picked, crate::ProxyError> {
    let port = original.port_override.unwrap_or(authority.port());
    let address = std::net::SocketAddr::new(authority.ip(), port);
    let workload = match snapshot.workload(authority.ip()) {
        Some(w) if w.hbone => w.clone(),
        _ => original.workload.clone(),
    };
    pick_address(backend, address, workload)
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
            if let Some(unlisted) = sp.unlisted() {
                return match unlisted {
                    crate::model::Unlisted::Dns(dns) => {
                        pick_resolved(backend, service, sp, dns, hash)
                    }
                    // Needs the request's host: the binary resolves it ([`pick_address`]).
                    crate::model::Unlisted::ForwardProxy(_) => {
                        Err(ProxyError::NoHealthyUpstream(format!(
                            "{} (a forward proxy port needs an HTTP request's host)",
                            backend.describe()
                        )))
                    }
                    // Needs the tunnel's authority ([`pick_original`]).
                    crate::model::Unlisted::OriginalDst(_) => {
                        Err(ProxyError::NoHealthyUpstream(format!(
                            "{} (an original-destination port needs the tunnel's destination)",
                            backend.describe()
                        )))
                    }
                };
            }
            let ejected = Ejected::of(sp);
            let ramping = sp.slow_start().and_then(|s| {
                let now = outlier::now_ms();
                s.ramping(now).then_some((s, now))
            });
            let hashed = matches!((sp.balancing(), hash), (Balancing::Hash(_), Some(_)));
            let ejected = if hashed {
                ejected
            } else {
                ejected.in_weighted_locality(sp)
            };
            let index = match (sp.balancing(), hash) {
                (Balancing::Hash(ring), Some(h)) => ring.get_where(h, |i| !ejected.contains(i)),
                (b, _) if ramping.is_some() || sp.endpoint_weights().is_some() => {
                    // Endpoints that do not weigh the same: a draw by weight (times the
                    // slow-start factor), divided by requests in flight plus one under
                    // least request.
                    let least = matches!(b, Balancing::LeastRequest);
                    let share = |i: usize| {
                        let weight = sp.endpoint_weights().map_or(1.0, |w| f64::from(w[i]));
                        let ramp = ramping.map_or(1.0, |(s, now)| s.weight(i, now));
                        let cost = match least {
                            true => (sp.active(i).load(Ordering::Relaxed) + 1) as f64,
                            false => 1.0,
                        };
                        weight * ramp / cost
                    };
                    weighted::draw(candidates(sp, ejected), share)
                }
                (Balancing::Random, _) => random(sp, ejected),
                (Balancing::LeastRequest, _) => least_request(sp, ejected),
                _ => round_robin_index(sp, ejected),
            };
            let i = index.ok_or_else(|| ProxyError::NoHealthyUpstream(backend.describe()))?;
            let ep = &sp.endpoints[i];
            // The circuit breaker: a request beyond the port's limit is not sent.
            let counted = sp.counts_requests();
            if counted {
                let before = sp.requests().fetch_add(1, Ordering::Relaxed);
                if sp.max_requests().is_some_and(|max| before >= max) {
                    sp.requests().fetch_sub(1, Ordering::Relaxed);
                    return Err(ProxyError::Overflow(backend.describe()));
                }
            }
            let least = matches!(sp.balancing(), Balancing::LeastRequest);
            if least {
                sp.active(i).fetch_add(1, Ordering::Relaxed);
            }
            let active = (least || counted).then(|| InFlight {
                service: service.clone(),
                port: *port,
                endpoint: least.then_some(i),
                counted,
            });
            Ok(Picked {
                address: ep.address().expect("balancers return addressed endpoints"),
                workload: ep.workload.clone(),
                in_flight: active,
                outlier: sp.outlier().map(|_| OutlierReport {
                    service: service.clone(),
                    port: *port,
                    endpoint: i,
                    address: ep.address().expect("balancers return addressed endpoints"),
                    tracker: None,
                }),
                tls: sp.tls.clone(),
                connection_limits: sp.connection_limits,
                connection_cap: sp.connection_cap.clone(),
                proxy_protocol: sp.proxy_protocol,
            })
        }
        Backend::Workload { workload, port } => {
            let ip = workload
                .primary_ip()
                .ok_or_else(|| ProxyError::NoHealthyUpstream(backend.describe()))?;
            Ok(Picked {
                address: std::net::SocketAddr::new(ip, *port),
                workload: workload.clone(),
                in_flight: None,
                outlier: None,
                tls: None,
                connection_limits: None,
                connection_cap: None,
                proxy_protocol: None,
            })
        }
    }
}
