//! Extension providers' clusters: the `outbound|<port>||<host>` EDS clusters an ext_authz
//! server, an OTLP collector or a gRPC access-log service is reached through. Nothing is
//! routed to them; the waypoint's own clients reach their endpoints through the Service
//! port the cluster stands for ([`outbound`]), so every setting the upstream path honours
//! for a routed request takes effect for them too: the connect timeout, balancing, the
//! connection-pool limits, TCP keepalive, slow start, locality weights. What would need a
//! routed request (outlier detection's outcomes, circuit-breaker and retry limits) and
//! every field no translator reads are refused by name, with the same audit as the
//! `inbound-vip` clusters (`cluster_fields::check_unread`).
//!
//! istiod writes them as `buildOutboundClusters` (`pilot/pkg/networking/core/cluster.go`)
//! builds a plain Service's cluster for a waypoint: `buildCluster` and `applyDestinationRule`
//! (`cluster_builder.go`), `applyTrafficPolicy` (`cluster_traffic_policy.go`:
//! `connect_timeout`, default circuit breakers, `lb_policy`, outlier detection with a
//! DestinationRule), `applyUpstreamTLSSettings` / `applyHBONETransportSocketMatches`
//! (`cluster_tls.go`: a waypoint always gets `transport_socket_matches`), and
//! `applyMetadataExchange` (`istio.metadata_exchange` upstream filter,
//! `PILOT_ENABLE_METADATA_EXCHANGE`, on by default). The two waypoint-specific parts are
//! read here ([`istiod_parts`]); the rest goes through the same checks as `cluster.rs`.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::google::protobuf::{value::Kind, Struct};
use filters::model::Protocol;

use super::cluster::{
    check_discovery_type, check_load_balancing, check_resilience, check_transport_socket, invalid,
    locality_weighted, max_requests, retry_limit, service_of, ClusterInfo,
};
use super::cluster_hash::balancing;
use super::error::InvalidResource;

/// The upstream network filter istiod puts on outbound clusters (`xdsfilters.TCPClusterMx`).
/// It only acts on a connection whose TLS negotiated `istio-peer-exchange`, which the
/// waypoint never offers to a provider (plaintext, or HBONE to a mesh pod), so it has no
/// effect to implement.
const METADATA_EXCHANGE: &str = "istio.metadata_exchange";

/// Parses `outbound|9000||ext-authz.foo.svc.cluster.local` (no subset).
fn parse_name(name: &str) -> Option<(u16, &str)> {
    let mut parts = name.split('|');
    let (kind, port, subset, host) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if kind != "outbound" || !subset.is_empty() || host.is_empty() || parts.next().is_some() {
        return None;
    }
    Some((port.parse().ok()?, host))
}

/// An `outbound|<port>||<host>` EDS cluster (an extension provider's server) as the Service
/// port it stands for, its endpoints arriving over EDS; `Ok(None)` for other outbound
/// clusters (subsets, non-EDS), which no provider names and stay unused. A field that
/// would not take effect is an error naming it.
pub fn outbound(c: &Cluster) -> Result<Option<ClusterInfo>, InvalidResource> {
    let Some((port, host)) = parse_name(&c.name) else {
        return Ok(None);
    };
    if check_discovery_type(c).is_err() {
        return Ok(None);
    }
    check_load_balancing(c)?;
    check_resilience(c)?;
    check_routed_only(c)?;
    let options = super::protocol_options::convert(c)
        .map_err(|(field, reason)| invalid(c, &field, reason))?;
    let mut limits = options.limits;
    limits.tcp_keepalive = super::upstream_connection::tcp_keepalive(c)?;
    limits.connect_timeout = Some(super::cluster_fields::connect_timeout(c)?);
    let (rest, sidecar_mtls) = istiod_parts(c)?;
    super::cluster_fields::check_unread(&rest)?;
    let (tls, proxy) = check_transport_socket(c, options.auto)?;
    if tls.is_some() || proxy.is_some() {
        return Err(invalid(
            c,
            "transport_socket",
            "TLS or the PROXY protocol towards an extension provider is not supported".into(),
        ));
    }
    let protocol = match options.upstream {
        Some(filters::model::UpstreamProtocol::Http2) => Protocol::Http2,
        _ => Protocol::Unknown,
    };
    let (service, namespace) = service_of(c, host)?;
    Ok(Some(ClusterInfo {
        name: c.name.clone(),
        host: host.to_string(),
        port,
        namespace,
        service,
        protocol,
        eds_name: c
            .eds_cluster_config
            .as_ref()
            .map(|e| e.service_name.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| c.name.clone()),
        balancing: balancing(c),
        max_requests: None,
        connection_cap: None,
        retry_limit: None,
        outlier: None,
        slow_start: super::slow_start::convert(c)?,
        locality_weighted: locality_weighted(c),
        tls: None,
        tls_secrets: Default::default(),
        proxy_protocol: None,
        upstream_protocol: filters::model::UpstreamProtocol::for_port(protocol),
        http2_options: options.http2,
        connection_limits: limits,
        subset: None,
        inline_endpoints: None,
        dns: None,
        forward_proxy: None,
        original_dst: None,
        leaves_out_sidecar_mtls: sidecar_mtls,
    }))
}

/// Refuses what only a routed request would apply: outlier detection (no provider call
/// reports its outcome), and circuit-breaker limits below Istio's "unlimited" on requests
/// and retries (a provider's calls are neither counted nor retried by the router).
fn check_routed_only(c: &Cluster) -> Result<(), InvalidResource> {
    if c.outlier_detection.is_some() {
        return Err(invalid(
            c,
            "outlier_detection",
            "not supported for an extension provider's cluster".into(),
        ));
    }
    if max_requests(c, Protocol::Http).is_some() || max_requests(c, Protocol::Http2).is_some() {
        return Err(invalid(
            c,
            "circuit_breakers.thresholds",
            "request limits on an extension provider's cluster are not supported".into(),
        ));
    }
    if retry_limit(c).is_some() {
        return Err(invalid(
            c,
            "circuit_breakers.thresholds",
            "retry limits on an extension provider's cluster are not supported".into(),
        ));
    }
    Ok(())
}

/// What a match selects by its keys.
enum Selects {
    /// Every endpoint (`{}`).
    Every,
    /// Endpoints in the ambient mesh (`{tunnel: http}`).
    Hbone,
    /// Sidecar endpoints (`{tlsMode: istio}`).
    Sidecar,
}

fn selects(m: Option<&Struct>) -> Option<Selects> {
    let Some(m) = m else {
        return Some(Selects::Every);
    };
    let only = |key: &str, want: &str| {
        m.fields.len() == 1
            && matches!(m.fields.get(key).and_then(|v| v.kind.as_ref()),
                Some(Kind::StringValue(s)) if s == want)
    };
    if m.fields.is_empty() {
        Some(Selects::Every)
    } else if only("tunnel", "http") {
        Some(Selects::Hbone)
    } else if only("tlsMode", "istio") {
        Some(Selects::Sidecar)
    } else {
        None
    }
}

/// The socket's type URL, if it has a typed config.
fn socket_type(t: Option<&envoy_types::pb::envoy::config::core::v3::TransportSocket>) -> &str {
    match t.and_then(|t| t.config_type.as_ref()) {
        Some(ConfigType::TypedConfig(a)) => a.type_url.as_str(),
        _ => "",
    }
}

/// Reads the parts istiod writes on a waypoint's outbound clusters and `cluster.rs` does not:
/// the [`METADATA_EXCHANGE`] filter (no effect), and `transport_socket_matches` in
/// `applyHBONETransportSocketMatches`' shapes without TLS of the user's: `hbone`
/// (`{tunnel: http}`: HBONE through `connect_originate`, plaintext inside, which endpoints
/// given as internal addresses get natively), `tlsMode-istio` (`{tlsMode: istio}`: Istio
/// mTLS to sidecar pods, which the waypoint does not originate, so those endpoints are
/// left out rather than reached in plaintext) and a plaintext catch-all last
/// (`tlsMode-disabled`). Returns the cluster without them, and whether sidecar endpoints
/// are left out.
fn istiod_parts(c: &Cluster) -> Result<(Cluster, bool), InvalidResource> {
    let mut sidecar = false;
    let last = c.transport_socket_matches.len().saturating_sub(1);
    for (i, m) in c.transport_socket_matches.iter().enumerate() {
        let at = format!("transport_socket_matches[{i}]");
        let ts = m.transport_socket.as_ref();
        let raw = |url: &str| url.is_empty() || url.ends_with("raw_buffer.v3.RawBuffer");
        match selects(m.r#match.as_ref()) {
            Some(Selects::Every) if i != last => {
                return Err(invalid(
                    c,
                    &at,
                    "a match of every endpoint must come last (the entries after it would never be chosen)".into(),
                ))
            }
            Some(Selects::Every) if raw(socket_type(ts)) => {}
            Some(Selects::Hbone) => {
                // The inner socket must be plaintext, as for an `inbound-vip` cluster.
                let mut one = c.clone();
                one.transport_socket = m.transport_socket.clone();
                let url = socket_type(ts);
                let tunnelled = check_transport_socket(&one, Default::default())
                    .map_err(|e| invalid(c, &format!("{at}.{}", e.field), e.reason))?;
                if !url.ends_with("internal_upstream.v3.InternalUpstreamTransport")
                    || tunnelled.0.is_some()
                    || tunnelled.1.is_some()
                {
                    return Err(invalid(
                        c,
                        &format!("{at}.transport_socket"),
                        "only HBONE with plaintext inside is supported towards an extension provider".into(),
                    ));
                }
            }
            Some(Selects::Sidecar) if socket_type(ts).ends_with("tls.v3.UpstreamTlsContext") => {
                sidecar = true;
            }
            _ => {
                return Err(invalid(
                    c,
                    &at,
                    format!(
                        "only istiod's hbone, tlsMode-istio and plaintext matches are supported, got {:?} with {}",
                        m.name,
                        socket_type(ts)
                    ),
                ))
            }
        }
    }
    let mut rest = c.clone();
    rest.transport_socket_matches.clear();
    rest.filters.retain(|f| f.name != METADATA_EXCHANGE);
    Ok((rest, sidecar))
}

#[cfg(test)]
mod tests;
