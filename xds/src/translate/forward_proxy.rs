//! istiod's dynamic forward proxy for a wildcard ServiceEntry with `resolution:
//! DYNAMIC_DNS` enrolled in a waypoint: the `envoy.clusters.dynamic_forward_proxy` cluster
//! (`buildDFPCluster`, pilot/pkg/networking/core/cluster_builder.go, called from
//! `buildWaypointInboundVIPCluster` in cluster_waypoint.go) and the
//! `envoy.filters.http.dynamic_forward_proxy` HTTP filter istiod adds to the chain of such a
//! Service (`BuildWaypointInboundDFPFilter`, pilot/pkg/xds/filters/filters.go, from
//! listener_builder.go), both naming the DNS cache `<host>_dfp_dns_cache`
//! (`model.BuildDNSCacheName`). The virtual host's domains (`buildRouteVHostDomains`,
//! listener_waypoint.go: the wildcard host) restrict which hosts a request may name.
//!
//! Of the DNS cache: `name`, `max_hosts` and `host_ttl` take effect; `dns_lookup_family` is
//! accepted (the waypoint asks for A, then AAAA records, whatever the family; istiod sets
//! it from the waypoint's own IP families). Every other cache field, `sub_clusters_config`,
//! `allow_coalesced_connections`, the filter's `save_upstream_address` and
//! `allow_dynamic_host_from_filter_state` are refused by field.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::extensions::clusters::dynamic_forward_proxy::v3::{
    cluster_config::ClusterImplementationSpecifier, ClusterConfig,
};
use envoy_types::pb::envoy::extensions::common::dynamic_forward_proxy::v3::DnsCacheConfig;
use envoy_types::pb::envoy::extensions::filters::http::dynamic_forward_proxy::v3::{
    filter_config::ImplementationSpecifier, FilterConfig,
};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::Bad;

/// The cluster type's extension name.
pub const CLUSTER_TYPE: &str = "envoy.clusters.dynamic_forward_proxy";
/// The HTTP filter's name.
pub const HTTP_FILTER: &str = "envoy.filters.http.dynamic_forward_proxy";
/// The network filter's name (TLS ports: the host from the ClientHello's SNI).
pub const SNI_FILTER: &str = "envoy.filters.network.sni_dynamic_forward_proxy";

/// A DNS cache's settings that take effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsCache {
    /// The cache name.
    pub name: String,
    /// The most hosts it holds.
    pub max_hosts: usize,
    /// How long an unused host stays.
    pub host_ttl: Duration,
}

fn decode<M: Message + Default>(any: &Any, want: &str, at: &str) -> Result<M, Bad> {
    if !any.type_url.ends_with(want) {
        return Err((
            at.to_string(),
            format!("expected {want}, got {}", any.type_url),
        ));
    }
    M::decode(any.value.as_slice())
        .map_err(|e| (at.to_string(), format!("cannot decode {want}: {e}")))
}

fn duration(d: &envoy_types::pb::google::protobuf::Duration) -> Duration {
    Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
}

/// Validates a DNS cache configuration at `at`.
#[allow(deprecated)] // deprecated fields are refused too, never ignored
fn dns_cache(c: &DnsCacheConfig, at: &str) -> Result<DnsCache, Bad> {
    if c.name.is_empty() {
        return Err((format!("{at}.name"), "required".into()));
    }
    let unsupported = [
        ("dns_refresh_rate", c.dns_refresh_rate.is_some()),
        ("dns_min_refresh_rate", c.dns_min_refresh_rate.is_some()),
        (
            "disable_dns_refresh_on_failure",
            c.disable_dns_refresh_on_failure,
        ),
        (
            "dns_failure_refresh_rate",
            c.dns_failure_refresh_rate.is_some(),
        ),
        (
            "dns_cache_circuit_breaker",
            c.dns_cache_circuit_breaker.is_some(),
        ),
        ("use_tcp_for_dns_lookups", c.use_tcp_for_dns_lookups),
        ("dns_resolution_config", c.dns_resolution_config.is_some()),
        (
            "typed_dns_resolver_config",
            c.typed_dns_resolver_config.is_some(),
        ),
        ("preresolve_hostnames", !c.preresolve_hostnames.is_empty()),
        ("dns_query_timeout", c.dns_query_timeout.is_some()),
        ("key_value_config", c.key_value_config.is_some()),
        (
            "resolved_address_filter",
            c.resolved_address_filter.is_some(),
        ),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err((
            format!("{at}.{field}"),
            "not implemented (the waypoint's cache honours TTLs, at least 1 s apart)".into(),
        ));
    }
    let max_hosts = c
        .max_hosts
        .map_or(filters::forward_proxy::DEFAULT_MAX_HOSTS, |v| {
            v.value as usize
        });
    if max_hosts == 0 {
        return Err((format!("{at}.max_hosts"), "must be above 0".into()));
    }
    Ok(DnsCache {
        name: c.name.clone(),
        max_hosts,
        host_ttl: c
            .host_ttl
            .as_ref()
            .map_or(filters::forward_proxy::DEFAULT_HOST_TTL, duration),
    })
}

/// The DNS cache of a dynamic forward proxy cluster whose `cluster_type` is `custom`.
pub fn cluster(
    c: &Cluster,
    custom: &envoy_types::pb::envoy::config::cluster::v3::cluster::CustomClusterType,
) -> Result<DnsCache, Bad> {
    let at = "cluster_type.typed_config";
    let any = custom
        .typed_config
        .as_ref()
        .ok_or_else(|| (at.to_string(), "missing".to_string()))?;
    let cfg: ClusterConfig = decode(
        any,
        "envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
        at,
    )?;
    if cfg.allow_coalesced_connections {
        return Err((
            format!("{at}.allow_coalesced_connections"),
            "not implemented".into(),
        ));
    }
    if c.lb_policy != 6 {
        return Err((
            "lb_policy".into(),
            "a dynamic forward proxy cluster balances itself (CLUSTER_PROVIDED)".into(),
        ));
    }
    // `allow_insecure_cluster_options` only lifts Envoy's demand for auto_sni and
    // auto_san_validation; the waypoint makes no such demand, so either value is served.
    match &cfg.cluster_implementation_specifier {
        Some(ClusterImplementationSpecifier::DnsCacheConfig(d)) => {
            dns_cache(d, &format!("{at}.dns_cache_config"))
        }
        Some(ClusterImplementationSpecifier::SubClustersConfig(_)) => Err((
            format!("{at}.sub_clusters_config"),
            "not implemented (istiod uses a DNS cache)".into(),
        )),
        None => Err((format!("{at}.dns_cache_config"), "required".into())),
    }
}

/// Validates the HTTP filter's configuration (at `at`); its DNS cache.
pub fn http_filter(any: &Any, at: &str) -> Result<DnsCache, Bad> {
    let at = format!("{at}.typed_config");
    let cfg: FilterConfig = decode(
        any,
        "envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig",
        &at,
    )?;
    if cfg.save_upstream_address {
        return Err((
            format!("{at}.save_upstream_address"),
            "not implemented".into(),
        ));
    }
    if cfg.allow_dynamic_host_from_filter_state {
        return Err((
            format!("{at}.allow_dynamic_host_from_filter_state"),
            "not implemented".into(),
        ));
    }
    match &cfg.implementation_specifier {
        Some(ImplementationSpecifier::DnsCacheConfig(d)) => {
            dns_cache(d, &format!("{at}.dns_cache_config"))
        }
        Some(ImplementationSpecifier::SubClusterConfig(_)) => Err((
            format!("{at}.sub_cluster_config"),
            "not implemented (istiod uses a DNS cache)".into(),
        )),
        None => Err((format!("{at}.dns_cache_config"), "required".into())),
    }
}

/// Validates the SNI network filter (`buildSNIDFPFilter`,
/// pilot/pkg/networking/core/networkfilter.go, before the TCP proxy of a DYNAMIC_DNS
/// entry's TLS port): its DNS cache and the upstream `port_value`, which the waypoint
/// takes from the cluster's port, so the two must agree ([`check_sni_port`]).
pub fn sni_filter(any: &Any, at: &str) -> Result<(DnsCache, u16), Bad> {
    use envoy_types::pb::envoy::extensions::filters::network::sni_dynamic_forward_proxy::v3::{
        filter_config::PortSpecifier, FilterConfig as SniConfig,
    };
    let at = format!("{at}.typed_config");
    let cfg: SniConfig = decode(
        any,
        "envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3.FilterConfig",
        &at,
    )?;
    if cfg.save_upstream_address {
        return Err((
            format!("{at}.save_upstream_address"),
            "not implemented".into(),
        ));
    }
    let cache = match &cfg.dns_cache_config {
        Some(d) => dns_cache(d, &format!("{at}.dns_cache_config"))?,
        None => return Err((format!("{at}.dns_cache_config"), "required".into())),
    };
    let port = match cfg.port_specifier {
        Some(PortSpecifier::PortValue(p)) => u16::try_from(p).ok().filter(|p| *p > 0),
        None => None,
    }
    .ok_or_else(|| {
        (
            format!("{at}.port_value"),
            "a port between 1 and 65535 is required".to_string(),
        )
    })?;
    Ok((cache, port))
}

/// The SNI filter's `port_value` must be the port of the TCP proxy's `cluster`
/// (`inbound-vip|<port>|tcp|<host>`), which the waypoint connects to.
pub fn check_sni_port(port: u16, cluster: &str, at: &str) -> Result<(), Bad> {
    match super::cluster::parse_name(cluster) {
        Some((p, _, _)) if p == port => Ok(()),
        _ => Err((
            format!("{at}.typed_config.port_value"),
            format!("{port} is not the port of the TCP proxy's cluster {cluster}"),
        )),
    }
}
