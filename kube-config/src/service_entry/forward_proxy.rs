//! `resolution: DYNAMIC_DNS`: a wildcard host whose ports forward to the host each
//! request names ([`filters::forward_proxy`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use filters::model::{NamespacedName, Protocol, Service, ServicePort, TargetPort};

use super::{invalid, new_port_number, port_number, Location, ServiceEntry};
use crate::LocalConfigError;

impl ServiceEntry {
    /// A DYNAMIC_DNS entry (istio's validation rules): a wildcard host, no `addresses`
    /// (its VIPs are the ones istiod allocated, in `status.addresses`), no `endpoints`,
    /// HTTP and TLS ports; each port forwards to the host each request names (its `Host`,
    /// or a TLS port's ClientHello SNI) ([`filters::forward_proxy`]).
    pub(super) fn forward_proxy(
        &self,
        label: &str,
        index: usize,
        host: &str,
        served: bool,
        trust_domain: &str,
    ) -> Result<Service, LocalConfigError> {
        let spec = &self.spec;
        if !host.starts_with("*.") || host.len() < 3 || host[1..].contains('*') {
            return Err(invalid(
                label,
                format!("spec.hosts[{index}]"),
                format!("{host:?}: DYNAMIC_DNS needs a wildcard host such as *.example.com"),
            ));
        }
        if !spec.addresses.is_empty() {
            return Err(invalid(
                label,
                "spec.addresses",
                "must be empty with DYNAMIC_DNS (the addresses are allocated into status.addresses)",
            ));
        }
        if !spec.endpoints.is_empty() {
            return Err(invalid(
                label,
                "spec.endpoints",
                "must be empty with DYNAMIC_DNS (the request's host is resolved)",
            ));
        }
        if spec.location == Some(Location::MeshInternal) && served {
            return Err(invalid(
                label,
                "spec.location",
                "MESH_INTERNAL with DYNAMIC_DNS is not supported through a waypoint",
            ));
        }
        let (vips, ranges) = self.addresses(label, host)?;
        let workload = Arc::new(self.workload(host, Vec::new(), BTreeMap::new(), trust_domain));
        let mut ports: Vec<ServicePort> = Vec::new();
        for (i, p) in spec.ports.iter().enumerate() {
            let field = |f: &str| format!("spec.ports[{i}].{f}");
            let number = new_port_number(label, i, p.number, &ports)?;
            let protocol = Protocol::resolve(p.protocol.as_deref(), p.name.as_deref());
            // TLS is passed through to the host its ClientHello names (SNI).
            let tls = p
                .protocol
                .as_deref()
                .is_some_and(|x| x.eq_ignore_ascii_case("TLS"));
            if !tls && !matches!(protocol, Protocol::Http | Protocol::Http2 | Protocol::Grpc) {
                return Err(invalid(
                    label,
                    field("protocol"),
                    format!(
                        "{:?}: DYNAMIC_DNS forwards HTTP (by its Host) and TLS (by its SNI) only",
                        p.protocol.as_deref().unwrap_or("")
                    ),
                ));
            }
            let target = match p.target_port {
                Some(t) => port_number(label, field("targetPort"), t)?,
                None => number,
            };
            let proxy = filters::forward_proxy::ForwardProxy {
                cache: host.to_string(),
                wildcard: Some(host.to_string()),
                max_hosts: filters::forward_proxy::DEFAULT_MAX_HOSTS,
                host_ttl: filters::forward_proxy::DEFAULT_HOST_TTL,
                workload: workload.clone(),
            };
            ports.push(
                ServicePort::new(
                    p.name.clone(),
                    number,
                    TargetPort::Number(target),
                    protocol,
                    Vec::new(),
                )
                .with_forward_proxy(Some(Arc::new(proxy))),
            );
        }
        Ok(Service {
            name: NamespacedName::new(self.namespace(), host),
            hostname: host.to_string(),
            vips,
            ranges,
            ports,
            served,
        })
    }
}
