//! Endpoints (EDS `ClusterLoadAssignment`): pods behind a cluster, reached over HBONE
//! through the internal listener `connect_originate` (the real `podIP:port` is in the
//! `envoy.filters.listener.original_dst` metadata) or directly at a socket address. Each
//! keeps its locality's priority: requests go to the lowest priority that has an endpoint
//! to take them.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::{address::Address as AddressKind, HealthStatus};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint::HostIdentifier, ClusterLoadAssignment,
};

use super::error::InvalidResource;
use super::metadata;

/// One endpoint of a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointInfo {
    /// `podIP:targetPort`.
    pub address: SocketAddr,
    /// The pod's other IPs (`additional_addresses`, which istiod writes for dual-stack
    /// endpoints under `ISTIO_DUAL_STACK`), on the same port: tried when connecting to
    /// `address` fails or is slow (Happy Eyeballs).
    pub additional: Vec<std::net::IpAddr>,
    /// Reached over HBONE (internal address to `connect_originate`), else plain TCP.
    pub hbone: bool,
    /// A sidecar pod: its metadata selects a cluster's `tlsMode-istio` transport socket
    /// (`envoy.transport_socket_match` `tlsMode: istio`, `AppendLbEndpointMetadata` in
    /// istiod's `pilot/pkg/networking/util/util.go`).
    pub sidecar_mtls: bool,
    /// From `istio.workload`: `name;namespace;canonical service;revision;cluster`.
    pub workload: Option<WorkloadMeta>,
    /// Relative weight.
    pub weight: u32,
    /// The locality's priority (0 first; istiod's locality failover and
    /// `trafficDistribution: PreferClose` put farther localities at higher numbers).
    pub priority: u32,
    /// Which of the assignment's localities it is in (its index).
    pub locality: u32,
    /// That locality's weight (`load_balancing_weight`; 0 when unset), which matters when
    /// the cluster balances across localities by weight.
    pub locality_weight: u32,
}

/// Istio's workload metadata on an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadMeta {
    /// Workload (Deployment) name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Canonical service.
    pub canonical_service: String,
    /// Canonical revision.
    pub canonical_revision: String,
    /// Cluster id.
    pub cluster: String,
}

/// Validates one assignment; unhealthy and draining endpoints are left out.
pub fn convert(cla: &ClusterLoadAssignment) -> Result<Vec<EndpointInfo>, InvalidResource> {
    let name = &cla.cluster_name;
    check_unread(cla)?;
    let mut out = Vec::new();
    for (li, locality) in cla.endpoints.iter().enumerate() {
        for (ei, lb) in locality.lb_endpoints.iter().enumerate() {
            let at = format!("endpoints[{li}].lb_endpoints[{ei}]");
            let bad = |field: &str, reason: String| {
                InvalidResource::new("endpoints", name, format!("{at}.{field}"), reason)
            };
            let status = HealthStatus::try_from(lb.health_status).unwrap_or(HealthStatus::Unknown);
            if matches!(
                status,
                HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout
            ) {
                continue;
            }
            let Some(HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
                return Err(bad("endpoint", "named endpoints are not supported".into()));
            };
            let kind = ep.address.as_ref().and_then(|a| a.address.as_ref());
            let original_dst = lb.metadata.as_ref().and_then(|m| {
                metadata::string(metadata::path(
                    m,
                    "envoy.filters.listener.original_dst",
                    &["local"],
                ))
            });
            let (address, hbone) = match kind {
                Some(AddressKind::EnvoyInternalAddress(internal)) => {
                    let target = original_dst
                        .clone()
                        .unwrap_or_else(|| internal.endpoint_id.clone());
                    let addr: SocketAddr = target.parse().map_err(|_| {
                        bad(
                            "metadata.envoy.filters.listener.original_dst.local",
                            format!("{target:?} is not ip:port"),
                        )
                    })?;
                    (addr, true)
                }
                Some(AddressKind::SocketAddress(sa)) => {
                    let port = match &sa.port_specifier {
                        Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) => *p,
                        _ => return Err(bad("endpoint.address.socket_address.port_value", "a port number is required".into())),
                    };
                    let ip = sa.address.parse().map_err(|_| {
                        bad(
                            "endpoint.address.socket_address.address",
                            format!("{:?} is not an IP", sa.address),
                        )
                    })?;
                    let port = u16::try_from(port).map_err(|_| {
                        bad(
                            "endpoint.address.socket_address.port_value",
                            format!("{port} out of range"),
                        )
                    })?;
                    (SocketAddr::new(ip, port), false)
                }
                other => {
                    return Err(bad(
                        "endpoint.address",
                        format!("unsupported address {other:?}"),
                    ))
                }
            };
            let additional = additional_ips(ep, address, hbone)
                .map_err(|(field, reason)| bad(&format!("endpoint.{field}"), reason))?;
            let workload = lb
                .metadata
                .as_ref()
                .and_then(|m| metadata::string(metadata::path(m, "istio", &["workload"])))
                .and_then(|w| parse_workload(&w));
            let weight = lb
                .load_balancing_weight
                .as_ref()
                .map(|w| w.value)
                .unwrap_or(1);
            if weight == 0 {
                return Err(bad(
                    "load_balancing_weight",
                    "must be at least 1, as Envoy requires".into(),
                ));
            }
            let sidecar_mtls = lb.metadata.as_ref().is_some_and(|m| {
                metadata::string(metadata::path(
                    m,
                    "envoy.transport_socket_match",
                    &["tlsMode"],
                ))
                .is_some_and(|mode| mode == "istio")
            });
            out.push(EndpointInfo {
                address,
                additional,
                hbone,
                sidecar_mtls,
                workload,
                weight,
                priority: locality.priority,
                locality: li as u32,
                locality_weight: locality
                    .load_balancing_weight
                    .as_ref()
                    .map_or(0, |w| w.value),
            });
        }
    }
    Ok(out)
}

/// The IPs of an endpoint's `additional_addresses`. istiod's endpoint builder
/// (`pilot/pkg/xds/endpoints/endpoint_builder.go`, `buildEnvoyLbEndpoint`) writes them only
/// on a socket-address endpoint (a pod reached without a tunnel), one per further pod IP,
/// each a socket address on the endpoint's own port; a tunnel endpoint carries the first
/// IP only. Anything else is refused, naming the field.
fn additional_ips(
    ep: &envoy_types::pb::envoy::config::endpoint::v3::Endpoint,
    primary: SocketAddr,
    hbone: bool,
) -> Result<Vec<std::net::IpAddr>, (String, String)> {
    use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
    if ep.additional_addresses.is_empty() {
        return Ok(Vec::new());
    }
    if hbone {
        return Err((
            "additional_addresses".into(),
            "additional addresses of an endpoint reached through an internal address \
             (HBONE) are not supported: istiod writes them only on socket addresses"
                .into(),
        ));
    }
    let mut ips = Vec::new();
    for (i, extra) in ep.additional_addresses.iter().enumerate() {
        let at = format!("additional_addresses[{i}].address");
        let Some(AddressKind::SocketAddress(sa)) =
            extra.address.as_ref().and_then(|a| a.address.as_ref())
        else {
            return Err((at, "a socket address is required".into()));
        };
        let ip: std::net::IpAddr = sa.address.parse().map_err(|_| {
            (
                format!("{at}.socket_address.address"),
                format!("{:?} is not an IP", sa.address),
            )
        })?;
        match sa.port_specifier {
            Some(PortSpecifier::PortValue(p)) if p == u32::from(primary.port()) => {}
            _ => {
                return Err((
                    format!("{at}.socket_address.port_value"),
                    format!(
                        "must be the endpoint's port {} (istiod writes the same port on every \
                         address)",
                        primary.port()
                    ),
                ))
            }
        }
        if ip != primary.ip() && !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

/// Refuses, by field, what istiod never writes into an assignment (its endpoint builder,
/// `pilot/pkg/xds/endpoints/endpoint_builder.go`, writes localities with their priority
/// and weight, and endpoints with an address, health status, metadata and weight) and
/// the waypoint does not implement: named endpoints, the assignment's `policy`
/// (overload drops, overprovisioning, staleness), locality metadata, proximity and LEDS,
/// and per-endpoint health checks, host names and observability names. A locality's name is accepted: istiod turns it into priorities,
/// which take effect. Envoy's defaults, as its config dumps show them (an empty
/// `health_check_config`, `overprovisioning_factor` 140), are accepted.
/// Envoy's default `overprovisioning_factor` (140%).
const DEFAULT_OVERPROVISIONING: u32 = 140;

fn check_unread(cla: &ClusterLoadAssignment) -> Result<(), InvalidResource> {
    let bad = |field: String| {
        InvalidResource::new("endpoints", &cla.cluster_name, field, "not supported")
    };
    if !cla.named_endpoints.is_empty() {
        return Err(bad("named_endpoints".into()));
    }
    if let Some(p) = &cla.policy {
        let unsupported = [
            ("drop_overloads", !p.drop_overloads.is_empty()),
            // Envoy's default, which its config dumps show.
            (
                "overprovisioning_factor",
                p.overprovisioning_factor
                    .is_some_and(|f| f.value != DEFAULT_OVERPROVISIONING),
            ),
            ("endpoint_stale_after", p.endpoint_stale_after.is_some()),
            ("weighted_priority_health", p.weighted_priority_health),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, on)| *on) {
            return Err(bad(format!("policy.{field}")));
        }
    }
    for (li, l) in cla.endpoints.iter().enumerate() {
        let unsupported = [
            ("metadata", l.metadata.is_some()),
            ("proximity", l.proximity.is_some()),
            ("leds_cluster_locality_config", l.lb_config.is_some()),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, on)| *on) {
            return Err(bad(format!("endpoints[{li}].{field}")));
        }
        for (ei, lb) in l.lb_endpoints.iter().enumerate() {
            let Some(HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
                continue;
            };
            let unsupported = [
                (
                    "health_check_config",
                    ep.health_check_config
                        .as_ref()
                        .is_some_and(|h| *h != Default::default()),
                ),
                ("hostname", !ep.hostname.is_empty()),
                ("observability_name", !ep.observability_name.is_empty()),
            ];
            if let Some((field, _)) = unsupported.iter().find(|(_, on)| *on) {
                return Err(bad(format!(
                    "endpoints[{li}].lb_endpoints[{ei}].endpoint.{field}"
                )));
            }
        }
    }
    Ok(())
}

/// Parses `name;namespace;canonical service;revision;cluster`.
pub fn parse_workload(s: &str) -> Option<WorkloadMeta> {
    let parts: Vec<&str> = s.split(';').collect();
    if parts.len() < 2 || parts[0].is_empty() {
        return None;
    }
    let get = |i: usize| parts.get(i).map(|p| p.to_string()).unwrap_or_default();
    Some(WorkloadMeta {
        name: get(0),
        namespace: get(1),
        canonical_service: get(2),
        canonical_revision: get(3),
        cluster: get(4),
    })
}

#[cfg(test)]
mod tests {
    fn assignment(json: serde_json::Value) -> super::ClusterLoadAssignment {
        crate::envoy::from_json("envoy.config.endpoint.v3.ClusterLoadAssignment", &json).unwrap()
    }

    #[test]
    fn fields_istiod_never_writes_are_refused_by_name() {
        let ep = |extra: serde_json::Value| {
            let mut e = serde_json::json!({"address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}}});
            e.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            e
        };
        for (json, field) in [
            (
                serde_json::json!({"cluster_name": "c", "policy": {"overprovisioning_factor": 100}}),
                "policy.overprovisioning_factor",
            ),
            (
                serde_json::json!({"cluster_name": "c", "endpoints": [{"lb_endpoints": [{"endpoint": ep(serde_json::json!({
                    "additional_addresses": [{"address": {"socket_address": {"address": "fd00::1", "port_value": 81}}}]}))}]}]}),
                "endpoints[0].lb_endpoints[0].endpoint.additional_addresses[0].address.socket_address.port_value",
            ),
            (
                serde_json::json!({"cluster_name": "c", "endpoints": [{"lb_endpoints": [{"endpoint": {
                    "address": {"envoy_internal_address": {"server_listener_name": "connect_originate", "endpoint_id": "10.0.0.1:80"}},
                    "additional_addresses": [{"address": {"socket_address": {"address": "fd00::1", "port_value": 80}}}]}}]}]}),
                "endpoints[0].lb_endpoints[0].endpoint.additional_addresses",
            ),
            (
                serde_json::json!({"cluster_name": "c", "endpoints": [{"lb_endpoints": [{"endpoint": ep(serde_json::json!({"hostname": "a.example"}))}]}]}),
                "endpoints[0].lb_endpoints[0].endpoint.hostname",
            ),
            (
                serde_json::json!({"cluster_name": "c", "endpoints": [{"proximity": 1, "lb_endpoints": []}]}),
                "endpoints[0].proximity",
            ),
        ] {
            let e = super::convert(&assignment(json.clone())).expect_err(&json.to_string());
            assert_eq!(e.field, field, "{json}");
        }
        // Localities with names, priorities and weights are what istiod writes.
        let ok = assignment(serde_json::json!({"cluster_name": "c", "endpoints": [{
            "locality": {"region": "r", "zone": "z"}, "priority": 1, "load_balancing_weight": 2,
            "lb_endpoints": [{"endpoint": ep(serde_json::json!({})), "health_status": "HEALTHY", "load_balancing_weight": 3}]}]}));
        assert_eq!(super::convert(&ok).unwrap().len(), 1);
    }

    #[test]
    fn a_dual_stack_endpoint_keeps_its_additional_ips() {
        // istiod's shape (endpoint_builder.go, buildEnvoyLbEndpoint, ISTIO_DUAL_STACK on):
        // the first pod IP as the address, the others as additional socket addresses on
        // the same port.
        let cla = assignment(
            serde_json::json!({"cluster_name": "c", "endpoints": [{"lb_endpoints": [{
            "endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}},
                         "additional_addresses": [{"address": {"socket_address": {"address": "fd00::1", "port_value": 80}}}]},
            "health_status": "HEALTHY", "load_balancing_weight": 1}]}]}),
        );
        let eps = super::convert(&cla).unwrap();
        assert_eq!(eps[0].address, "10.0.0.1:80".parse().unwrap());
        assert_eq!(
            eps[0].additional,
            ["fd00::1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(!eps[0].hbone);
    }
}
