//! The settings istiod writes on a waypoint TCP port's `tcp_proxy` from the port's
//! DestinationRule (`buildWaypointNetworkFilters` in listener_waypoint.go):
//! `idle_timeout` (`connectionPool.tcp.idleTimeout`, else the proxy's `IDLE_TIMEOUT`
//! metadata; nothing by default), `max_downstream_connection_duration`
//! (`connectionPool.tcp.maxConnectionDuration`) and a source-IP `hash_policy`
//! (`maybeSetHashPolicy` in networkfilter.go, from `loadBalancer.consistentHash.useSourceIp`),
//! and `tunneling_config` (`tunnelingconfig.Apply`, from `trafficPolicy.tunnel`, or the
//! subset's when the port's single TCP route names one): `hostname` as
//! `targetHost:targetPort` and `use_post` for `protocol: POST`.

use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::TunnelingConfig;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::r#type::v3::hash_policy::PolicySpecifier;
use filters::model::{TcpLimits, TcpTunnel, TunnelMethod};
use filters::route::model::{HashPolicy, HashSource};

use super::Bad;

/// What a TCP chain's proxy asks of its tunnels beyond the cluster.
#[derive(Debug, Clone, Default)]
pub struct TcpSettings {
    /// Idle timeout and longest duration.
    pub limits: TcpLimits,
    /// The endpoint's hash inputs (the client's IP, or none for the cluster's own pick).
    pub hash_policy: Vec<HashPolicy>,
    /// The HTTP proxy at the endpoint the tunnels are carried through.
    pub tunnel: Option<TcpTunnel>,
}

/// Reads the TCP proxy's time limits and hash policy; refuses what it cannot honour.
pub(super) fn settings(tcp: &TcpProxy, at: &str) -> Result<TcpSettings, Bad> {
    let field = |name: &str| format!("{at}.typed_config.{name}");
    let non_negative = |d: Option<&envoy_types::pb::google::protobuf::Duration>, name: &str| match d
    {
        Some(d) if d.seconds < 0 || d.nanos < 0 => {
            Err((field(name), "a negative duration is not valid".to_string()))
        }
        _ => Ok(()),
    };
    non_negative(tcp.idle_timeout.as_ref(), "idle_timeout")?;
    non_negative(
        tcp.max_downstream_connection_duration.as_ref(),
        "max_downstream_connection_duration",
    )?;
    // `0s` turns the idle timeout off (Envoy's meaning).
    let idle_timeout = super::duration(tcp.idle_timeout.as_ref());
    let max_duration = match tcp.max_downstream_connection_duration.as_ref() {
        None => None,
        Some(d) => match super::duration(Some(d)) {
            Some(d) if d >= std::time::Duration::from_millis(1) => Some(d),
            _ => {
                return Err((
                    field("max_downstream_connection_duration"),
                    "must be at least 1ms".to_string(),
                ))
            }
        },
    };
    let mut hash_policy = Vec::new();
    for (i, p) in tcp.hash_policy.iter().enumerate() {
        match &p.policy_specifier {
            Some(PolicySpecifier::SourceIp(_)) => hash_policy.push(HashPolicy {
                source: HashSource::SourceIp,
                terminal: false,
            }),
            _ => {
                return Err((
                    field(&format!("hash_policy[{i}]")),
                    "only source_ip is supported".to_string(),
                ))
            }
        }
    }
    Ok(TcpSettings {
        limits: TcpLimits {
            idle_timeout,
            max_duration,
        },
        hash_policy,
        tunnel: tcp
            .tunneling_config
            .as_ref()
            .map(|t| tunnel(t, &field("tunneling_config")))
            .transpose()?,
    })
}

/// Reads `tunneling_config`: a literal `host:port` hostname, CONNECT or POST (with its
/// path). Command operators in the hostname (`%...%`), extra headers, propagated response
/// headers or trailers and request IDs (any other field) are refused by field: istiod writes none of them
/// on a waypoint's TCP ports, and the waypoint has no use for them.
fn tunnel(t: &TunnelingConfig, at: &str) -> Result<TcpTunnel, Bad> {
    let bad = |name: &str, reason: &str| Err((format!("{at}.{name}"), reason.to_string()));
    if t.hostname.is_empty() {
        return bad("hostname", "must not be empty");
    }
    if t.hostname.contains('%') {
        return bad(
            "hostname",
            "command operators are not supported; only a literal host:port",
        );
    }
    if t.hostname.parse::<http::uri::Authority>().is_err() || t.hostname.contains('@') {
        return bad("hostname", "not a valid host:port authority");
    }
    if !t.headers_to_add.is_empty() {
        return bad(
            "headers_to_add",
            "extra tunnel request headers are not supported",
        );
    }
    if t.propagate_response_headers {
        return bad(
            "propagate_response_headers",
            "no network filter reads the tunnel's response headers",
        );
    }
    if t.propagate_response_trailers {
        return bad(
            "propagate_response_trailers",
            "no network filter reads the tunnel's response trailers",
        );
    }
    // Anything else (request IDs) is refused by its name.
    super::residual::refuse(
        at,
        super::residual::first_set(
            "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.TunnelingConfig",
            &TunnelingConfig {
                hostname: String::new(),
                use_post: false,
                post_path: String::new(),
                ..t.clone()
            },
        ),
    )?;
    let method = if t.use_post {
        let path = if t.post_path.is_empty() {
            "/".to_string()
        } else {
            t.post_path.clone()
        };
        if !path.starts_with('/') || path.parse::<http::uri::PathAndQuery>().is_err() {
            return bad("post_path", "not a valid absolute path");
        }
        TunnelMethod::Post { path }
    } else {
        if !t.post_path.is_empty() {
            return bad("post_path", "set without use_post");
        }
        TunnelMethod::Connect
    };
    // The HTTP version is the cluster's, set when the snapshot is built.
    Ok(TcpTunnel {
        hostname: t.hostname.clone(),
        method,
        http2: false,
    })
}
