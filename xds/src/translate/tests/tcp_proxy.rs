//! The TCP proxy of a `main_internal` TCP chain: time limits, hashing, tunneling, weighted
//! clusters.

use super::*;

fn tcp_chain(extra: serde_json::Value) -> Listener {
    let mut listener = httpbin_main_internal();
    let mut tcp = serde_json::json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "inbound-vip|9000|tcp|t.default.svc.cluster.local",
        "cluster": "inbound-vip|9000|tcp|t.default.svc.cluster.local"});
    for (k, v) in extra.as_object().unwrap() {
        tcp[k] = v.clone();
    }
    listener["filter_chains"][0]["filters"] =
        serde_json::json!([{"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp}]);
    from_json("envoy.config.listener.v3.Listener", &listener).unwrap()
}

#[test]
fn tcp_proxy_time_limits_and_source_ip_hash_are_read() {
    // listener_waypoint.go buildWaypointNetworkFilters: DestinationRule
    // connectionPool.tcp.idleTimeout and maxConnectionDuration become the TCP proxy's
    // idle_timeout and max_downstream_connection_duration; networkfilter.go
    // maybeSetHashPolicy writes one source_ip hash policy for consistentHash.useSourceIp.
    let l = tcp_chain(serde_json::json!({"idle_timeout": "30s",
        "max_downstream_connection_duration": "1.5s", "hash_policy": [{"source_ip": {}}]}));
    let info = listener::convert(&l).unwrap();
    let listener::Chain::Tcp { settings, .. } = &info.chains[0].1 else {
        panic!("not a TCP chain");
    };
    assert_eq!(settings.limits.idle_timeout, Some(Duration::from_secs(30)));
    assert_eq!(
        settings.limits.max_duration,
        Some(Duration::from_millis(1500))
    );
    assert!(matches!(
        settings.hash_policy[..],
        [filters::route::model::HashPolicy {
            source: filters::route::model::HashSource::SourceIp,
            ..
        }]
    ));
    // `0s` turns the idle timeout off, as in Envoy.
    let l = tcp_chain(serde_json::json!({"idle_timeout": "0s"}));
    let info = listener::convert(&l).unwrap();
    let listener::Chain::Tcp { settings, .. } = &info.chains[0].1 else {
        panic!("not a TCP chain");
    };
    assert_eq!(settings.limits, filters::model::TcpLimits::default());
}

fn tunnel_of(config: serde_json::Value) -> Option<filters::model::TcpTunnel> {
    let l = tcp_chain(serde_json::json!({ "tunneling_config": config }));
    let info = listener::convert(&l).unwrap();
    let listener::Chain::Tcp { settings, .. } = &info.chains[0].1 else {
        panic!("not a TCP chain");
    };
    settings.tunnel.clone()
}

fn tunnel_refused(config: serde_json::Value) -> String {
    let l = tcp_chain(serde_json::json!({ "tunneling_config": config }));
    listener::convert(&l).unwrap_err().field
}

#[test]
fn tcp_proxy_tunneling_config_is_read() {
    use filters::model::{TcpTunnel, TunnelMethod};
    // tunnelingconfig.Apply (from buildWaypointNetworkFilters) writes a DestinationRule
    // trafficPolicy.tunnel as hostname targetHost:targetPort and use_post for POST.
    assert_eq!(
        tunnel_of(serde_json::json!({"hostname": "10.0.0.1:443"})),
        Some(TcpTunnel {
            hostname: "10.0.0.1:443".into(),
            method: TunnelMethod::Connect,
            http2: false,
        })
    );
    assert_eq!(
        tunnel_of(serde_json::json!({"hostname": "[fd00::1]:443", "use_post": true})),
        Some(TcpTunnel {
            hostname: "[fd00::1]:443".into(),
            method: TunnelMethod::Post { path: "/".into() },
            http2: false,
        })
    );
    assert_eq!(
        tunnel_of(
            serde_json::json!({"hostname": "db.example:5432", "use_post": true, "post_path": "/tcp"})
        ),
        Some(TcpTunnel {
            hostname: "db.example:5432".into(),
            method: TunnelMethod::Post {
                path: "/tcp".into()
            },
            http2: false,
        })
    );
    let at = "filter_chains[0].filters[0].typed_config.tunneling_config";
    for (config, field) in [
        (
            serde_json::json!({"hostname": "%DOWNSTREAM_LOCAL_ADDRESS%"}),
            "hostname",
        ),
        (serde_json::json!({"hostname": ""}), "hostname"),
        (serde_json::json!({"hostname": "a b:1"}), "hostname"),
        (
            serde_json::json!({"hostname": "h:1", "post_path": "/p"}),
            "post_path",
        ),
        (
            serde_json::json!({"hostname": "h:1", "use_post": true, "post_path": "p"}),
            "post_path",
        ),
        (
            serde_json::json!({"hostname": "h:1", "headers_to_add": [{"header": {"key": "a", "value": "b"}}]}),
            "headers_to_add",
        ),
        (
            serde_json::json!({"hostname": "h:1", "propagate_response_headers": true}),
            "propagate_response_headers",
        ),
        (
            serde_json::json!({"hostname": "h:1", "propagate_response_trailers": true}),
            "propagate_response_trailers",
        ),
        (
            serde_json::json!({"hostname": "h:1", "request_id_header": "x-id"}),
            "request_id_header",
        ),
    ] {
        assert_eq!(tunnel_refused(config), format!("{at}.{field}"));
    }
}

#[test]
fn tcp_proxy_settings_not_implemented_are_refused_by_name() {
    let l = tcp_chain(serde_json::json!({"hash_policy": [{"filter_state": {"key": "k"}}]}));
    let e = listener::convert(&l).unwrap_err();
    assert_eq!(
        e.field,
        "filter_chains[0].filters[0].typed_config.hash_policy[0]"
    );
    let l = tcp_chain(serde_json::json!({"max_downstream_connection_duration": "0s"}));
    let e = listener::convert(&l).unwrap_err();
    assert_eq!(
        e.field,
        "filter_chains[0].filters[0].typed_config.max_downstream_connection_duration"
    );
}

fn weighted_tcp_chain(clusters: serde_json::Value) -> Listener {
    let mut listener = httpbin_main_internal();
    let tcp = serde_json::json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "inbound-vip|9000|tcp|t.default.svc.cluster.local",
        "weighted_clusters": {"clusters": clusters}});
    listener["filter_chains"][0]["filters"] =
        serde_json::json!([{"name": "envoy.filters.network.tcp_proxy", "typed_config": tcp}]);
    from_json("envoy.config.listener.v3.Listener", &listener).unwrap()
}

#[test]
fn tcp_proxy_weighted_clusters_are_read_and_their_unread_fields_refused() {
    use super::tcp_route::TcpCluster;
    // listener_waypoint.go buildWaypointNetworkFilters: several VirtualService TCP/TLS
    // routes become weighted_clusters {clusters: [{name, weight}]} (zero weights left out).
    let a = "inbound-vip|9000|tcp|a.default.svc.cluster.local";
    let b = "inbound-vip|9000|tcp|b.default.svc.cluster.local";
    let l = weighted_tcp_chain(serde_json::json!([
        {"name": a, "weight": 25}, {"name": b, "weight": 75}]));
    let info = listener::convert(&l).unwrap();
    let listener::Chain::Tcp { clusters, .. } = &info.chains[0].1 else {
        panic!("not a TCP chain");
    };
    assert_eq!(
        clusters,
        &vec![
            TcpCluster {
                name: a.into(),
                weight: 25
            },
            TcpCluster {
                name: b.into(),
                weight: 75
            }
        ]
    );
    let refused = |clusters| listener::convert(&weighted_tcp_chain(clusters)).unwrap_err();
    let e = refused(serde_json::json!([{"name": a, "weight": 1,
        "metadata_match": {"filter_metadata": {"envoy.lb": {"version": "v1"}}}}]));
    assert!(
        e.field
            .ends_with("typed_config.weighted_clusters.clusters[0].metadata_match"),
        "{}",
        e.field
    );
    let e = refused(serde_json::json!([{"name": a, "weight": 1}, {"name": b}]));
    assert!(
        e.field.ends_with("weighted_clusters.clusters[1].weight"),
        "{}",
        e.field
    );
    let e = refused(serde_json::json!([]));
    assert!(
        e.field.ends_with("weighted_clusters.clusters"),
        "{}",
        e.field
    );
    // A single cluster is one entry of weight 1.
    let info = listener::convert(&tcp_chain(serde_json::json!({}))).unwrap();
    let listener::Chain::Tcp { clusters, .. } = &info.chains[0].1 else {
        panic!("not a TCP chain");
    };
    assert_eq!(
        clusters,
        &vec![TcpCluster {
            name: "inbound-vip|9000|tcp|t.default.svc.cluster.local".into(),
            weight: 1
        }]
    );
}
