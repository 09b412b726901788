use std::time::Duration;

use serde_json::{json, Value};

const NAME: &str = "outbound|9000||ext-authz.foo.svc.cluster.local";

fn cluster(json: Value) -> super::Cluster {
    crate::envoy::from_json("envoy.config.cluster.v3.Cluster", &json).unwrap()
}

/// istiod's outbound cluster of a gRPC provider's Service port for a waypoint, with no
/// DestinationRule (`buildOutboundClusters` in `cluster.go`; `buildCluster`,
/// `applyDestinationRule`, `applyMetadataExchange`, `setH2Options` in `cluster_builder.go`;
/// `applyConnectionPool`, `applyLoadBalancer` in `cluster_traffic_policy.go`;
/// `applyHBONETransportSocketMatches` for an auto-detected ISTIO_MUTUAL in `cluster_tls.go`),
/// with `edit` applied.
fn istiod(edit: impl FnOnce(&mut Value)) -> super::Cluster {
    let raw = json!({"name": "envoy.transport_sockets.raw_buffer", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}});
    let mut c = json!({
        "name": NAME, "type": "EDS",
        "eds_cluster_config": {"eds_config": {"ads": {}, "initial_fetch_timeout": "0s",
            "resource_api_version": "V3"}, "service_name": NAME},
        "alt_stat_name": format!("{NAME};"),
        "connect_timeout": "10s", "lb_policy": "LEAST_REQUEST",
        "common_lb_config": {},
        "circuit_breakers": {"thresholds": [{"max_connections": 4294967295u32,
            "max_pending_requests": 4294967295u32, "max_requests": 4294967295u32,
            "max_retries": 4294967295u32, "track_remaining": true}]},
        "metadata": {"filter_metadata": {"istio": {"services": [
            {"host": "ext-authz.foo.svc.cluster.local", "name": "ext-authz", "namespace": "foo"}]}}},
        "filters": [{"name": "istio.metadata_exchange", "typed_config": {
            "@type": "type.googleapis.com/udpa.type.v1.TypedStruct",
            "type_url": "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange",
            "value": {"protocol": "istio-peer-exchange", "enable_discovery": true}}}],
        "transport_socket_matches": [
            {"name": "hbone", "match": {"tunnel": "http"}, "transport_socket": {
                "name": "envoy.transport_sockets.internal_upstream", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
                "passthrough_metadata": [
                    {"kind": {"host": {}}, "name": "envoy.filters.listener.original_dst"},
                    {"kind": {"cluster": {}}, "name": "istio"},
                    {"kind": {"host": {}}, "name": "istio"}],
                "transport_socket": raw.clone()}}},
            {"name": "tlsMode-istio", "match": {"tlsMode": "istio"}, "transport_socket": {
                "name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "tls_certificate_sds_secret_configs": [{"name": "default", "sds_config": {"ads": {}}}],
                    "alpn_protocols": ["istio-peer-exchange", "istio"]},
                "sni": "outbound_.9000_._.ext-authz.foo.svc.cluster.local"}}},
            {"name": "tlsMode-disabled", "match": {}, "transport_socket": raw}],
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}}
    });
    edit(&mut c);
    cluster(c)
}

#[test]
fn istiods_outbound_cluster_stands_for_its_service_port_with_its_connect_timeout() {
    let info = super::outbound(&istiod(|_| {})).unwrap().unwrap();
    assert_eq!(
        (info.host.as_str(), info.port),
        ("ext-authz.foo.svc.cluster.local", 9000)
    );
    assert_eq!(
        (info.namespace.as_str(), info.service.as_str()),
        ("foo", "ext-authz")
    );
    assert_eq!(info.protocol, super::Protocol::Http2);
    assert_eq!(info.eds_name, NAME);
    assert!(info.leaves_out_sidecar_mtls);
    assert_eq!(
        info.connection_limits.connect_timeout,
        Some(Duration::from_secs(10))
    );
    let short = istiod(|c| c["connect_timeout"] = json!("0.250s"));
    assert_eq!(
        super::outbound(&short)
            .unwrap()
            .unwrap()
            .connection_limits
            .connect_timeout,
        Some(Duration::from_millis(250))
    );
    // Without a DestinationRule's mTLS: HBONE or plaintext (`hboneOrPlaintextSocket`).
    let plain = istiod(|c| {
        c["transport_socket_matches"]
            .as_array_mut()
            .unwrap()
            .remove(1);
    });
    assert!(
        !super::outbound(&plain)
            .unwrap()
            .unwrap()
            .leaves_out_sidecar_mtls
    );
}

#[test]
fn other_outbound_clusters_are_not_providers() {
    let subset = cluster(json!({"name": "outbound|9000|v1|x.foo.svc", "type": "EDS"}));
    assert!(super::outbound(&subset).unwrap().is_none());
    let dns = cluster(json!({"name": "outbound|443||example.com", "type": "STRICT_DNS"}));
    assert!(super::outbound(&dns).unwrap().is_none());
    let plain = cluster(json!({"name": "outbound|80||h.foo.svc", "type": "EDS"}));
    assert_eq!(
        super::outbound(&plain).unwrap().unwrap().protocol,
        super::Protocol::Unknown
    );
}

/// A change to istiod's cluster.
type Edit = Box<dyn FnOnce(&mut Value)>;

#[test]
fn fields_that_would_not_take_effect_are_nacked_by_name() {
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|c| c["per_connection_buffer_limit_bytes"] = json!(32768)),
            "per_connection_buffer_limit_bytes",
        ),
        (
            Box::new(|c| c["connect_timeout"] = json!("0s")),
            "connect_timeout",
        ),
        (
            Box::new(|c| c["outlier_detection"] = json!({"consecutive_5xx": 3})),
            "outlier_detection",
        ),
        (
            Box::new(|c| c["circuit_breakers"]["thresholds"][0]["max_requests"] = json!(10)),
            "circuit_breakers.thresholds",
        ),
        (
            Box::new(|c| {
                c["health_checks"] = json!([{"timeout": "1s", "interval": "1s",
                "tcp_health_check": {}}])
            }),
            "health_checks",
        ),
        (
            Box::new(|c| c["lb_policy"] = json!("CLUSTER_PROVIDED")),
            "lb_policy",
        ),
        (
            Box::new(|c| c["filters"][0]["name"] = json!("envoy.filters.network.other")),
            "filters[0]",
        ),
        (
            Box::new(|c| c["transport_socket_matches"][0]["match"] = json!({"tunnel": "h2"})),
            "transport_socket_matches[0]",
        ),
        (
            // A plaintext catch-all first would hide the HBONE match.
            Box::new(|c| {
                let m = c["transport_socket_matches"].as_array_mut().unwrap();
                let last = m.pop().unwrap();
                m.insert(0, last);
            }),
            "transport_socket_matches[0]",
        ),
        (
            // A DestinationRule's TLS, tunnelled (`hboneTransportSocket(ts)`).
            Box::new(|c| {
                let tls = c["transport_socket_matches"][1]["transport_socket"].clone();
                c["transport_socket_matches"][0]["transport_socket"]["typed_config"]
                    ["transport_socket"] = tls;
            }),
            "transport_socket_matches[0]",
        ),
        (
            Box::new(|c| {
                c["transport_socket"] = c["transport_socket_matches"][1]["transport_socket"].clone()
            }),
            "transport_socket",
        ),
    ];
    for (edit, field) in cases {
        let e = super::outbound(&istiod(edit)).expect_err(field);
        assert_eq!(e.name, NAME);
        assert!(e.field.starts_with(field), "{field}: {e}");
    }
}

/// EDS endpoints for the provider: a mesh pod (internal address, `tunnel: http`), a
/// sidecar pod (`tlsMode: istio`) and a pod outside the mesh, as istiod's endpoint builder
/// writes them (`AppendLbEndpointMetadata`, pilot/pkg/networking/util/util.go).
fn provider_endpoints() -> Vec<crate::translate::EndpointInfo> {
    let workload = "ext-authz;foo;ext-authz;v1;Kubernetes";
    let cla = json!({"cluster_name": NAME, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"envoy_internal_address": {
            "server_listener_name": "connect_originate", "endpoint_id": "127.0.20.1:9000"}}},
         "metadata": {"filter_metadata": {
            "envoy.transport_socket_match": {"tunnel": "http", "tlsMode": "istio"},
            "envoy.filters.listener.original_dst": {"local": "127.0.20.1:9000"},
            "istio": {"workload": workload}}}},
        {"endpoint": {"address": {"socket_address": {"address": "127.0.20.2", "port_value": 9000}}},
         "metadata": {"filter_metadata": {
            "envoy.transport_socket_match": {"tlsMode": "istio"},
            "istio": {"workload": workload}}}},
        {"endpoint": {"address": {"socket_address": {"address": "127.0.20.3", "port_value": 9000}}},
         "metadata": {"filter_metadata": {"istio": {"workload": workload}}}}]}]});
    let cla =
        crate::envoy::from_json("envoy.config.endpoint.v3.ClusterLoadAssignment", &cla).unwrap();
    crate::translate::endpoint::convert(&cla).unwrap()
}

#[test]
fn sidecar_endpoints_are_left_out_when_the_cluster_would_originate_istio_mtls_to_them() {
    let addresses = |c: super::Cluster| {
        let mut r = crate::translate::Resources::default();
        r.outbound
            .insert(NAME.into(), super::outbound(&c).unwrap().unwrap());
        r.endpoints.insert(NAME.into(), provider_endpoints());
        let opts = crate::translate::BuildOptions {
            version: 1,
            source: "xds:test".into(),
            waypoint: filters::model::Waypoint {
                gateway: filters::model::NamespacedName::new("default", "waypoint"),
                trust_domain: "cluster.local".into(),
            },
        };
        let snap = crate::translate::build(&r, &opts).unwrap();
        let port = snap.services()["foo/ext-authz"].port(9000).unwrap();
        let mut got: Vec<String> = port
            .endpoints
            .iter()
            .map(|e| e.address().unwrap().to_string())
            .collect();
        got.sort();
        got
    };
    // The HBONE pod and the pod outside the mesh; the sidecar pod would need mTLS.
    assert_eq!(
        addresses(istiod(|_| {})),
        ["127.0.20.1:9000", "127.0.20.3:9000"]
    );
    // Without the `tlsMode-istio` match, Envoy sends the sidecar pod plaintext too.
    let plain = istiod(|c| {
        c["transport_socket_matches"]
            .as_array_mut()
            .unwrap()
            .remove(1);
    });
    assert_eq!(
        addresses(plain),
        ["127.0.20.1:9000", "127.0.20.2:9000", "127.0.20.3:9000"]
    );
}
