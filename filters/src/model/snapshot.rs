use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::{Serialize, Serializer};

pub use super::service_port::{OriginalDst, ServicePort, Unlisted};
use super::{Identity, Protocol};

/// A Kubernetes `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespacedName {
    /// The namespace.
    pub namespace: String,
    /// The object name.
    pub name: String,
}

impl NamespacedName {
    /// Builds a `namespace/name`.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Serialize for NamespacedName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The waypoint itself: its `Gateway` and trust domain.
#[derive(Debug, Clone, Serialize)]
pub struct Waypoint {
    /// The waypoint's `Gateway` (gatewayClassName `istio-waypoint`).
    pub gateway: NamespacedName,
    /// The SPIFFE trust domain peers must belong to.
    pub trust_domain: String,
}

/// A pod (or other workload) the waypoint knows about.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// The pod's `namespace/name`.
    pub name: NamespacedName,
    /// Pod IPs, IPv4 first.
    pub ips: Vec<IpAddr>,
    /// The workload's SPIFFE identity (from its service account).
    pub identity: Identity,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// Whether the pod is in the ambient mesh (reached over HBONE); otherwise plain TCP.
    pub hbone: bool,
    /// Whether this waypoint serves traffic addressed to the pod IP itself.
    pub served: bool,
    /// Named container ports, for `targetPort: <name>`.
    pub named_ports: BTreeMap<String, u16>,
}

impl Workload {
    /// The address used to reach this workload.
    pub fn primary_ip(&self) -> Option<IpAddr> {
        self.ips.first().copied()
    }
}

/// A Service `targetPort`: a number or a container port name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A container port name.
    Named(String),
}

/// A workload and the port it serves a Service port on.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The backing workload.
    pub workload: Arc<Workload>,
    /// The resolved target port on the workload.
    pub port: u16,
}

impl Endpoint {
    /// `podIP:targetPort`, if the workload has an IP.
    pub fn address(&self) -> Option<SocketAddr> {
        self.workload
            .primary_ip()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Endpoint", 3)?;
        st.serialize_field("workload", &self.workload.name)?;
        st.serialize_field("address", &self.address().map(|a| a.to_string()))?;
        st.serialize_field("hbone", &self.workload.hbone)?;
        st.end()
    }
}

/// A Kubernetes Service the waypoint serves.
#[derive(Debug, Serialize)]
pub struct Service {
    /// `namespace/name`.
    pub name: NamespacedName,
    /// `<name>.<namespace>.svc.<domain>`.
    pub hostname: String,
    /// Cluster IPs.
    pub vips: Vec<IpAddr>,
    /// Address ranges (a ServiceEntry's CIDR `addresses`): every address inside serves as
    /// a VIP of this Service, the exact VIPs of any Service first, then the longest range.
    #[serde(serialize_with = "ser_nets")]
    pub ranges: Vec<ipnet::IpNet>,
    /// Ports, in declaration order.
    pub ports: Vec<ServicePort>,
    /// Whether this waypoint serves the Service's VIPs (it uses this waypoint). Services
    /// that are not served are still known, as route backends.
    pub served: bool,
}

impl Service {
    /// The Service port numbered `port`.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

/// What a CONNECT authority resolved to.
#[derive(Debug, Clone)]
pub enum Target {
    /// A Service VIP and port.
    Service {
        /// The Service.
        service: Arc<Service>,
        /// The Service port number.
        port: u16,
    },
    /// A pod IP and port (workload-addressed traffic).
    Workload {
        /// The pod.
        workload: Arc<Workload>,
        /// The port on the pod.
        port: u16,
    },
}

impl Target {
    /// The protocol tunnels to this target carry.
    pub fn protocol(&self) -> Protocol {
        match self {
            Target::Service { service, port } => service
                .port(*port)
                .map(|p| p.protocol)
                .unwrap_or(Protocol::Unknown),
            Target::Workload { .. } => Protocol::Unknown,
        }
    }

    /// The addressed Service's name; `None` for a pod.
    pub fn service_name(&self) -> Option<&NamespacedName> {
        match self {
            Target::Service { service, .. } => Some(&service.name),
            Target::Workload { .. } => None,
        }
    }

    /// A short label for logs: `svc ns/name:port` or `pod ns/name:port`.
    pub fn describe(&self) -> String {
        match self {
            Target::Service { service, port } => format!("service {}:{port}", service.name),
            Target::Workload { workload, port } => format!("pod {}:{port}", workload.name),
        }
    }
}

/// An error building a snapshot: two objects claim the same address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{address} is claimed by both {first} and {second}")]
pub struct ConflictingAddress {
    /// The contested `ip:port` or IP.
    pub address: String,
    /// The first claimant.
    pub first: String,
    /// The second claimant.
    pub second: String,
}

/// The key of a Service port in [`Snapshot::routes`].
pub fn route_key(service: &NamespacedName, port: u16) -> String {
    format!("{service}:{port}")
}

/// Calls `f` with the key of `service` in per-Service tables: `namespace/name`, with
/// `:port` when given ([`route_key`]). Built on the stack: requests look tables up by
/// it, and should not allocate to do so.
pub fn with_key<R>(service: &NamespacedName, port: Option<u16>, f: impl FnOnce(&str) -> R) -> R {
    let mut buf = [0u8; 400];
    let (ns, name) = (service.namespace.as_bytes(), service.name.as_bytes());
    let mut digits = [0u8; 6];
    let mut d = digits.len();
    if let Some(mut p) = port {
        loop {
            d -= 1;
            digits[d] = b'0' + (p % 10) as u8;
            p /= 10;
            if p == 0 {
                break;
            }
        }
        d -= 1;
        digits[d] = b':';
    }
    let suffix = &digits[d..];
    let len = ns.len() + 1 + name.len() + suffix.len();
    if len > buf.len() {
        return f(&match port {
            Some(p) => route_key(service, p),
            None => service.to_string(),
        });
    }
    let mut at = 0;
    for part in [ns, b"/", name, suffix] {
        buf[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    f(std::str::from_utf8(&buf[..len]).expect("built from str and ASCII"))
}

/// Calls `f` with the per-Service table key of `service` ([`with_key`], no port), or with
/// `None` for a pod.
pub fn with_service_key<R>(
    service: Option<&NamespacedName>,
    f: impl FnOnce(Option<&str>) -> R,
) -> R {
    match service {
        Some(s) => with_key(s, None, |key| f(Some(key))),
        None => f(None),
    }
}

/// What is bound to a destination: `gateway`'s entries, then `service`'s. Borrowed when
/// either is empty (the common case), so a request copies nothing.
pub fn bound<'a, T: Clone>(
    gateway: &'a [T],
    service: Option<&'a Vec<T>>,
) -> std::borrow::Cow<'a, [T]> {
    use std::borrow::Cow;
    match service {
        Some(list) if gateway.is_empty() => Cow::Borrowed(list),
        Some(list) if !list.is_empty() => Cow::Owned([gateway, list].concat()),
        _ => Cow::Borrowed(gateway),
    }
}

/// One immutable, complete configuration: the route tables.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    /// Monotonic version, bumped on every accepted change.
    version: u64,
    /// Where this configuration came from (`file:<path>`, `xds:<server>`).
    source: String,
    /// The waypoint itself.
    waypoint: Waypoint,
    /// Every Service known (served or not), by `namespace/name`.
    services: BTreeMap<String, Arc<Service>>,
    /// Every workload known, by IP.
    workloads: BTreeMap<IpAddr, Arc<Workload>>,
    /// HTTPRoutes/GRPCRoutes by Service port (`namespace/name:port`). Kept apart from the
    /// Services so that routes can name any Service as a backend without reference cycles.
    routes: BTreeMap<String, crate::route::PortRoutes>,
    /// AuthorizationPolicies that apply to this waypoint.
    authz: crate::authz::PolicySet,
    /// RequestAuthentication JWT rules that apply to this waypoint.
    authn: crate::authn::JwtRules,
    /// Access log and tracing settings.
    telemetry: super::telemetry::TelemetryConfig,
    /// What happens to request headers before routing.
    request_headers: super::RequestHeaders,
    #[serde(skip)]
    vips: HashMap<SocketAddr, (Arc<Service>, u16)>,
    /// The served Services' address ranges, longest prefix first.
    #[serde(skip)]
    ranges: Vec<(ipnet::IpNet, Arc<Service>)>,
}

fn ser_nets<S: Serializer>(nets: &[ipnet::IpNet], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(nets.iter().map(ToString::to_string))
}

/// Everything a snapshot holds, as a configuration source assembles it: both sources
/// fill every part and hand it to [`Snapshot::new`] once.
#[derive(Debug)]
pub struct SnapshotParts {
    /// Monotonic version (above the current snapshot's).
    pub version: u64,
    /// Where this configuration came from (`file:<path>`, `xds:<server>`).
    pub source: String,
    /// The waypoint itself.
    pub waypoint: Waypoint,
    /// Every Service known (served or not).
    pub services: Vec<Arc<Service>>,
    /// Every workload known.
    pub workloads: Vec<Arc<Workload>>,
    /// Route tables by Service port (`namespace/name:port`).
    pub routes: BTreeMap<String, crate::route::PortRoutes>,
    /// How traffic is authorized.
    pub authz: crate::authz::PolicySet,
    /// RequestAuthentication JWT rules.
    pub authn: crate::authn::JwtRules,
    /// Access log and tracing settings.
    pub telemetry: super::telemetry::TelemetryConfig,
    /// What happens to request headers before routing.
    pub request_headers: super::RequestHeaders,
}

impl SnapshotParts {
    /// Parts with nothing in them yet but the version, source and waypoint.
    pub fn empty(version: u64, source: String, waypoint: Waypoint) -> Self {
        Self {
            version,
            source,
            waypoint,
            services: Vec::new(),
            workloads: Vec::new(),
            routes: BTreeMap::new(),
            authz: Default::default(),
            authn: Default::default(),
            telemetry: Default::default(),
            request_headers: Default::default(),
        }
    }
}

impl Snapshot {
    /// Builds a snapshot from all its parts, with its lookup indexes; fails if two Services
    /// share a `VIP:port` or two workloads share an IP.
    pub fn new(parts: SnapshotParts) -> Result<Self, ConflictingAddress> {
        let SnapshotParts {
            version,
            source,
            waypoint,
            services,
            workloads,
            routes,
            authz,
            authn,
            telemetry,
            request_headers,
        } = parts;
        let mut by_ip: BTreeMap<IpAddr, Arc<Workload>> = BTreeMap::new();
        for w in workloads {
            for ip in &w.ips {
                if let Some(prev) = by_ip.insert(*ip, w.clone()) {
                    return Err(ConflictingAddress {
                        address: ip.to_string(),
                        first: format!("Pod {}", prev.name),
                        second: format!("Pod {}", w.name),
                    });
                }
            }
        }
        let mut vips = HashMap::new();
        let mut ranges: Vec<(ipnet::IpNet, Arc<Service>)> = Vec::new();
        let mut by_name = BTreeMap::new();
        for svc in services {
            let served_vips = if svc.served { &svc.vips[..] } else { &[] };
            for vip in served_vips {
                for p in &svc.ports {
                    let addr = SocketAddr::new(*vip, p.port);
                    if let Some((prev, _)) = vips.insert(addr, (svc.clone(), p.port)) {
                        return Err(ConflictingAddress {
                            address: addr.to_string(),
                            first: format!("Service {}", prev.name),
                            second: format!("Service {}", svc.name),
                        });
                    }
                }
            }
            if svc.served {
                for net in &svc.ranges {
                    let same = ranges
                        .iter()
                        .find(|(n, other): &&(ipnet::IpNet, Arc<Service>)| {
                            n == net && other.ports.iter().any(|p| svc.port(p.port).is_some())
                        });
                    if let Some((_, prev)) = same {
                        return Err(ConflictingAddress {
                            address: net.to_string(),
                            first: format!("Service {}", prev.name),
                            second: format!("Service {}", svc.name),
                        });
                    }
                    ranges.push((*net, svc.clone()));
                }
            }
            by_name.insert(svc.name.to_string(), svc);
        }
        ranges.sort_by_key(|(n, _)| std::cmp::Reverse(n.prefix_len()));
        Ok(Self {
            version,
            source,
            waypoint,
            services: by_name,
            workloads: by_ip,
            routes,
            authz,
            authn,
            telemetry,
            request_headers,
            vips,
            ranges,
        })
    }

    /// Monotonic version, bumped on every accepted change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Where this configuration came from (`file:<path>`, `xds:<server>`).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The waypoint itself.
    pub fn waypoint(&self) -> &Waypoint {
        &self.waypoint
    }

    /// Every Service known (served or not), by `namespace/name`.
    pub fn services(&self) -> &BTreeMap<String, Arc<Service>> {
        &self.services
    }

    /// Carries endpoint health (outlier detection) over from the snapshot this one
    /// replaces: the same Service, port and endpoint address keep their counters and
    /// ejections. Called once, before this snapshot is installed.
    pub fn inherit_state(&self, previous: &Snapshot) {
        for (name, svc) in &self.services {
            let Some(before) = previous.services.get(name) else {
                continue;
            };
            for port in &svc.ports {
                if port.outlier().is_none() && port.slow_start().is_none() {
                    continue;
                }
                if let Some(old) = before.port(port.port) {
                    port.inherit_outlier(old);
                    port.inherit_slow_start(old);
                }
            }
        }
    }

    /// Every workload known, by IP.
    pub fn workloads(&self) -> &BTreeMap<IpAddr, Arc<Workload>> {
        &self.workloads
    }

    /// Every route table, by Service port (`namespace/name:port`).
    pub fn route_tables(&self) -> &BTreeMap<String, crate::route::PortRoutes> {
        &self.routes
    }

    /// How traffic is authorized.
    pub fn authz(&self) -> &crate::authz::PolicySet {
        &self.authz
    }

    /// RequestAuthentication JWT rules.
    pub fn authn(&self) -> &crate::authn::JwtRules {
        &self.authn
    }

    /// Access log and tracing settings.
    pub fn telemetry(&self) -> &super::telemetry::TelemetryConfig {
        &self.telemetry
    }

    /// What happens to request headers before routing, and the connection manager's
    /// connection settings.
    pub fn request_headers(&self) -> &super::RequestHeaders {
        &self.request_headers
    }

    /// An empty snapshot (nothing served yet).
    pub fn empty(waypoint: Waypoint) -> Self {
        Self::new(SnapshotParts::empty(0, "empty".into(), waypoint))
            .expect("an empty snapshot has no conflicts")
    }

    /// Resolves a CONNECT authority: a Service `VIP:port` we serve, a served pod's
    /// `IP:port`, or an address inside a served Service's range (a ServiceEntry's CIDR
    /// `addresses`; the longest range with the port wins, as istiod's IP matcher picks).
    pub fn resolve(&self, authority: SocketAddr) -> Option<Target> {
        if let Some((service, port)) = self.vips.get(&authority) {
            return Some(Target::Service {
                service: service.clone(),
                port: *port,
            });
        }
        if let Some(w) = self.workloads.get(&authority.ip()).filter(|w| w.served) {
            return Some(Target::Workload {
                workload: w.clone(),
                port: authority.port(),
            });
        }
        if self.ranges.is_empty() {
            return None;
        }
        self.ranges
            .iter()
            .find(|(net, svc)| {
                net.contains(&authority.ip()) && svc.port(authority.port()).is_some()
            })
            .map(|(_, service)| Target::Service {
                service: service.clone(),
                port: authority.port(),
            })
    }

    /// The routes attached to port `port` of `service`, if any.
    pub fn routes(&self, service: &NamespacedName, port: u16) -> Option<&crate::route::PortRoutes> {
        if self.routes.is_empty() {
            return None;
        }
        with_key(service, Some(port), |key| self.routes.get(key))
    }

    /// The workload with this IP, served or not.
    pub fn workload(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads.get(&ip)
    }
}

#[cfg(test)]
mod tests;
