//! The settings istiod writes on a waypoint TCP port's `tcp_proxy` from the port's
//! DestinationRule (`buildWaypointNetworkFilters` in listener_waypoint.go):
//! `idle_timeout` (`connectionPool.tcp.idleTimeout`, else the proxy's `IDLE_TIMEOUT`
//! metadata; nothing by default), `max_downstream_connection_duration`
//! (`connectionPool.tcp.maxConnectionDuration`) and a source-IP `hash_policy`
//! (`maybeSetHashPolicy` in networkfilter.go, from `loadBalancer.consistentHash.useSourceIp`).

use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::r#type::v3::hash_policy::PolicySpecifier;
use filters::model::TcpLimits;
use filters::route::model::{HashPolicy, HashSource};

use super::Bad;

/// What a TCP chain's proxy asks of its tunnels beyond the cluster.
#[derive(Debug, Clone, Default)]
pub struct TcpSettings {
    /// Idle timeout and longest duration.
    pub limits: TcpLimits,
    /// The endpoint's hash inputs (the client's IP, or none for the cluster's own pick).
    pub hash_policy: Vec<HashPolicy>,
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
    })
}
