//! What a source ztunnel puts on the CONNECT it sends to a waypoint, so tests see the
//! headers the real one sends. Facts from istio/ztunnel (`src/proxy/outbound.rs`,
//! `create_hbone_request`; `src/baggage.rs`; `src/state/workload.rs`, `Workload::baggage`):
//!
//! - `baggage`: the source workload's `k8s.cluster.name`, `k8s.namespace.name`,
//!   `k8s.<workload type>.name` (`deployment`, `job`, `cronjob`, `pod`, ...),
//!   `service.name` (canonical name), `service.version` (canonical revision),
//!   `cloud.region`, `cloud.availability_zone`, in that order, comma-separated, each only
//!   when known;
//! - `forwarded`: `for="<source ip:port>"`, plus `;host=<hostname>` when the client aimed at
//!   a Service (its hostname);
//! - `traceparent`: a fresh W3C trace context per connection (version 00, flags 00).

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;

/// The source workload a tunnel is opened for.
#[derive(Debug, Clone)]
pub struct SourceWorkload {
    /// The client's address as ztunnel accepted it.
    pub addr: SocketAddr,
    /// `k8s.cluster.name` (the workload's cluster id).
    pub cluster_id: String,
    /// `k8s.namespace.name`.
    pub namespace: String,
    /// The workload type in `k8s.<type>.name` (`deployment`).
    pub workload_type: String,
    /// The workload's name.
    pub workload_name: String,
    /// `service.name`: the canonical service name.
    pub canonical_name: String,
    /// `service.version`: the canonical revision.
    pub canonical_revision: String,
    /// `cloud.region`.
    pub region: String,
    /// `cloud.availability_zone`.
    pub zone: String,
    /// The Service hostname the client called, when it called a Service.
    pub service_host: Option<String>,
}

impl SourceWorkload {
    /// A Deployment's pod in `namespace` of cluster `Kubernetes`, version `v1`.
    pub fn deployment(addr: SocketAddr, namespace: &str, name: &str) -> Self {
        Self {
            addr,
            cluster_id: "Kubernetes".into(),
            namespace: namespace.into(),
            workload_type: "deployment".into(),
            workload_name: name.into(),
            canonical_name: name.into(),
            canonical_revision: "v1".into(),
            region: String::new(),
            zone: String::new(),
            service_host: None,
        }
    }

    /// The `baggage` header.
    pub fn baggage(&self) -> String {
        let kind = format!("k8s.{}.name", self.workload_type);
        [
            ("k8s.cluster.name", &self.cluster_id),
            ("k8s.namespace.name", &self.namespace),
            (kind.as_str(), &self.workload_name),
            ("service.name", &self.canonical_name),
            ("service.version", &self.canonical_revision),
            ("cloud.region", &self.region),
            ("cloud.availability_zone", &self.zone),
        ]
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
    }

    /// The `forwarded` header.
    pub fn forwarded(&self) -> String {
        match &self.service_host {
            Some(h) => format!("for=\"{}\";host={h}", self.addr),
            None => format!("for=\"{}\"", self.addr),
        }
    }

    /// The CONNECT's headers: `baggage`, `forwarded` and a fresh `traceparent`.
    pub fn connect_headers(&self) -> [(&'static str, String); 3] {
        let random = || {
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        };
        let trace = (u128::from(random()) << 64) | u128::from(random());
        [
            ("baggage", self.baggage()),
            ("forwarded", self.forwarded()),
            (
                "traceparent",
                format!("00-{trace:032x}-{:016x}-00", random()),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::SourceWorkload;

    #[test]
    fn headers_as_ztunnel_writes_them() {
        let mut s = SourceWorkload::deployment("10.0.0.1:41234".parse().unwrap(), "ns", "sleep");
        assert_eq!(
            s.baggage(),
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=ns,k8s.deployment.name=sleep,service.name=sleep,service.version=v1"
        );
        assert_eq!(s.forwarded(), "for=\"10.0.0.1:41234\"");
        s.service_host = Some("echo.ns.svc.cluster.local".into());
        assert_eq!(
            s.forwarded(),
            "for=\"10.0.0.1:41234\";host=echo.ns.svc.cluster.local"
        );
        let [_, _, (_, tp)] = s.connect_headers();
        let parts: Vec<&str> = tp.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [2, 32, 16, 2]
        );
    }
}
