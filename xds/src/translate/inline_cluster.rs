//! Clusters whose endpoints come inline in `load_assignment` rather than over EDS:
//! istiod's clusters for ServiceEntries with `resolution: DNS` (STRICT_DNS) and
//! `DNS_ROUND_ROBIN` (LOGICAL_DNS), built by `buildWaypointInboundVIPCluster` with
//! `convertResolution` and `buildCluster` (`pilot/pkg/networking/core/cluster_waypoint.go`,
//! `cluster.go`, `cluster_builder.go`), and STATIC clusters.
//!
//! Implemented: endpoints whose socket addresses are IP addresses (Envoy resolves an IP
//! literal to itself), reached over plain TCP; STRICT_DNS and STATIC use every endpoint,
//! LOGICAL_DNS the first one. A STRICT_DNS / LOGICAL_DNS cluster whose one endpoint is a
//! host name (istiod's shape for a ServiceEntry resolving its host) is resolved at run
//! time by the waypoint's resolver (`--dns-server` or `/etc/resolv.conf`; TTLs honoured,
//! [`filters::dns`]); host names among several endpoints are refused by field. A
//! DestinationRule's outlier detection and consistent hashing apply over the IP endpoints
//! and over a host name's resolved addresses alike ([`filters::dns`]). The
//! resolver settings istiod writes (`dns_lookup_family`, `dns_refresh_rate`,
//! `respect_dns_ttl`, `dns_jitter`, the c-ares `typed_dns_resolver_config`) are accepted
//! and not read: the waypoint always honours TTLs (at least 1 s apart) and asks for A
//! records, then AAAA when there are none. The dynamic forward proxy's custom cluster type
//! (`DYNAMIC_DNS`) is [`super::forward_proxy`]'s; ORIGINAL_DST (`resolution: NONE`,
//! headless Services) sends to the tunnel's original destination; other custom cluster
//! types are refused.

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::ClusterDiscoveryType, cluster::DiscoveryType, Cluster,
};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;

use super::cluster::invalid;
use super::endpoint::{self, EndpointInfo};
use super::error::InvalidResource;

/// What a cluster's inline `load_assignment` gives.
#[derive(Debug, Clone, PartialEq)]
pub enum Inline {
    /// IP endpoints.
    Endpoints(Vec<EndpointInfo>),
    /// One host name, resolved at run time ([`filters::dns`]).
    Dns(DnsName),
    /// No endpoints: the host each request names ([`super::forward_proxy`]).
    ForwardProxy(super::forward_proxy::DnsCache),
    /// No endpoints: the tunnel's original destination, at this port if set (ORIGINAL_DST).
    OriginalDst(Option<u16>),
}

/// istiod's ORIGINAL_DST cluster (`convertResolution` for `resolution: NONE` and headless
/// Services, `buildCluster` in cluster_builder.go; `buildWaypointInboundVIPCluster` sets
/// `lb_policy` CLUSTER_PROVIDED): `original_dst_lb_config.upstream_port_override` (a
/// ServiceEntry port's `targetPort`) takes effect, `cleanup_interval` needs nothing (the
/// waypoint keeps no per-destination hosts); `use_http_header`, `http_header_name` and
/// `metadata_key` are refused, as is any `load_assignment`.
fn original_dst(c: &Cluster) -> Result<Inline, InvalidResource> {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbConfig;
    if c.lb_policy != 6 {
        return Err(invalid(
            c,
            "lb_policy",
            "an ORIGINAL_DST cluster balances itself (CLUSTER_PROVIDED)".into(),
        ));
    }
    if c.load_assignment.is_some() {
        return Err(invalid(
            c,
            "load_assignment",
            "an ORIGINAL_DST cluster has no endpoints".into(),
        ));
    }
    let port = match &c.lb_config {
        None => None,
        Some(LbConfig::OriginalDstLbConfig(o)) => {
            let at = "original_dst_lb_config";
            if o.use_http_header || !o.http_header_name.is_empty() {
                return Err(invalid(
                    c,
                    &format!("{at}.use_http_header"),
                    "destinations named by a request header are not implemented".into(),
                ));
            }
            if o.metadata_key.is_some() {
                return Err(invalid(
                    c,
                    &format!("{at}.metadata_key"),
                    "destinations named by metadata are not implemented".into(),
                ));
            }
            match &o.upstream_port_override {
                None => None,
                Some(p) => Some(u16::try_from(p.value).ok().filter(|p| *p > 0).ok_or_else(
                    || {
                        invalid(
                            c,
                            &format!("{at}.upstream_port_override"),
                            format!("{} is not between 1 and 65535", p.value),
                        )
                    },
                )?),
            }
        }
        Some(_) => {
            return Err(invalid(
                c,
                "lb_config",
                "only original_dst_lb_config fits an ORIGINAL_DST cluster".into(),
            ))
        }
    };
    Ok(Inline::OriginalDst(port))
}

/// The host name of a STRICT_DNS / LOGICAL_DNS cluster's one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsName {
    /// The name (no trailing dot).
    pub hostname: String,
    /// The port connected to.
    pub port: u16,
    /// LOGICAL_DNS: the first address only.
    pub logical: bool,
}

/// The endpoints of `c` when they come inline: `None` for EDS clusters, the endpoints (or
/// the one host name) of its `load_assignment` for STATIC, STRICT_DNS and LOGICAL_DNS; an
/// error naming the field for every other type.
pub fn endpoints(c: &Cluster) -> Result<Option<Inline>, InvalidResource> {
    let t = match &c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t).ok(),
        Some(ClusterDiscoveryType::ClusterType(custom))
            if custom.name == super::forward_proxy::CLUSTER_TYPE =>
        {
            return super::forward_proxy::cluster(c, custom)
                .map(|cache| Some(Inline::ForwardProxy(cache)))
                .map_err(|(field, reason)| invalid(c, &field, reason));
        }
        Some(ClusterDiscoveryType::ClusterType(custom)) => {
            return Err(invalid(
                c,
                "cluster_type.name",
                format!("custom cluster type {:?} is not implemented", custom.name),
            ))
        }
        None => Some(DiscoveryType::Static),
    };
    let logical = match t {
        Some(DiscoveryType::Eds) => return Ok(None),
        Some(DiscoveryType::Static | DiscoveryType::StrictDns) => false,
        Some(DiscoveryType::LogicalDns) => true,
        Some(DiscoveryType::OriginalDst) => return original_dst(c).map(Some),
        None => return Err(invalid(c, "type", "unknown discovery type".into())),
    };
    let Some(cla) = &c.load_assignment else {
        return Err(invalid(
            c,
            "load_assignment",
            "required for a cluster that is not EDS".into(),
        ));
    };
    let mut names = Vec::new();
    for (li, locality) in cla.endpoints.iter().enumerate() {
        for (ei, lb) in locality.lb_endpoints.iter().enumerate() {
            let Some(HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
                continue;
            };
            if let Some(AddressKind::SocketAddress(sa)) =
                ep.address.as_ref().and_then(|a| a.address.as_ref())
            {
                if sa.address.parse::<std::net::IpAddr>().is_err() {
                    let field = format!("load_assignment.endpoints[{li}].lb_endpoints[{ei}].endpoint.address.socket_address");
                    names.push((field, sa));
                }
            }
        }
    }
    let total: usize = cla.endpoints.iter().map(|l| l.lb_endpoints.len()).sum();
    match names.as_slice() {
        [] => {}
        [(field, sa)] if total == 1 && t != Some(DiscoveryType::Static) => {
            let port = match &sa.port_specifier {
                Some(PortSpecifier::PortValue(p)) => u16::try_from(*p).ok().filter(|p| *p > 0),
                _ => None,
            }
            .ok_or_else(|| invalid(c, &format!("{field}.port_value"), "a port between 1 and 65535 is required".into()))?;
            return Ok(Some(Inline::Dns(DnsName {
                hostname: sa.address.trim_end_matches('.').to_string(),
                port,
                logical,
            })));
        }
        [(field, sa), ..] => {
            return Err(invalid(
                c,
                &format!("{field}.address"),
                format!(
                    "{:?}: a host name is implemented only as the one endpoint of a STRICT_DNS or LOGICAL_DNS cluster",
                    sa.address
                ),
            ))
        }
    }
    let mut eps = endpoint::convert(cla)
        .map_err(|e| invalid(c, &format!("load_assignment.{}", e.field), e.reason.clone()))?;
    if eps.iter().any(|e| e.hbone) {
        return Err(invalid(
            c,
            "load_assignment",
            "internal (HBONE) addresses in an inline assignment are not implemented".into(),
        ));
    }
    if logical {
        // LOGICAL_DNS connects to one address: the first.
        eps.truncate(1);
    }
    Ok(Some(Inline::Endpoints(eps)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(json: serde_json::Value) -> Cluster {
        crate::envoy::from_json("envoy.config.cluster.v3.Cluster", &json).unwrap()
    }

    /// istiod's STRICT_DNS cluster for a DNS ServiceEntry (`buildCluster`: lookup family,
    /// refresh rate, TTL, jitter and the c-ares resolver; the endpoints inline).
    pub(crate) fn strict_dns(addresses: &[&str], kind: &str) -> serde_json::Value {
        let lb: Vec<_> = addresses
            .iter()
            .map(|a| serde_json::json!({"endpoint": {"address": {"socket_address": {"address": a, "port_value": 8080}}}, "load_balancing_weight": 1}))
            .collect();
        serde_json::json!({
            "name": "inbound-vip|80|http|api.example.test",
            "type": kind,
            "dns_lookup_family": "V4_ONLY",
            "dns_refresh_rate": "60s",
            "respect_dns_ttl": true,
            "dns_jitter": "0s",
            // istiod's typed_config (CaresDnsResolverConfig) is not in the JSON test
            // descriptors; over the wire it is an opaque Any the waypoint does not read.
            "typed_dns_resolver_config": {"name": "envoy.network.dns_resolver.cares"},
            "load_assignment": {
                "cluster_name": "inbound-vip|80|http|api.example.test",
                "endpoints": [{"locality": {}, "lb_endpoints": lb, "load_balancing_weight": addresses.len()}]
            }
        })
    }

    #[test]
    fn strict_dns_uses_every_address_and_logical_dns_the_first() {
        let c = cluster(strict_dns(&["127.0.0.7", "127.0.0.8"], "STRICT_DNS"));
        let Some(Inline::Endpoints(eps)) = endpoints(&c).unwrap() else {
            panic!("endpoints")
        };
        assert_eq!(eps.len(), 2);
        assert!(eps.iter().all(|e| !e.hbone));
        let c = cluster(strict_dns(&["127.0.0.7", "127.0.0.8"], "LOGICAL_DNS"));
        let Some(Inline::Endpoints(eps)) = endpoints(&c).unwrap() else {
            panic!("endpoints")
        };
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].address.to_string(), "127.0.0.7:8080");
        let c = cluster(strict_dns(&["127.0.0.9"], "STATIC"));
        assert!(matches!(endpoints(&c).unwrap(), Some(Inline::Endpoints(e)) if e.len() == 1));
        let mut eds = strict_dns(&[], "EDS");
        eds.as_object_mut().unwrap().remove("load_assignment");
        assert_eq!(endpoints(&cluster(eds)).unwrap(), None);
    }

    #[test]
    fn what_is_not_implemented_is_refused_by_field() {
        let c = cluster(strict_dns(&["api.example.test."], "LOGICAL_DNS"));
        let want = DnsName {
            hostname: "api.example.test".into(),
            port: 8080,
            logical: true,
        };
        assert_eq!(endpoints(&c).unwrap(), Some(Inline::Dns(want)));
        let c = cluster(strict_dns(&["127.0.0.7", "api.example.test"], "STRICT_DNS"));
        let e = endpoints(&c).unwrap_err();
        assert_eq!(
            e.field,
            "load_assignment.endpoints[0].lb_endpoints[1].endpoint.address.socket_address.address"
        );
        assert!(e.reason.contains("only as the one endpoint"), "{e}");
        let c = cluster(strict_dns(&["api.example.test"], "STATIC"));
        assert!(endpoints(&c).is_err(), "STATIC needs IP addresses");
        // ORIGINAL_DST: CLUSTER_PROVIDED, no endpoints, the port override honoured.
        let c = cluster(strict_dns(&["127.0.0.7"], "ORIGINAL_DST"));
        assert_eq!(endpoints(&c).unwrap_err().field, "lb_policy");
        let mut od = strict_dns(&[], "ORIGINAL_DST");
        let o = od.as_object_mut().unwrap();
        o.insert("lb_policy".into(), serde_json::json!("CLUSTER_PROVIDED"));
        assert_eq!(
            endpoints(&cluster(od.clone())).unwrap_err().field,
            "load_assignment"
        );
        let o = od.as_object_mut().unwrap();
        o.remove("load_assignment");
        assert_eq!(
            endpoints(&cluster(od.clone())).unwrap(),
            Some(Inline::OriginalDst(None))
        );
        od["original_dst_lb_config"] = serde_json::json!({"upstream_port_override": 8443});
        assert_eq!(
            endpoints(&cluster(od.clone())).unwrap(),
            Some(Inline::OriginalDst(Some(8443)))
        );
        od["original_dst_lb_config"] =
            serde_json::json!({"metadata_key": {"key": "k", "path": [{"key": "p"}]}});
        assert_eq!(
            endpoints(&cluster(od)).unwrap_err().field,
            "original_dst_lb_config.metadata_key"
        );
        let mut none = strict_dns(&[], "STRICT_DNS");
        none.as_object_mut().unwrap().remove("load_assignment");
        assert_eq!(
            endpoints(&cluster(none)).unwrap_err().field,
            "load_assignment"
        );
    }
}
