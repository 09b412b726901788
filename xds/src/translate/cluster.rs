//! Clusters: istiod's `inbound-vip|<port>|<protocol>|<host>` clusters name a Service port;
//! their endpoints arrive over EDS, or inline for ServiceEntries ([`super::inline_cluster`]).

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::ClusterDiscoveryType, cluster::DiscoveryType, Cluster,
};
use filters::model::Protocol;
use prost::Message;

use super::cluster_hash::{balancing, check_hash_configs};
use super::error::InvalidResource;
use super::metadata;

/// What a cluster tells the waypoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterInfo {
    /// The cluster name.
    pub name: String,
    /// The Service hostname.
    pub host: String,
    /// The Service port.
    pub port: u16,
    /// `namespace` and `name` of the Service.
    pub namespace: String,
    /// Service name.
    pub service: String,
    /// Declared protocol of the port.
    pub protocol: Protocol,
    /// The EDS resource name to subscribe to.
    pub eds_name: String,
    /// The load-balancing policy.
    pub balancing: filters::balance::Policy,
    /// Most requests in flight (the circuit breaker's `max_requests`, and for HTTP/1.1
    /// also `max_connections` + `max_pending_requests`); `None` for unlimited.
    pub max_requests: Option<usize>,
    /// The cap on HTTP/2 connections and the requests waiting past it (the circuit
    /// breaker's `max_connections` and `max_pending_requests`), if `max_connections` is
    /// below Istio's "unlimited".
    pub connection_cap: Option<filters::model::ConnectionCap>,
    /// The HTTP version requests go upstream in.
    pub upstream_protocol: filters::model::UpstreamProtocol,
    /// The cluster has HTTP/2 protocol options (explicit, or for the client's protocol):
    /// TCP tunneled through a proxy at the endpoint goes in HTTP/2.
    pub http2_options: bool,
    /// Idle timeout, requests and lifetime per upstream connection.
    pub connection_limits: filters::model::ConnectionLimits,
    /// The limit on retries in flight (`max_retries` or `retry_budget`), if any.
    pub retry_limit: Option<filters::retry::limit::RetryLimit>,
    /// Outlier detection (DestinationRule `outlierDetection`), if the cluster has it.
    pub outlier: Option<filters::balance::outlier::OutlierPolicy>,
    /// Slow start of new endpoints (DestinationRule `warmup`), if the cluster has it.
    pub slow_start: Option<filters::balance::slow_start::SlowStart>,
    /// Localities are chosen by their weights (`common_lb_config.locality_weighted_lb_config`,
    /// which istiod sets for `localityLbSetting` `distribute` or explicit failover).
    pub locality_weighted: bool,
    /// TLS originated to the endpoints inside the tunnel (DestinationRule `tls`).
    pub tls: Option<filters::model::UpstreamTls>,
    /// The secrets istiod serves over ADS that `tls` verifies the server with and presents
    /// (DestinationRule `credentialName`, a BackendTLSPolicy's `caCertificateRefs`); they
    /// are filled in when the snapshot is built ([`super::Resources::secrets`]).
    pub tls_secrets: super::upstream_tls::TlsSecrets,
    /// The PROXY protocol header sent first on each connection (DestinationRule
    /// `proxyProtocol`).
    pub proxy_protocol: Option<filters::model::ProxyProtocolVersion>,
    /// The DestinationRule subset (`inbound-vip|<port>|http/<subset>|<host>`): the
    /// Service's port restricted to the endpoints EDS sends for this cluster.
    pub subset: Option<String>,
    /// The endpoints of a cluster that is not EDS (STATIC, STRICT_DNS, LOGICAL_DNS), from
    /// its `load_assignment` (empty for a host name); `None` for EDS clusters.
    pub inline_endpoints: Option<Vec<super::endpoint::EndpointInfo>>,
    /// The host name of a STRICT_DNS / LOGICAL_DNS cluster, resolved at run time.
    pub dns: Option<super::inline_cluster::DnsName>,
    /// The DNS cache of a dynamic forward proxy cluster (the host comes from each request).
    pub forward_proxy: Option<super::forward_proxy::DnsCache>,
    /// An ORIGINAL_DST cluster: the tunnel's original destination, with this port override.
    pub original_dst: Option<Option<u16>>,
    /// An extension provider's cluster whose `tlsMode-istio` transport socket match would
    /// originate Istio mTLS to sidecar endpoints, which the waypoint does not: those
    /// endpoints (EDS metadata `tlsMode: istio`, not HBONE) are left out
    /// ([`super::provider_cluster`]).
    pub leaves_out_sidecar_mtls: bool,
}

/// Parses `inbound-vip|8000|http|httpbin.default.svc.cluster.local`.
pub fn parse_name(name: &str) -> Option<(u16, &str, &str)> {
    let mut parts = name.split('|');
    if parts.next()? != "inbound-vip" {
        return None;
    }
    let port = parts.next()?.parse().ok()?;
    let proto = parts.next()?;
    let host = parts.next()?;
    if parts.next().is_some() || host.is_empty() {
        return None;
    }
    Some((port, proto, host))
}

/// Clusters istiod sends a waypoint that the waypoint implements natively (the HBONE
/// originator and the internal listeners' plumbing) or needs no cluster for.
const NATIVE: &[&str] = &[
    "connect_originate",
    "main_internal",
    "encap",
    "BlackHoleCluster",
    "PassthroughCluster",
];

/// Whether `name` is a cluster the waypoint accepts without turning it into a routable
/// Service port: the [`NATIVE`] ones, and `outbound|...` clusters (extension providers such
/// as a tracing collector or an ext_authz server, which the waypoint reaches through its own
/// clients: [`super::provider_cluster`]).
pub fn is_auxiliary(name: &str) -> bool {
    NATIVE.contains(&name)
        || name.starts_with("outbound|")
        || name.starts_with("InboundPassthroughCluster")
}

/// Validates and interprets one cluster.
pub fn convert(c: &Cluster) -> Result<ClusterInfo, InvalidResource> {
    let bad = |field: &str, reason: String| invalid(c, field, reason);
    let Some((port, proto, host)) = parse_name(&c.name) else {
        return Err(bad(
            "name",
            "not an inbound-vip|<port>|<protocol>|<host> cluster".into(),
        ));
    };
    use super::inline_cluster::Inline;
    let (mut inline_endpoints, mut dns, mut forward_proxy, mut original_dst) =
        (None, None, None, None);
    match super::inline_cluster::endpoints(c)? {
        None => {}
        Some(Inline::Endpoints(eps)) => inline_endpoints = Some(eps),
        Some(Inline::Dns(name)) => {
            inline_endpoints = Some(Vec::new());
            dns = Some(name);
        }
        Some(Inline::ForwardProxy(cache)) => {
            inline_endpoints = Some(Vec::new());
            forward_proxy = Some(cache);
        }
        Some(Inline::OriginalDst(port)) => {
            inline_endpoints = Some(Vec::new());
            original_dst = Some(port);
        }
    }
    let unlisted = forward_proxy.is_some() || original_dst.is_some();
    // A host name's resolved addresses are its endpoints: outlier detection and consistent
    // hashing apply over them ([`filters::dns`]). A forward proxy's or original
    // destination's hosts are not endpoints of the cluster.
    if unlisted && c.outlier_detection.is_some() {
        return Err(bad(
            "outlier_detection",
            "ejecting addresses that are not listed endpoints is not implemented".into(),
        ));
    }
    if unlisted {
        // CLUSTER_PROVIDED and its lb_config (checked with the cluster type); nothing
        // else may be set.
        let mut rest = c.clone();
        rest.lb_policy = 0;
        rest.lb_config = None;
        check_load_balancing(&rest)?;
    } else {
        check_load_balancing(c)?;
    }
    check_resilience(c)?;
    let mut options = super::protocol_options::convert(c)
        .map_err(|(field, reason)| invalid(c, &field, reason))?;
    options.limits.tcp_keepalive = super::upstream_connection::tcp_keepalive(c)?;
    options.limits.connect_timeout = Some(super::cluster_fields::connect_timeout(c)?);
    super::cluster_fields::check_unread(c)?;
    let (tls, proxy_protocol) = check_transport_socket(c, options.auto)?;
    let (tls, tls_secrets) = match tls {
        Some((tls, secrets)) => (Some(tls), secrets),
        None => (None, Default::default()),
    };
    let eds_name = c
        .eds_cluster_config
        .as_ref()
        .map(|e| e.service_name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| c.name.clone());
    let (proto, subset) = match proto.split_once('/') {
        None => (proto, None),
        Some((p, s)) if !s.is_empty() && (p == "http" || p == "tcp") => (p, Some(s.to_string())),
        Some(_) => return Err(bad("name", format!("{proto:?} is not <http|tcp>/<subset>"))),
    };
    let protocol = match proto {
        "http" => Protocol::Http,
        "http2" => Protocol::Http2,
        "grpc" => Protocol::Grpc,
        "tcp" => Protocol::Tcp,
        "" => Protocol::Unknown,
        other => return Err(bad("name", format!("unknown protocol {other:?}"))),
    };
    let (service, namespace) = service_of(c, host)?;
    Ok(ClusterInfo {
        name: c.name.clone(),
        host: host.to_string(),
        port,
        namespace,
        service,
        protocol,
        eds_name,
        subset,
        balancing: balancing(c),
        max_requests: max_requests(c, protocol),
        connection_cap: connection_cap(c),
        retry_limit: retry_limit(c),
        outlier: super::outlier::convert(c)?,
        slow_start: super::slow_start::convert(c)?,
        locality_weighted: locality_weighted(c),
        // Without options istiod means HTTP/1.1 for `http` ports, and always writes them
        // for the others; the port's protocol decides then.
        upstream_protocol: options
            .upstream
            .unwrap_or(filters::model::UpstreamProtocol::for_port(protocol)),
        http2_options: options.http2,
        connection_limits: options.limits,
        tls,
        tls_secrets,
        proxy_protocol,
        inline_endpoints,
        dns,
        forward_proxy,
        original_dst,
        leaves_out_sidecar_mtls: false,
    })
}

/// The error for `field` of cluster `c`.
pub(super) fn invalid(c: &Cluster, field: &str, reason: String) -> InvalidResource {
    InvalidResource::new("cluster", &c.name, field, reason)
}

/// Rejects clusters whose endpoints do not come over EDS (for the outbound clusters of
/// extension providers).
pub(super) fn check_discovery_type(c: &Cluster) -> Result<(), InvalidResource> {
    match &c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) if *t == DiscoveryType::Eds as i32 => Ok(()),
        other => Err(invalid(
            c,
            "type",
            format!("only EDS clusters are supported, got {other:?}"),
        )),
    }
}

/// Rejects load-balancing policies other than round robin and least request.
pub(super) fn check_load_balancing(c: &Cluster) -> Result<(), InvalidResource> {
    // Round robin is what the waypoint balances with; LEAST_REQUEST (Istio's default) is
    // approximated by it. Other policies and features are rejected, never ignored.
    match c.lb_policy {
        0 => {}
        // LEAST_REQUEST, RING_HASH, RANDOM, MAGLEV (`balancing`).
        1 | 2 | 3 | 5 => {}
        other => {
            return Err(invalid(
                c,
                "lb_policy",
                format!(
                "only ROUND_ROBIN, LEAST_REQUEST, RING_HASH and MAGLEV are supported, got {other}"
            ),
            ))
        }
    }
    check_lb_configs(c)?;
    if let Some(p) = &c.load_balancing_policy {
        for (i, pol) in p.policies.iter().enumerate() {
            let url = pol
                .typed_extension_config
                .as_ref()
                .and_then(|t| t.typed_config.as_ref())
                .map(|a| a.type_url.as_str())
                .unwrap_or_default();
            if !(url.ends_with(".round_robin.v3.RoundRobin")
                || url.ends_with(".least_request.v3.LeastRequest"))
            {
                return Err(invalid(
                    c,
                    &format!("load_balancing_policy.policies[{i}]"),
                    format!("unsupported policy {url}"),
                ));
            }
        }
    }
    Ok(())
}

/// Rejects active health checks and the circuit-breaker limits not implemented.
pub(super) fn check_resilience(c: &Cluster) -> Result<(), InvalidResource> {
    if !c.health_checks.is_empty() {
        return Err(invalid(
            c,
            "health_checks",
            "active health checks are not supported".into(),
        ));
    }
    if let Some(cb) = &c.circuit_breakers {
        for (i, t) in cb.thresholds.iter().enumerate() {
            let at = |f: &str| format!("circuit_breakers.thresholds[{i}].{f}");
            let limited = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>| {
                v.as_ref().is_some_and(|v| v.value < UNLIMITED)
            };
            if t.priority != 0
                && [
                    &t.max_connections,
                    &t.max_pending_requests,
                    &t.max_requests,
                    &t.max_retries,
                ]
                .into_iter()
                .any(limited)
            {
                return Err(invalid(
                    c,
                    &at("priority"),
                    "limits for HIGH priority routes are not supported".into(),
                ));
            }
            if t.retry_budget
                .as_ref()
                .and_then(|b| b.budget_interval.as_ref())
                .is_some_and(|d| d.seconds != 0 || d.nanos != 0)
            {
                return Err(invalid(
                    c,
                    &at("retry_budget.budget_interval"),
                    "a retry budget over an interval is not supported (only active requests)"
                        .into(),
                ));
            }
        }
    }
    Ok(())
}

/// The policy-specific and common load-balancing settings the waypoint does not implement
/// are refused by field (least request other than two choices, an active-request bias,
/// locality weighting, consistent-hashing options). The panic threshold goes with outlier
/// detection.
fn check_lb_configs(c: &Cluster) -> Result<(), InvalidResource> {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbConfig;
    check_hash_configs(c)?;
    if let Some(LbConfig::LeastRequestLbConfig(l)) = &c.lb_config {
        if l.choice_count.is_some_and(|n| n.value != 2) {
            return Err(invalid(
                c,
                "least_request_lb_config.choice_count",
                "only 2 is supported".into(),
            ));
        }
        // Slow start is read by `slow_start::convert`.
        if l.active_request_bias.is_some() {
            return Err(invalid(
                c,
                "least_request_lb_config.active_request_bias",
                "not supported (the bias is 1, Envoy's default)".into(),
            ));
        }
    }
    if let Some(common) = &c.common_lb_config {
        use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::LocalityConfigSpecifier;
        let unsupported = [
            (
                "locality_config_specifier.zone_aware_lb_config",
                matches!(
                    common.locality_config_specifier,
                    Some(LocalityConfigSpecifier::ZoneAwareLbConfig(_))
                ),
            ),
            (
                "consistent_hashing_lb_config",
                common.consistent_hashing_lb_config.is_some(),
            ),
            (
                "override_host_status",
                common.override_host_status.is_some(),
            ),
        ];
        if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
            return Err(invalid(
                c,
                &format!("common_lb_config.{field}"),
                "not supported".into(),
            ));
        }
    }
    Ok(())
}

/// Whether localities are balanced by their weights.
pub(super) fn locality_weighted(c: &Cluster) -> bool {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::common_lb_config::LocalityConfigSpecifier;
    matches!(
        c.common_lb_config
            .as_ref()
            .and_then(|l| l.locality_config_specifier.as_ref()),
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
    )
}

/// Istio's "no limit" is the largest u32; anything from 2^31 up counts as unlimited.
const UNLIMITED: u32 = 1 << 31;

/// The circuit breaker's limit on requests in flight (default priority): `max_requests`,
/// and for HTTP/1.1 (one request per connection) also `max_connections` plus
/// `max_pending_requests`, as Envoy's HTTP/1.1 pool queues what it cannot send.
pub(super) fn max_requests(c: &Cluster, protocol: Protocol) -> Option<usize> {
    let t = c
        .circuit_breakers
        .as_ref()?
        .thresholds
        .iter()
        .find(|t| t.priority == 0)?;
    let value = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>| {
        v.as_ref().map(|v| v.value).filter(|v| *v < UNLIMITED)
    };
    let requests = value(&t.max_requests);
    let h1 = match (value(&t.max_connections), value(&t.max_pending_requests)) {
        (None, _) | (_, None) => None,
        (Some(c), Some(p)) => Some(c.saturating_add(p)),
    };
    let h2 = matches!(protocol, Protocol::Http2 | Protocol::Grpc);
    let limit = match (requests, h1) {
        (r, _) if h2 => r,
        (Some(r), Some(h)) => Some(r.min(h)),
        (r, h) => r.or(h),
    };
    limit.map(|l| l as usize)
}

/// The cap on the cluster's HTTP/2 connections (default priority): `max_connections`, with
/// `max_pending_requests` bounding the requests that wait for a stream past it. (Over
/// HTTP/1.1 both are already part of [`max_requests`].)
fn connection_cap(c: &Cluster) -> Option<filters::model::ConnectionCap> {
    let t = c
        .circuit_breakers
        .as_ref()?
        .thresholds
        .iter()
        .find(|t| t.priority == 0)?;
    let value = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>| {
        v.as_ref().map(|v| v.value).filter(|v| *v < UNLIMITED)
    };
    Some(filters::model::ConnectionCap {
        cluster: c.name.clone(),
        max_connections: value(&t.max_connections)? as usize,
        max_pending: value(&t.max_pending_requests).map(|p| p as usize),
    })
}

/// The limit on retries in flight (default priority): the retry budget when set (Envoy
/// then ignores `max_retries`), else `max_retries` below Istio's "unlimited".
pub(super) fn retry_limit(c: &Cluster) -> Option<filters::retry::limit::RetryLimit> {
    use filters::retry::limit::RetryLimit;
    let t = c
        .circuit_breakers
        .as_ref()?
        .thresholds
        .iter()
        .find(|t| t.priority == 0)?;
    if let Some(b) = &t.retry_budget {
        return Some(RetryLimit::Budget {
            percent: b.budget_percent.as_ref().map_or(20.0, |p| p.value),
            min_concurrency: b.min_retry_concurrency.as_ref().map_or(3, |v| v.value) as usize,
        });
    }
    t.max_retries
        .as_ref()
        .map(|v| v.value)
        .filter(|v| *v < UNLIMITED)
        .map(|v| RetryLimit::Max(v as usize))
}

/// What a cluster's transport socket asks for inside the tunnel: TLS (with the ADS secret
/// its roots come from, if any), PROXY protocol.
type InsideTunnel = (
    Option<(filters::model::UpstreamTls, super::upstream_tls::TlsSecrets)>,
    Option<filters::model::ProxyProtocolVersion>,
);

/// The transport socket: internal upstream (HBONE, native) or raw buffer, with plaintext
/// or TLS inside the tunnel ([`super::upstream_tls`]), optionally under a PROXY protocol
/// socket ([`super::proxy_protocol`]: the header goes first, then TLS).
pub(super) fn check_transport_socket(
    c: &Cluster,
    auto: super::upstream_tls::AutoSettings,
) -> Result<InsideTunnel, InvalidResource> {
    use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
    use envoy_types::pb::envoy::extensions::transport_sockets::internal_upstream::v3::InternalUpstreamTransport;
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    let Some(ts) = &c.transport_socket else {
        return Ok((None, None));
    };
    let Some(ConfigType::TypedConfig(any)) = &ts.config_type else {
        return Ok((None, None));
    };
    if any.type_url.ends_with("raw_buffer.v3.RawBuffer") {
        return Ok((None, None));
    }
    if !any
        .type_url
        .ends_with("internal_upstream.v3.InternalUpstreamTransport")
    {
        return Err(invalid(
            c,
            "transport_socket",
            format!(
                "unsupported transport socket {}; HBONE towards pods is native",
                any.type_url
            ),
        ));
    }
    let internal = InternalUpstreamTransport::decode(any.value.as_slice())
        .map_err(|e| invalid(c, "transport_socket.typed_config", e.to_string()))?;
    let typed = |t: Option<&envoy_types::pb::envoy::config::core::v3::TransportSocket>| {
        t.and_then(|t| match &t.config_type {
            Some(ConfigType::TypedConfig(a)) => Some(a.clone()),
            _ => None,
        })
    };
    let mut at = "transport_socket.typed_config.transport_socket".to_string();
    let mut inner = typed(internal.transport_socket.as_ref());
    let mut proxy = None;
    if let Some(a) = &inner {
        if a.type_url
            .ends_with("proxy_protocol.v3.ProxyProtocolUpstreamTransport")
        {
            let (version, wrapped) =
                super::proxy_protocol::convert(&a.value).map_err(|(field, reason)| {
                    invalid(c, &format!("{at}.typed_config.{field}"), reason)
                })?;
            proxy = Some(version);
            inner = typed(wrapped.as_ref());
            at = format!("{at}.typed_config.transport_socket");
        }
    }
    let tls = match inner {
        None => None,
        Some(a) if a.type_url.ends_with("raw_buffer.v3.RawBuffer") => None,
        Some(a) if a.type_url.ends_with("tls.v3.UpstreamTlsContext") => {
            let ctx = UpstreamTlsContext::decode(a.value.as_slice())
                .map_err(|e| invalid(c, &at, e.to_string()))?;
            let tls = super::upstream_tls::convert(&ctx, auto).map_err(|(field, reason)| {
                invalid(c, &format!("{at}.typed_config.{field}"), reason)
            })?;
            Some(tls)
        }
        Some(a) => {
            return Err(invalid(
                c,
                &at,
                format!(
                    "{} inside the HBONE tunnel is not supported; refusing rather than sending the stream without it",
                    a.type_url
                ),
            ))
        }
    };
    Ok((tls, proxy))
}

/// The Service's name and namespace: cluster metadata istio.services[0], else the host.
pub(super) fn service_of(c: &Cluster, host: &str) -> Result<(String, String), InvalidResource> {
    let svc = c
        .metadata
        .as_ref()
        .and_then(|m| metadata::path(m, "istio", &["services"]))
        .and_then(|v| metadata::list(v).and_then(|l| l.first().cloned()));
    let (service, namespace) = match svc {
        Some(s) => (
            metadata::string(metadata::field(&s, "name")).unwrap_or_default(),
            metadata::string(metadata::field(&s, "namespace")).unwrap_or_default(),
        ),
        None => {
            let mut labels = host.split('.');
            (
                labels.next().unwrap_or_default().to_string(),
                labels.next().unwrap_or_default().to_string(),
            )
        }
    };
    if service.is_empty() || namespace.is_empty() {
        return Err(invalid(
            c,
            "metadata.filter_metadata.istio.services",
            format!("cannot tell the Service of host {host}"),
        ));
    }
    Ok((service, namespace))
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_istio_cluster_names() {
        assert_eq!(
            super::parse_name("inbound-vip|8000|http|httpbin.default.svc.cluster.local"),
            Some((8000, "http", "httpbin.default.svc.cluster.local"))
        );
        assert_eq!(super::parse_name("outbound|80||x"), None);
        assert_eq!(super::parse_name("inbound-vip|x|http|h"), None);
    }
}
