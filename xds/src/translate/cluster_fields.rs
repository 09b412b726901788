//! The `Cluster` fields no other translator reads: `connect_timeout` takes effect, and
//! every other field is refused by name unless it holds a value with no behaviour (Envoy's
//! default, or a statistics-only setting istiod always writes), so that nothing a cluster
//! says is accepted and then ignored.
//!
//! istiod writes, for a waypoint's `inbound-vip` clusters (`buildWaypointInboundVIPCluster`
//! in `pilot/pkg/networking/core/cluster_waypoint.go`, `buildCluster` and
//! `applyDefaultConnectionPool` in `cluster_builder.go`, `applyConnectionPool` and
//! `applyLoadBalancer` in `cluster_traffic_policy.go`): `connect_timeout` (DestinationRule
//! `connectionPool.tcp.connectTimeout`, else MeshConfig `connectTimeout`, 10 s by default),
//! `alt_stat_name` (a statistics prefix; the waypoint keeps no per-cluster Envoy
//! statistics, so it names nothing here), `circuit_breakers.thresholds[].track_remaining`
//! (statistics only), and with `AMBIENT_ENABLE_BAGGAGE`
//! the `upstream_hbone_peer_metadata` cluster filter (the destination's peer metadata,
//! which the waypoint takes from the endpoint's workload). The hash tables' settings are
//! checked where the cluster's policy is read (`cluster.rs`). The other fields read here
//! are ones istiod never writes for a waypoint.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    cluster::{ClusterDiscoveryType, DiscoveryType},
    Cluster,
};

use super::cluster::invalid;
use super::error::InvalidResource;

/// Envoy's `connect_timeout` when a cluster sets none.
pub const ENVOY_DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster filter istiod adds with `AMBIENT_ENABLE_BAGGAGE` (`applyBaggageMetadataDiscovery`
/// in `cluster_builder.go`, `WaypointClusterBaggagePeerMetadata` in
/// `pilot/pkg/xds/filters/filters.go`).
const PEER_METADATA_FILTER: &str = "upstream_hbone_peer_metadata";

/// The time allowed to open a connection to an endpoint: `connect_timeout`, Envoy's 5 s
/// when unset; zero is refused (Envoy requires more than zero).
pub fn connect_timeout(c: &Cluster) -> Result<Duration, InvalidResource> {
    match &c.connect_timeout {
        None => Ok(ENVOY_DEFAULT_CONNECT_TIMEOUT),
        Some(d) => super::duration(Some(d))
            .filter(|_| d.seconds >= 0 && d.nanos >= 0)
            .ok_or_else(|| invalid(c, "connect_timeout", "must be greater than zero".into())),
    }
}

/// Refuses, by field, what no translator reads and is not a value without behaviour.
#[allow(deprecated)] // deprecated fields are refused all the same
pub fn check_unread(c: &Cluster) -> Result<(), InvalidResource> {
    let set = |field: &str, on: bool| -> Result<(), InvalidResource> {
        if on {
            Err(invalid(c, field, "not supported".into()))
        } else {
            Ok(())
        }
    };
    set(
        "transport_socket_matches",
        !c.transport_socket_matches.is_empty(),
    )?;
    set(
        "transport_socket_matcher",
        c.transport_socket_matcher.is_some(),
    )?;
    set("stats_matcher", c.stats_matcher.is_some())?;
    set(
        "per_connection_buffer_limit_bytes",
        c.per_connection_buffer_limit_bytes.is_some(),
    )?;
    set(
        "per_connection_buffer_high_watermark_timeout",
        c.per_connection_buffer_high_watermark_timeout.is_some(),
    )?;
    set(
        "max_requests_per_connection",
        c.max_requests_per_connection.is_some(),
    )?;
    // The deprecated cluster-level protocol options: istiod writes
    // `typed_extension_protocol_options` instead.
    set(
        "upstream_http_protocol_options",
        c.upstream_http_protocol_options.is_some(),
    )?;
    set(
        "common_http_protocol_options",
        c.common_http_protocol_options.is_some(),
    )?;
    set("http_protocol_options", c.http_protocol_options.is_some())?;
    set("protocol_selection", c.protocol_selection != 0)?;
    set(
        "dns_failure_refresh_rate",
        c.dns_failure_refresh_rate.is_some(),
    )?;
    set("dns_resolvers", !c.dns_resolvers.is_empty())?;
    set("use_tcp_for_dns_lookups", c.use_tcp_for_dns_lookups)?;
    set("dns_resolution_config", c.dns_resolution_config.is_some())?;
    // Envoy's default is to wait; the waypoint serves a cluster once its endpoints arrive.
    set(
        "wait_for_warm_on_init",
        c.wait_for_warm_on_init.as_ref().is_some_and(|v| !v.value),
    )?;
    set("upstream_bind_config", c.upstream_bind_config.is_some())?;
    set("lb_subset_config", c.lb_subset_config.is_some())?;
    set(
        "close_connections_on_host_health_failure",
        c.close_connections_on_host_health_failure,
    )?;
    set(
        "ignore_health_on_host_removal",
        c.ignore_health_on_host_removal,
    )?;
    set("lrs_server", c.lrs_server.is_some())?;
    set(
        "lrs_report_endpoint_metrics",
        !c.lrs_report_endpoint_metrics.is_empty(),
    )?;
    set("track_timeout_budgets", c.track_timeout_budgets)?;
    set("upstream_config", c.upstream_config.is_some())?;
    set("track_cluster_stats", c.track_cluster_stats.is_some())?;
    set("preconnect_policy", c.preconnect_policy.is_some())?;
    set(
        "connection_pool_per_downstream_connection",
        c.connection_pool_per_downstream_connection,
    )?;
    set("queuing_policies", c.queuing_policies.is_some())?;
    check_filters(c)?;
    check_circuit_breakers(c)?;
    check_common_lb_config(c)?;
    // An EDS cluster's endpoints come over EDS; inline ones are read by `inline_cluster`.
    let eds = matches!(
        c.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32
    );
    if eds && c.load_assignment.is_some() {
        return Err(invalid(
            c,
            "load_assignment",
            "an EDS cluster's endpoints come over EDS".into(),
        ));
    }
    Ok(())
}

/// Cluster network filters: only istiod's peer-metadata filter, whose effect (the
/// destination's peer metadata for telemetry) the waypoint has natively.
fn check_filters(c: &Cluster) -> Result<(), InvalidResource> {
    for (i, f) in c.filters.iter().enumerate() {
        if f.name != PEER_METADATA_FILTER {
            return Err(invalid(
                c,
                &format!("filters[{i}]"),
                format!(
                    "upstream network filter {:?} is not supported (only {PEER_METADATA_FILTER})",
                    f.name
                ),
            ));
        }
    }
    Ok(())
}

/// Circuit-breaker settings `cluster::max_requests` / `retry_limit` do not read.
fn check_circuit_breakers(c: &Cluster) -> Result<(), InvalidResource> {
    let Some(cb) = &c.circuit_breakers else {
        return Ok(());
    };
    if !cb.per_host_thresholds.is_empty() {
        return Err(invalid(
            c,
            "circuit_breakers.per_host_thresholds",
            "per-endpoint limits are not supported".into(),
        ));
    }
    for (i, t) in cb.thresholds.iter().enumerate() {
        if t.max_connection_pools.is_some() {
            return Err(invalid(
                c,
                &format!("circuit_breakers.thresholds[{i}].max_connection_pools"),
                "not supported".into(),
            ));
        }
    }
    Ok(())
}

/// `common_lb_config` settings neither `check_lb_configs`, `outlier` nor
/// `locality_weighted` read.
fn check_common_lb_config(c: &Cluster) -> Result<(), InvalidResource> {
    let Some(l) = &c.common_lb_config else {
        return Ok(());
    };
    let unsupported = [
        ("update_merge_window", l.update_merge_window.is_some()),
        (
            "ignore_new_hosts_until_first_hc",
            l.ignore_new_hosts_until_first_hc,
        ),
        (
            "close_connections_on_host_set_change",
            l.close_connections_on_host_set_change,
        ),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, on)| *on) {
        return Err(invalid(
            c,
            &format!("common_lb_config.{field}"),
            "not supported".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    fn cluster(extra: serde_json::Value) -> super::Cluster {
        let mut json = serde_json::json!({
            "name": "inbound-vip|80|http|a.ns.svc.cluster.local", "type": "EDS",
            "eds_cluster_config": {"eds_config": {"ads": {}}},
        });
        json.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        crate::envoy::from_json("envoy.config.cluster.v3.Cluster", &json).unwrap()
    }

    #[test]
    fn connect_timeout_defaults_to_envoys_and_refuses_zero() {
        assert_eq!(
            super::connect_timeout(&cluster(serde_json::json!({}))).unwrap(),
            Duration::from_secs(5)
        );
        assert_eq!(
            super::connect_timeout(&cluster(serde_json::json!({"connect_timeout": "0.300s"})))
                .unwrap(),
            Duration::from_millis(300)
        );
        let e = super::connect_timeout(&cluster(serde_json::json!({"connect_timeout": "0s"})))
            .unwrap_err();
        assert_eq!(e.field, "connect_timeout");
    }

    #[test]
    fn unread_fields_are_refused_by_name() {
        for (json, field) in [
            (
                serde_json::json!({"per_connection_buffer_limit_bytes": 1024}),
                "per_connection_buffer_limit_bytes",
            ),
            (
                serde_json::json!({"upstream_bind_config": {"source_address": {"address": "127.0.0.1", "port_value": 0}}}),
                "upstream_bind_config",
            ),
            (
                serde_json::json!({"filters": [{"name": "istio.metadata_exchange"}]}),
                "filters[0]",
            ),
            (
                serde_json::json!({"circuit_breakers": {"per_host_thresholds": [{"max_connections": 1}]}}),
                "circuit_breakers.per_host_thresholds",
            ),
            (
                serde_json::json!({"common_lb_config": {"close_connections_on_host_set_change": true}}),
                "common_lb_config.close_connections_on_host_set_change",
            ),
            (
                serde_json::json!({"load_assignment": {"cluster_name": "x"}}),
                "load_assignment",
            ),
            (
                serde_json::json!({"wait_for_warm_on_init": false}),
                "wait_for_warm_on_init",
            ),
        ] {
            let e = super::check_unread(&cluster(json.clone())).expect_err(&json.to_string());
            assert_eq!(e.field, field, "{json}");
        }
    }

    #[test]
    fn what_istiod_always_writes_is_accepted() {
        // buildCluster / getDefaultCircuitBreakerThresholds (cluster_builder.go).
        let c = cluster(serde_json::json!({
            "alt_stat_name": "inbound-vip|80|http|a.ns.svc.cluster.local;",
            "connect_timeout": "10s",
            "common_lb_config": {},
            "circuit_breakers": {"thresholds": [{
                "max_connections": 4294967295u32, "max_pending_requests": 4294967295u32,
                "max_requests": 4294967295u32, "max_retries": 4294967295u32,
                "track_remaining": true}]},
            "filters": [{"name": "upstream_hbone_peer_metadata"}],
        }));
        super::check_unread(&c).unwrap();
    }
}
