//! ServiceEntry (`networking.istio.io/v1`): a Service outside the cluster (or outside
//! Kubernetes Services), enrolled in the waypoint with `istio.io/use-waypoint` as a
//! Service is, so the waypoint acts as an egress gateway for it.
//!
//! A ServiceEntry becomes one [`Service`] per host (as istiod makes them), whose VIPs are
//! its `addresses` and those istiod allocated to the host (`status.addresses`), and whose
//! endpoints are its `endpoints` (workloads that are not mesh pods, `hbone: false`,
//! reached over plain TCP) or the Pods its `workloadSelector` chooses (mesh pods over
//! HBONE).
//!
//! Resolutions: STATIC; DNS / DNS_ROUND_ROBIN (Envoy's STRICT_DNS / LOGICAL_DNS: every
//! address, or the first one) with IP endpoints, one host-name endpoint, or none (the host
//! itself), a name becoming the port's [`DnsTarget`] resolved at run time outside the
//! snapshot ([`filters::dns`]; a DestinationRule's outlier detection and consistent
//! hashing apply over its resolved addresses); DYNAMIC_DNS with a wildcard host (`*.example.com`): every
//! port forwards to the host each request names ([`filters::forward_proxy`]); NONE: every
//! port sends to the tunnel's original destination ([`filters::model::OriginalDst`]).
//! Refused by field, never ignored: a host name among several endpoints, DYNAMIC_DNS ports
//! other than HTTP and TLS, `spec.addresses` shared by several hosts, CIDR addresses with
//! resolutions other than NONE and STATIC,
//! `subjectAltNames`, and the endpoint fields `network`, `locality`, `weight` and
//! `serviceAccount`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use filters::dns::DnsTarget;
use filters::model::{
    Endpoint, Identity, NamespacedName, Protocol, Service, ServicePort, TargetPort, Workload,
};
use serde::Deserialize;

mod forward_proxy;
mod original_dst;

use super::objects::ObjectMeta;
use super::LocalConfigError;

/// A ServiceEntry object.
#[derive(Debug, Deserialize)]
pub struct ServiceEntry {
    pub(crate) metadata: ObjectMeta,
    pub(crate) spec: Spec,
    /// What istiod wrote: the addresses it allocated (read for DYNAMIC_DNS entries, whose
    /// `spec.addresses` must be empty).
    #[serde(default)]
    status: Option<Status>,
}

/// The part of the status the waypoint reads.
#[derive(Debug, Deserialize)]
struct Status {
    #[serde(default)]
    addresses: Vec<StatusAddress>,
}

/// An address istiod allocated to a host of the entry.
#[derive(Debug, Deserialize)]
struct StatusAddress {
    value: String,
    #[serde(default)]
    #[allow(dead_code)]
    host: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct Spec {
    hosts: Vec<String>,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    ports: Vec<Port>,
    /// Accepted: both locations reach the endpoints the same way (plain TCP).
    #[serde(default)]
    #[allow(dead_code)]
    location: Option<Location>,
    #[serde(default)]
    resolution: Option<Resolution>,
    #[serde(default)]
    endpoints: Vec<WorkloadEntry>,
    #[serde(default)]
    workload_selector: Option<WorkloadSelector>,
    /// Accepted, not applied: the waypoint serves the entries enrolled in it.
    #[serde(default)]
    #[allow(dead_code)]
    export_to: Vec<String>,
    #[serde(default)]
    subject_alt_names: Vec<String>,
}

/// `workloadSelector`: the Pods (in the entry's namespace) whose labels include these.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadSelector {
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Port {
    number: u32,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    target_port: Option<u32>,
}

/// `location`: validated; both reach the endpoints the same way for now.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Location {
    MeshExternal,
    MeshInternal,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Resolution {
    None,
    Static,
    Dns,
    DnsRoundRobin,
    DynamicDns,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WorkloadEntry {
    #[serde(default)]
    address: String,
    #[serde(default)]
    ports: BTreeMap<String, u32>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    network: Option<serde_yaml::Value>,
    #[serde(default)]
    locality: Option<serde_yaml::Value>,
    #[serde(default)]
    weight: Option<serde_yaml::Value>,
    #[serde(default)]
    service_account: Option<serde_yaml::Value>,
}

/// The keys (`namespace/host`) of the Services each ServiceEntry (`namespace/name`)
/// becomes (one per host), for policies whose `targetRefs` name the ServiceEntry.
pub(crate) fn service_keys(entries: &[(String, ServiceEntry)]) -> BTreeMap<String, Vec<String>> {
    entries
        .iter()
        .map(|(_, e)| {
            let ns = e.namespace();
            let keys = e.spec.hosts.iter().map(|h| format!("{ns}/{h}")).collect();
            (format!("{ns}/{}", e.metadata.name), keys)
        })
        .collect()
}

fn invalid(object: &str, field: impl Into<String>, message: impl Into<String>) -> LocalConfigError {
    LocalConfigError::Invalid {
        object: object.to_string(),
        field: field.into(),
        message: message.into(),
    }
}

fn port_number(label: &str, field: String, n: u32) -> Result<u16, LocalConfigError> {
    match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(invalid(
            label,
            field,
            format!("{n} is not between 1 and 65535"),
        )),
    }
}

/// `spec.ports[i].number`, refused when out of range or already among `ports`.
fn new_port_number(
    label: &str,
    i: usize,
    n: u32,
    ports: &[ServicePort],
) -> Result<u16, LocalConfigError> {
    let field = format!("spec.ports[{i}].number");
    let number = port_number(label, field.clone(), n)?;
    if ports.iter().any(|q| q.port == number) {
        return Err(invalid(label, field, format!("duplicate port {number}")));
    }
    Ok(number)
}

impl ServiceEntry {
    pub(crate) fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// The entry's hosts (each one Service).
    pub(crate) fn hosts(&self) -> &[String] {
        &self.spec.hosts
    }

    /// The number of the port named `name`, if the entry has one.
    pub(crate) fn port_named(&self, name: &str) -> Option<u16> {
        self.spec
            .ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.number).ok())
    }

    /// The Services this entry describes, one per host (as istiod makes them: same ports,
    /// endpoints and resolution); `served` when it uses this waypoint. `label` names the
    /// object in errors; endpoints get identities in `trust_domain`.
    pub(crate) fn services(
        &self,
        label: &str,
        served: bool,
        trust_domain: &str,
        workloads: &[Arc<Workload>],
    ) -> Result<Vec<Service>, LocalConfigError> {
        let spec = &self.spec;
        if !spec.subject_alt_names.is_empty() {
            return Err(invalid(
                label,
                "spec.subjectAltNames",
                "not implemented yet (mutual TLS to the endpoints)",
            ));
        }
        if spec.hosts.is_empty() {
            return Err(invalid(
                label,
                "spec.hosts",
                "at least one host is required",
            ));
        }
        for (i, host) in spec.hosts.iter().enumerate() {
            if spec.hosts[..i].contains(host) {
                return Err(invalid(
                    label,
                    format!("spec.hosts[{i}]"),
                    format!("duplicate host {host:?}"),
                ));
            }
        }
        if spec.hosts.len() > 1 && !spec.addresses.is_empty() {
            // Every host's Service would claim the same VIPs.
            return Err(invalid(
                label,
                "spec.addresses",
                "shared by several hosts is not implemented: one ServiceEntry per host, or addresses allocated per host (status.addresses with host)",
            ));
        }
        let mut out: Vec<Service> = Vec::new();
        for (i, host) in spec.hosts.iter().enumerate() {
            out.push(self.service(label, i, host, served, trust_domain, workloads)?);
        }
        Ok(out)
    }

    /// The Pods `workloadSelector` chooses among `workloads` (same namespace, labels
    /// included), `None` without a selector. A selector goes with `resolution: STATIC` and
    /// no `endpoints` (istio's validation).
    fn selected<'w>(
        &self,
        label: &str,
        workloads: &'w [Arc<Workload>],
    ) -> Result<Option<Vec<&'w Arc<Workload>>>, LocalConfigError> {
        let Some(selector) = &self.spec.workload_selector else {
            return Ok(None);
        };
        if self.spec.resolution != Some(Resolution::Static) {
            return Err(invalid(
                label,
                "spec.resolution",
                "a workloadSelector needs resolution STATIC",
            ));
        }
        if !self.spec.endpoints.is_empty() {
            return Err(invalid(
                label,
                "spec.endpoints",
                "only one of endpoints and workloadSelector can be set",
            ));
        }
        let ns = self.namespace();
        Ok(Some(
            workloads
                .iter()
                .filter(|w| w.name.namespace == ns)
                .filter(|w| {
                    selector
                        .labels
                        .iter()
                        .all(|(k, v)| w.labels.get(k) == Some(v))
                })
                .collect(),
        ))
    }

    /// The addresses of `host`: `spec.addresses`, and those istiod allocated to it
    /// (`status.addresses` naming it, or naming no host); CIDR ranges among
    /// `spec.addresses` apart (masked to their network, as istiod does), refused unless
    /// the resolution is NONE or STATIC, as istiod's validation refuses them.
    fn addresses(
        &self,
        label: &str,
        host: &str,
    ) -> Result<(Vec<IpAddr>, Vec<ipnet::IpNet>), LocalConfigError> {
        let mut vips = Vec::new();
        let mut ranges: Vec<ipnet::IpNet> = Vec::new();
        let resolution = self.spec.resolution.unwrap_or(Resolution::None);
        for (i, raw) in self.spec.addresses.iter().enumerate() {
            let field = || format!("spec.addresses[{i}]");
            if raw.contains('/') {
                let net: ipnet::IpNet = raw.parse().map_err(|_| {
                    invalid(
                        label,
                        field(),
                        format!("{raw:?} is not an IP address or CIDR"),
                    )
                })?;
                if !matches!(resolution, Resolution::None | Resolution::Static) {
                    return Err(invalid(
                        label,
                        field(),
                        "CIDR addresses are allowed only for NONE/STATIC resolution types",
                    ));
                }
                if net.prefix_len() < net.max_prefix_len() {
                    let net = net.trunc();
                    if !ranges.contains(&net) {
                        ranges.push(net);
                    }
                    continue;
                }
                if !vips.contains(&net.addr()) {
                    vips.push(net.addr());
                }
                continue;
            }
            let ip: IpAddr = raw.parse().map_err(|_| {
                invalid(
                    label,
                    field(),
                    format!("{raw:?} is not an IP address or CIDR"),
                )
            })?;
            if !vips.contains(&ip) {
                vips.push(ip);
            }
        }
        let allocated = self.status.iter().flat_map(|s| s.addresses.iter());
        for (i, a) in allocated.enumerate() {
            if a.host.as_deref().is_some_and(|h| h != host) {
                continue;
            }
            let ip: IpAddr = a.value.parse().map_err(|_| {
                invalid(
                    label,
                    format!("status.addresses[{i}].value"),
                    format!("{:?} is not an IP address", a.value),
                )
            })?;
            if !vips.contains(&ip) {
                vips.push(ip);
            }
        }
        Ok((vips, ranges))
    }

    /// The Service for host `index` of the entry, `host`; `workloads` are the Pods a
    /// `workloadSelector` chooses from.
    fn service(
        &self,
        label: &str,
        index: usize,
        host: &str,
        served: bool,
        trust_domain: &str,
        workloads: &[Arc<Workload>],
    ) -> Result<Service, LocalConfigError> {
        let spec = &self.spec;
        let ns = self.namespace();
        let selected = self.selected(label, workloads)?;
        let resolution = spec.resolution.unwrap_or(Resolution::None);
        if resolution == Resolution::DynamicDns {
            return self.forward_proxy(label, index, host, served, trust_domain);
        }
        if resolution == Resolution::None {
            return self.original_dst(label, index, host, served, trust_domain);
        }
        if host.is_empty() || host.contains('*') {
            return Err(invalid(
                label,
                format!("spec.hosts[{index}]"),
                format!("{host:?}: a wildcard host needs resolution DYNAMIC_DNS or NONE"),
            ));
        }
        match resolution {
            Resolution::None => unreachable!("handled above"),
            Resolution::Static
            | Resolution::Dns
            | Resolution::DnsRoundRobin
            | Resolution::DynamicDns => {}
        }
        if spec.endpoints.is_empty() && resolution == Resolution::Static && selected.is_none() {
            return Err(invalid(
                label,
                "spec.endpoints",
                "STATIC resolution needs endpoints",
            ));
        }
        let dns_name = self.dns_name(label, resolution, host)?;
        let (vips, ranges) = self.addresses(label, host)?;
        let workloads = match dns_name {
            Some(_) => Vec::new(),
            None => self.endpoint_workloads(label, resolution, trust_domain)?,
        };
        let mut ports: Vec<ServicePort> = Vec::new();
        for (i, p) in spec.ports.iter().enumerate() {
            let field = |f: &str| format!("spec.ports[{i}].{f}");
            let number = new_port_number(label, i, p.number, &ports)?;
            let target = match p.target_port {
                Some(t) => port_number(label, field("targetPort"), t)?,
                None => number,
            };
            let mut endpoints = Vec::new();
            for (j, (e, w)) in spec.endpoints.iter().zip(&workloads).enumerate() {
                let Some(w) = w else { continue };
                let own = p.name.as_ref().and_then(|n| e.ports.get(n));
                let port = match own {
                    Some(n) => port_number(label, format!("spec.endpoints[{j}].ports"), *n)?,
                    None => target,
                };
                endpoints.push(Endpoint {
                    workload: w.clone(),
                    port,
                });
            }
            // The Pods the selector chose (mesh workloads: HBONE), at the target port.
            for w in selected.iter().flatten() {
                endpoints.push(Endpoint {
                    workload: Arc::clone(w),
                    port: target,
                });
            }
            let dns = dns_name.map(|(name, entry)| {
                let own = entry.and_then(|e| p.name.as_ref().and_then(|n| e.ports.get(n)));
                let port = match own {
                    Some(n) => port_number(label, "spec.endpoints[0].ports".into(), *n),
                    None => Ok(target),
                };
                port.map(|port| {
                    let labels = entry.map(|e| e.labels.clone()).unwrap_or_default();
                    let workload = self.workload(name, Vec::new(), labels, trust_domain);
                    Arc::new(DnsTarget::new(
                        name,
                        port,
                        resolution == Resolution::DnsRoundRobin,
                        workload,
                    ))
                })
            });
            ports.push(
                ServicePort::new(
                    p.name.clone(),
                    number,
                    TargetPort::Number(target),
                    Protocol::resolve(p.protocol.as_deref(), p.name.as_deref()),
                    endpoints,
                )
                .with_dns(dns.transpose()?),
            );
        }
        Ok(Service {
            name: NamespacedName::new(ns, host),
            hostname: host.to_string(),
            vips,
            ranges,
            ports,
            served,
        })
    }

    /// The name to resolve for `resolution` DNS / DNS_ROUND_ROBIN: the host when there are
    /// no endpoints, else the one endpoint's address when it is a name (with that
    /// endpoint); `None` for IP endpoints, which need no resolving.
    fn dns_name<'a>(
        &'a self,
        label: &str,
        resolution: Resolution,
        host: &'a str,
    ) -> Result<Option<(&'a str, Option<&'a WorkloadEntry>)>, LocalConfigError> {
        if !matches!(resolution, Resolution::Dns | Resolution::DnsRoundRobin) {
            return Ok(None);
        }
        let eps = &self.spec.endpoints;
        let named =
            |e: &WorkloadEntry| !e.address.is_empty() && e.address.parse::<IpAddr>().is_err();
        match eps.as_slice() {
            [] => Ok(Some((host, None))),
            [e] if named(e) => {
                self.check_endpoint_fields(label, 0, e)?;
                Ok(Some((e.address.as_str(), Some(e))))
            }
            _ => match eps.iter().position(named) {
                Some(j) => Err(invalid(
                    label,
                    format!("spec.endpoints[{j}].address"),
                    "a host name among several endpoints is not implemented yet: one endpoint per name",
                )),
                None => Ok(None),
            },
        }
    }

    /// A workload outside the mesh named `name` in the entry's namespace.
    fn workload(
        &self,
        name: &str,
        ips: Vec<IpAddr>,
        labels: BTreeMap<String, String>,
        trust_domain: &str,
    ) -> Workload {
        let ns = self.namespace();
        Workload {
            name: NamespacedName::new(ns, name),
            ips,
            identity: Identity::new(trust_domain, ns, "default"),
            labels,
            hbone: false,
            served: false,
            named_ports: BTreeMap::new(),
        }
    }

    fn check_endpoint_fields(
        &self,
        label: &str,
        j: usize,
        e: &WorkloadEntry,
    ) -> Result<(), LocalConfigError> {
        for (name, set) in [
            ("network", e.network.is_some()),
            ("locality", e.locality.is_some()),
            ("weight", e.weight.is_some()),
            ("serviceAccount", e.service_account.is_some()),
        ] {
            if set {
                return Err(invalid(
                    label,
                    format!("spec.endpoints[{j}].{name}"),
                    "not implemented yet",
                ));
            }
        }
        Ok(())
    }

    /// One workload per endpoint (`None` past the first for DNS_ROUND_ROBIN, which uses a
    /// single address as Envoy's LOGICAL_DNS does).
    fn endpoint_workloads(
        &self,
        label: &str,
        resolution: Resolution,
        trust_domain: &str,
    ) -> Result<Vec<Option<Arc<Workload>>>, LocalConfigError> {
        let mut out = Vec::new();
        for (j, e) in self.spec.endpoints.iter().enumerate() {
            let field = |f: &str| format!("spec.endpoints[{j}].{f}");
            self.check_endpoint_fields(label, j, e)?;
            let ip: IpAddr = e.address.parse().map_err(|_| {
                let why = if e.address.is_empty() {
                    "required".to_string()
                } else if resolution == Resolution::Static {
                    format!("{:?}: STATIC endpoints must be IP addresses", e.address)
                } else {
                    format!("{:?}: not an IP address", e.address)
                };
                invalid(label, field("address"), why)
            })?;
            if resolution == Resolution::DnsRoundRobin && j > 0 {
                out.push(None);
                continue;
            }
            let name = format!("{}-{j}", self.metadata.name);
            out.push(Some(Arc::new(self.workload(
                &name,
                vec![ip],
                e.labels.clone(),
                trust_domain,
            ))));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
