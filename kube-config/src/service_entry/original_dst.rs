//! `resolution: NONE`: ports that send each tunnel to its original destination
//! ([`filters::model::OriginalDst`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use filters::model::{NamespacedName, Protocol, Service, ServicePort, TargetPort};

use super::{invalid, new_port_number, port_number, ServiceEntry};
use crate::LocalConfigError;

impl ServiceEntry {
    /// A `resolution: NONE` entry: every port sends to the tunnel's original destination
    /// (the address the client connected to, one of `addresses`), at the port's
    /// `targetPort` when it has one (istiod's `upstream_port_override`); `endpoints` must
    /// be empty (istio's validation).
    pub(super) fn original_dst(
        &self,
        label: &str,
        index: usize,
        host: &str,
        served: bool,
        trust_domain: &str,
    ) -> Result<Service, LocalConfigError> {
        let spec = &self.spec;
        if host.is_empty() || host == "*" || host[1..].contains('*') {
            return Err(invalid(
                label,
                format!("spec.hosts[{index}]"),
                format!("{host:?} is not a host"),
            ));
        }
        if !spec.endpoints.is_empty() {
            return Err(invalid(
                label,
                "spec.endpoints",
                "must be empty with resolution NONE (the destination is the address connected to)",
            ));
        }
        let (vips, ranges) = self.addresses(label, host)?;
        let workload = Arc::new(self.workload(host, Vec::new(), BTreeMap::new(), trust_domain));
        let mut ports: Vec<ServicePort> = Vec::new();
        for (i, p) in spec.ports.iter().enumerate() {
            let field = |f: &str| format!("spec.ports[{i}].{f}");
            let number = new_port_number(label, i, p.number, &ports)?;
            let port_override = p
                .target_port
                .map(|t| port_number(label, field("targetPort"), t))
                .transpose()?;
            let original = filters::model::OriginalDst {
                port_override,
                workload: workload.clone(),
            };
            ports.push(
                ServicePort::new(
                    p.name.clone(),
                    number,
                    TargetPort::Number(port_override.unwrap_or(number)),
                    Protocol::resolve(p.protocol.as_deref(), p.name.as_deref()),
                    Vec::new(),
                )
                .with_original_dst(Some(Arc::new(original))),
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
