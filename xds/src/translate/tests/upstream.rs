//! Upstream connection settings: what travels inside the tunnel (TLS, PROXY protocol),
//! TLS parameters and secrets, HTTP protocol options and connection options.

use super::*;

#[test]
fn what_travels_inside_the_tunnel_is_tls_plaintext_or_refused() {
    // DestinationRule `tls: SIMPLE` on a waypoint-served host: istiod wraps an
    // UpstreamTlsContext in the internal_upstream transport socket (buildWaypointTLSContext).
    let (_, cs, _) = dump_resources("waypoint-httpbin-1.21.json");
    let mut json = crate::envoy::to_json("envoy.config.cluster.v3.Cluster", &cs[0]).unwrap();
    let convert = |json: &serde_json::Value| {
        let c: envoy_types::pb::envoy::config::cluster::v3::Cluster =
            from_json("envoy.config.cluster.v3.Cluster", json).unwrap();
        cluster::convert(&c)
    };
    let inner = |socket: serde_json::Value| {
        serde_json::json!({
            "name": "internal_upstream",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
                "transport_socket": socket
            }
        })
    };
    json["transport_socket"] = inner(serde_json::json!({"name": "tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": "httpbin.example",
        "common_tls_context": {"combined_validation_context": {
            "default_validation_context": {},
            "validation_context_sds_secret_config": {"name": "file-root:system"}}}}}));
    let tls = convert(&json).unwrap().tls.unwrap();
    assert_eq!(tls.sni.as_deref(), Some("httpbin.example"));
    assert_eq!(tls.roots, filters::model::TlsRoots::System);
    // A credentialName secret is refused by name, never sent as plaintext.
    json["transport_socket"]["typed_config"]["transport_socket"]["typed_config"]
        ["common_tls_context"]["tls_certificate_sds_secret_configs"] =
        serde_json::json!([{"name": "kubernetes://my-secret"}]);
    let e = convert(&json).unwrap_err();
    assert!(
        e.field
            .ends_with("tls_certificate_sds_secret_configs[0].name"),
        "{}",
        e.field
    );
    assert!(e.reason.contains("kubernetes://my-secret"), "{}", e.reason);
    // DestinationRule proxyProtocol: istiod wraps the inner socket (raw buffer or TLS) in a
    // ProxyProtocolUpstreamTransport (cluster_waypoint.go). The descriptor pool has no
    // PROXY protocol message, so the socket is built in protobuf directly.
    let with_proxy = |json: &serde_json::Value, version: i32, tlvs: bool| {
        use envoy_types::pb::envoy::config::core::v3::{
            transport_socket::ConfigType, ProxyProtocolConfig, ProxyProtocolPassThroughTlVs,
            TransportSocket,
        };
        use envoy_types::pb::envoy::extensions::transport_sockets::internal_upstream::v3::InternalUpstreamTransport;
        use envoy_types::pb::envoy::extensions::transport_sockets::proxy_protocol::v3::ProxyProtocolUpstreamTransport;
        use prost::Message;
        let mut c: envoy_types::pb::envoy::config::cluster::v3::Cluster =
            from_json("envoy.config.cluster.v3.Cluster", json).unwrap();
        let Some(ConfigType::TypedConfig(outer)) =
            &mut c.transport_socket.as_mut().unwrap().config_type
        else {
            panic!("typed config");
        };
        let mut internal = InternalUpstreamTransport::decode(outer.value.as_slice()).unwrap();
        let proxy = ProxyProtocolUpstreamTransport {
            config: Some(ProxyProtocolConfig {
                version,
                pass_through_tlvs: tlvs.then(ProxyProtocolPassThroughTlVs::default),
                ..Default::default()
            }),
            transport_socket: internal.transport_socket.take(),
            ..Default::default()
        };
        internal.transport_socket = Some(TransportSocket {
            name: "envoy.transport_sockets.upstream_proxy_protocol".into(),
            config_type: Some(ConfigType::TypedConfig(envoy_types::pb::google::protobuf::Any {
                type_url: "type.googleapis.com/envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport".into(),
                value: proxy.encode_to_vec(),
            })),
        });
        outer.value = internal.encode_to_vec();
        cluster::convert(&c)
    };
    let raw = inner(serde_json::json!({
        "name": "envoy.transport_sockets.raw_buffer",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}
    }));
    let tls_json = inner(serde_json::json!({"name": "tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        "sni": "httpbin.example",
        "common_tls_context": {"combined_validation_context": {
            "default_validation_context": {},
            "validation_context_sds_secret_config": {"name": "file-root:system"}}}}}));
    json["transport_socket"] = raw;
    let info = with_proxy(&json, 0, false).unwrap();
    assert_eq!(
        info.proxy_protocol,
        Some(filters::model::ProxyProtocolVersion::V1)
    );
    assert!(info.tls.is_none());
    let info = with_proxy(&json, 1, false).unwrap();
    assert_eq!(
        info.proxy_protocol,
        Some(filters::model::ProxyProtocolVersion::V2)
    );
    // TLVs are never sent: refused by name.
    let e = with_proxy(&json, 1, true).unwrap_err();
    assert!(e.field.ends_with("config.pass_through_tlvs"), "{}", e.field);
    // PROXY around TLS: both.
    json["transport_socket"] = tls_json;
    let info = with_proxy(&json, 1, false).unwrap();
    assert_eq!(
        info.proxy_protocol,
        Some(filters::model::ProxyProtocolVersion::V2)
    );
    assert_eq!(info.tls.unwrap().sni.as_deref(), Some("httpbin.example"));
    // Plaintext inside the tunnel (istiod's default) is accepted.
    json["transport_socket"] = inner(serde_json::json!({
        "name": "envoy.transport_sockets.raw_buffer",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}
    }));
    assert!(convert(&json).unwrap().tls.is_none());
}

#[test]
fn istiods_tls_params_are_accepted_and_a_configmap_ca_is_an_ads_secret() {
    // constructUpstreamTLS (cluster_tls.go) always writes tls_params TLS 1.2..1.3; a
    // BackendTLSPolicy's CA is the ADS secret configmap://<ns>/<name>-cacert
    // (ApplyCustomSDSToClientCommonTLSContext, pilot/pkg/security/model/authentication.go).
    let (_, cs, _) = dump_resources("waypoint-httpbin-1.21.json");
    let mut json = crate::envoy::to_json("envoy.config.cluster.v3.Cluster", &cs[0]).unwrap();
    let convert = |json: &serde_json::Value| {
        let c: envoy_types::pb::envoy::config::cluster::v3::Cluster =
            from_json("envoy.config.cluster.v3.Cluster", json).unwrap();
        cluster::convert(&c)
    };
    let socket = |min: &str, root: &str| {
        serde_json::json!({
            "name": "internal_upstream",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
                "transport_socket": {"name": "tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "sni": "origin.example.test",
                    "common_tls_context": {
                        "tls_params": {"tls_minimum_protocol_version": min, "tls_maximum_protocol_version": "TLSv1_3"},
                        "combined_validation_context": {
                            "default_validation_context": {},
                            "validation_context_sds_secret_config": {"name": root,
                                "sds_config": {"ads": {}, "resource_api_version": "V3"}}}}}}
            }
        })
    };
    json["transport_socket"] = socket("TLSv1_2", "configmap://default/ca-cacert");
    let info = convert(&json).unwrap();
    assert_eq!(
        info.tls_secrets.roots.as_deref(),
        Some("configmap://default/ca-cacert")
    );
    // Until the secret arrives the roots verify nothing.
    assert_eq!(
        info.tls.unwrap().roots,
        filters::model::TlsRoots::Pem(String::new())
    );
    // istiod's reference it could not resolve: never verified, never subscribed.
    json["transport_socket"] = socket("TLSv1_2", "invalid://");
    let info = convert(&json).unwrap();
    assert!(info.tls_secrets.roots.is_none());
    assert_eq!(
        info.tls.unwrap().roots,
        filters::model::TlsRoots::Pem(String::new())
    );
    // A narrower version range is refused by field.
    json["transport_socket"] = socket("TLSv1_3", "configmap://default/ca-cacert");
    let e = convert(&json).unwrap_err();
    assert!(
        e.field.ends_with("tls_params.tls_minimum_protocol_version"),
        "{}",
        e.field
    );
}

#[test]
fn http_protocol_options_choose_the_upstream_version_or_are_refused_by_field() {
    use filters::model::UpstreamProtocol;
    let (_, cs, _) = dump_resources("waypoint-httpbin-1.21.json");
    let base = crate::envoy::to_json("envoy.config.cluster.v3.Cluster", &cs[0]).unwrap();
    let with = |options: serde_json::Value| {
        let mut json = base.clone();
        let mut o = options;
        o["@type"] =
            "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions".into();
        json["typed_extension_protocol_options"] =
            serde_json::json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": o});
        let c: envoy_types::pb::envoy::config::cluster::v3::Cluster =
            from_json("envoy.config.cluster.v3.Cluster", &json).unwrap();
        cluster::convert(&c)
    };
    // An `http` port without options: HTTP/1.1 (Envoy's default; istiod writes none).
    let c: envoy_types::pb::envoy::config::cluster::v3::Cluster =
        from_json("envoy.config.cluster.v3.Cluster", &base).unwrap();
    assert_eq!(
        cluster::convert(&c).unwrap().upstream_protocol,
        UpstreamProtocol::Http1
    );
    // setH2Options, setUseDownstreamProtocol.
    let h2 = with(serde_json::json!({"explicit_http_config": {"http2_protocol_options": {}}}));
    assert_eq!(h2.unwrap().upstream_protocol, UpstreamProtocol::Http2);
    let downstream = with(serde_json::json!({"use_downstream_protocol_config": {
        "http_protocol_options": {}, "http2_protocol_options": {}}}));
    assert_eq!(
        downstream.unwrap().upstream_protocol,
        UpstreamProtocol::Downstream
    );
    // DestinationRule connectionPool idleTimeout / maxRequestsPerConnection /
    // maxConnectionDuration take effect; other connection settings are refused.
    let limits = with(
        serde_json::json!({"common_http_protocol_options": {"idle_timeout": "30s",
        "max_requests_per_connection": 1, "max_connection_duration": "60s"},
        "explicit_http_config": {"http_protocol_options": {}}}),
    )
    .unwrap()
    .connection_limits;
    assert_eq!(
        limits.idle_timeout,
        Some(std::time::Duration::from_secs(30))
    );
    assert_eq!(limits.max_requests, Some(1));
    assert_eq!(
        limits.max_duration,
        Some(std::time::Duration::from_secs(60))
    );
    let e = with(
        serde_json::json!({"common_http_protocol_options": {"max_headers_count": 10},
        "explicit_http_config": {"http_protocol_options": {}}}),
    )
    .unwrap_err();
    assert!(
        e.field.ends_with("common_http_protocol_options"),
        "{}",
        e.field
    );
    // maxConcurrentStreams and http2KeepAlive (applyConnectionPool, on HTTP/2 clusters)
    // take effect; other HTTP/2 settings and keepalive options are refused by field.
    let h2 = with(
        serde_json::json!({"explicit_http_config": {"http2_protocol_options": {
        "max_concurrent_streams": 10,
        "connection_keepalive": {"interval": "10s", "timeout": "3s"}}}}),
    )
    .unwrap()
    .connection_limits;
    assert_eq!(h2.max_concurrent_streams, Some(10));
    assert_eq!(
        h2.h2_keepalive,
        Some(filters::model::H2Keepalive {
            interval: std::time::Duration::from_secs(10),
            timeout: std::time::Duration::from_secs(3),
        })
    );
    for (options, field) in [
        (
            serde_json::json!({"hpack_table_size": 0}),
            "explicit_http_config.http2_protocol_options",
        ),
        (
            serde_json::json!({"max_concurrent_streams": 0}),
            "explicit_http_config.http2_protocol_options.max_concurrent_streams",
        ),
        (
            serde_json::json!({"connection_keepalive": {"interval": "1s", "timeout": "1s",
                "interval_jitter": {"value": 10}}}),
            "explicit_http_config.http2_protocol_options.connection_keepalive.interval_jitter",
        ),
        (
            serde_json::json!({"connection_keepalive": {"interval": "1s", "timeout": "1s",
                "connection_idle_interval": "5s"}}),
            "explicit_http_config.http2_protocol_options.connection_keepalive.connection_idle_interval",
        ),
        (
            serde_json::json!({"connection_keepalive": {"interval": "1s"}}),
            "explicit_http_config.http2_protocol_options.connection_keepalive.timeout",
        ),
    ] {
        let e = with(serde_json::json!({"explicit_http_config": {
            "http2_protocol_options": options}}))
        .unwrap_err();
        assert!(e.field.ends_with(field), "{} for {field}", e.field);
    }
}

#[test]
fn istiods_preserve_case_formatter_is_read_and_other_http1_settings_refused() {
    // cluster_builder.go preserveCaseFormatterConfig, for ProxyConfig
    // proxyHeaders.preserveHttp1HeaderCase.
    let (_, cs, _) = dump_resources("waypoint-httpbin-1.21.json");
    let base = crate::envoy::to_json("envoy.config.cluster.v3.Cluster", &cs[0]).unwrap();
    let with = |h1: serde_json::Value| {
        let mut json = base.clone();
        json["typed_extension_protocol_options"] = serde_json::json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": h1}}});
        let c: envoy_types::pb::envoy::config::cluster::v3::Cluster =
            from_json("envoy.config.cluster.v3.Cluster", &json).unwrap();
        cluster::convert(&c)
    };
    let preserve = serde_json::json!({"header_key_format": {"stateful_formatter": {
        "name": "preserve_case", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.http.header_formatters.preserve_case.v3.PreserveCaseFormatterConfig"}}}});
    assert!(
        with(preserve)
            .unwrap()
            .connection_limits
            .preserve_header_case
    );
    assert!(
        !with(serde_json::json!({}))
            .unwrap()
            .connection_limits
            .preserve_header_case
    );
    let e = with(serde_json::json!({"header_key_format": {"proper_case_words": {}}})).unwrap_err();
    assert!(
        e.field.ends_with("http_protocol_options.header_key_format"),
        "{}",
        e.field
    );
    let e = with(serde_json::json!({"allow_absolute_url": true})).unwrap_err();
    assert!(
        e.field
            .ends_with("explicit_http_config.http_protocol_options"),
        "{}",
        e.field
    );
}

#[test]
fn tcp_keepalive_is_read_and_other_connection_options_refused() {
    // DestinationRule connectionPool.tcp.tcpKeepalive {probes: 3, time: 10s, interval: 5s}
    // (cluster.go applyTCPKeepalive / setKeepAliveSettings: whole seconds).
    let base = serde_json::json!({
        "name": "inbound-vip|8000|http|httpbin.default.svc.cluster.local",
        "type": "EDS",
        "eds_cluster_config": {"service_name": "inbound-vip|8000|http|httpbin.default.svc.cluster.local",
            "eds_config": {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}},
        "metadata": {"filter_metadata": {"istio": {"services": [
            {"host": "httpbin.default.svc.cluster.local", "name": "httpbin", "namespace": "default"}]}}},
    });
    let with = |options: serde_json::Value| {
        let mut c = base.clone();
        c["upstream_connection_options"] = options;
        let c: envoy_types::pb::envoy::config::cluster::v3::Cluster =
            from_json("envoy.config.cluster.v3.Cluster", &c).unwrap();
        cluster::convert(&c)
    };
    let k = with(serde_json::json!({"tcp_keepalive": {
        "keepalive_probes": 3, "keepalive_time": 10, "keepalive_interval": 5}}))
    .unwrap()
    .connection_limits
    .tcp_keepalive;
    assert_eq!(
        k,
        Some(filters::model::TcpKeepalive {
            time: Some(std::time::Duration::from_secs(10)),
            interval: Some(std::time::Duration::from_secs(5)),
            probes: Some(3),
        })
    );
    // MeshConfig tcpKeepalive with nothing set: SO_KEEPALIVE with the system's settings.
    let k = with(serde_json::json!({"tcp_keepalive": {}}))
        .unwrap()
        .connection_limits
        .tcp_keepalive;
    assert_eq!(k, Some(filters::model::TcpKeepalive::default()));
    let e = with(serde_json::json!({"happy_eyeballs_config": {}})).unwrap_err();
    assert_eq!(e.field, "upstream_connection_options.happy_eyeballs_config");
}

#[test]
fn a_credential_name_is_two_kubernetes_secrets_over_ads() {
    // DestinationRule tls {mode: MUTUAL, credentialName: client-creds}: constructUpstreamTLS
    // (cluster_tls.go) hands it to ApplyCustomSDSToClientCommonTLSContext
    // (pilot/pkg/security/model/authentication.go): the client certificate is the ADS
    // secret kubernetes://client-creds, the roots kubernetes://client-creds-cacert
    // (ToResourceName, pilot/pkg/model/credentials/resource.go).
    let (_, cs, _) = dump_resources("waypoint-httpbin-1.21.json");
    let mut json = crate::envoy::to_json("envoy.config.cluster.v3.Cluster", &cs[0]).unwrap();
    let convert = |json: &serde_json::Value| {
        let c: envoy_types::pb::envoy::config::cluster::v3::Cluster =
            from_json("envoy.config.cluster.v3.Cluster", json).unwrap();
        cluster::convert(&c)
    };
    let ads = serde_json::json!({"ads": {}, "resource_api_version": "V3"});
    let socket = |cert: serde_json::Value| {
        serde_json::json!({
            "name": "internal_upstream",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.internal_upstream.v3.InternalUpstreamTransport",
                "transport_socket": {"name": "tls", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                    "common_tls_context": {
                        "tls_params": {"tls_minimum_protocol_version": "TLSv1_2", "tls_maximum_protocol_version": "TLSv1_3"},
                        "tls_certificate_sds_secret_configs": [cert],
                        "combined_validation_context": {
                            "default_validation_context": {"match_subject_alt_names": [{"exact": "api.example.org"}]},
                            "validation_context_sds_secret_config": {"name": "kubernetes://client-creds-cacert",
                                "sds_config": {"ads": {}, "resource_api_version": "V3"}}}}}}
            }
        })
    };
    json["transport_socket"] =
        socket(serde_json::json!({"name": "kubernetes://client-creds", "sds_config": ads}));
    let info = convert(&json).unwrap();
    assert_eq!(
        info.tls_secrets.roots.as_deref(),
        Some("kubernetes://client-creds-cacert")
    );
    assert_eq!(
        info.tls_secrets.certificate.as_deref(),
        Some("kubernetes://client-creds")
    );
    let tls = info.tls.clone().unwrap();
    assert_eq!(tls.subject_alt_names, vec!["api.example.org".to_string()]);
    // Until the secrets arrive neither the roots nor the certificate can be used.
    assert_eq!(tls.roots, filters::model::TlsRoots::Pem(String::new()));
    assert!(matches!(
        tls.client_certificate,
        Some(filters::model::ClientCertificate::Pem { ref chain, .. }) if chain.is_empty()
    ));
    let mut res = Resources::default();
    res.clusters.insert(info.name.clone(), info.clone());
    assert_eq!(
        res.secret_names().into_iter().collect::<Vec<_>>(),
        vec![
            "kubernetes://client-creds".to_string(),
            "kubernetes://client-creds-cacert".to_string()
        ]
    );
    // Arrived: the snapshot's TLS has them.
    res.secrets.insert(
        "kubernetes://client-creds".into(),
        secret::AdsSecret::Certificate {
            chain: "CHAIN".into(),
            key: filters::model::PrivateKeyPem::new("KEY"),
        },
    );
    res.secrets.insert(
        "kubernetes://client-creds-cacert".into(),
        secret::AdsSecret::CaBundle {
            roots: "ROOTS".into(),
            crl: None,
        },
    );
    let tls = cluster_tls(&info, &res).unwrap();
    assert_eq!(tls.roots, filters::model::TlsRoots::Pem("ROOTS".into()));
    assert_eq!(
        tls.client_certificate,
        Some(filters::model::ClientCertificate::Pem {
            chain: "CHAIN".into(),
            key: filters::model::PrivateKeyPem::new("KEY")
        })
    );
    // A CA bundle where the certificate belongs is not used.
    res.secrets.insert(
        "kubernetes://client-creds".into(),
        secret::AdsSecret::CaBundle {
            roots: "ROOTS".into(),
            crl: None,
        },
    );
    assert!(matches!(
        cluster_tls(&info, &res).unwrap().client_certificate,
        Some(filters::model::ClientCertificate::Pem { ref chain, .. }) if chain.is_empty()
    ));
    // A secret from another SDS server (an `sds://` credential with a credential socket)
    // is refused by field.
    json["transport_socket"] = socket(serde_json::json!({"name": "sds://vault-creds",
        "sds_config": {"api_config_source": {"api_type": "GRPC", "grpc_services": [
            {"envoy_grpc": {"cluster_name": "sds-external"}}], "transport_api_version": "V3"},
            "resource_api_version": "V3"}}));
    let e = convert(&json).unwrap_err();
    assert!(
        e.field
            .ends_with("tls_certificate_sds_secret_configs[0].name"),
        "{}",
        e.field
    );
    assert!(e.reason.contains("sds://vault-creds"), "{}", e.reason);
}

#[test]
fn max_connections_becomes_the_http2_connection_cap_with_pending_requests() {
    // applyConnectionPool (cluster_traffic_policy.go): `tcp.maxConnections` and
    // `http.http1MaxPendingRequests` into the one threshold; the others MaxUint32, which is
    // no limit.
    let (_, cs, _) = dump_resources("waypoint-httpbin-1.21.json");
    let mut json = crate::envoy::to_json("envoy.config.cluster.v3.Cluster", &cs[0]).unwrap();
    let cap = |json: &serde_json::Value| {
        let c: envoy_types::pb::envoy::config::cluster::v3::Cluster =
            from_json("envoy.config.cluster.v3.Cluster", json).unwrap();
        cluster::convert(&c).unwrap().connection_cap
    };
    let max = 4294967295u32;
    json["circuit_breakers"] = serde_json::json!({"thresholds": [{"max_connections": 2,
        "max_pending_requests": 5, "max_requests": max, "max_retries": max}]});
    let name = json["name"].as_str().unwrap().to_string();
    let got = cap(&json).unwrap();
    assert_eq!(
        (got.cluster.as_str(), got.max_connections, got.max_pending),
        (name.as_str(), 2, Some(5))
    );
    json["circuit_breakers"]["thresholds"][0]["max_pending_requests"] = serde_json::json!(max);
    assert_eq!(cap(&json).unwrap().max_pending, None);
    json["circuit_breakers"]["thresholds"][0]["max_connections"] = serde_json::json!(max);
    assert_eq!(cap(&json), None, "Istio's default is no cap");
}

#[test]
fn a_crl_is_the_rules_file_or_the_secrets_inline_lists() {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
    use filters::model::{Crl, TlsRoots};
    let context = |json: serde_json::Value| -> UpstreamTlsContext {
        from_json(
            "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            &serde_json::json!({"common_tls_context": json}),
        )
        .unwrap()
    };
    let convert = |json: serde_json::Value| {
        crate::translate::upstream_tls::convert(&context(json), Default::default())
    };
    // DestinationRule tls {SIMPLE, caCertificates, caCrl}: constructUpstreamTLS
    // (pilot/pkg/networking/core/cluster_tls.go) puts the CRL file in the default context
    // next to pilot-agent's `file-root:` secret.
    let sds = serde_json::json!({"api_config_source": {"api_type": "GRPC", "grpc_services": [
        {"envoy_grpc": {"cluster_name": "sds-grpc"}}], "transport_api_version": "V3"},
        "resource_api_version": "V3"});
    let file = |root: &str, extra: serde_json::Value| {
        let mut default = serde_json::json!({"crl": {"filename": "/etc/certs/ca.crl"}});
        default
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::json!({"combined_validation_context": {
            "default_validation_context": default,
            "validation_context_sds_secret_config": {"name": root, "sds_config": sds}}})
    };
    let (tls, _) = convert(file("file-root:/etc/certs/ca.pem", serde_json::json!({}))).unwrap();
    assert_eq!(tls.roots, TlsRoots::File("/etc/certs/ca.pem".into()));
    assert_eq!(tls.crl, Some(Crl::File("/etc/certs/ca.crl".into())));
    assert!(!tls.crl_leaf_only);
    // Without caCertificates istiod names the system roots; the CRL still applies.
    let (tls, _) = convert(file(
        "file-root:system",
        serde_json::json!({"only_verify_leaf_cert_crl": true}),
    ))
    .unwrap();
    assert_eq!(tls.roots, TlsRoots::System);
    assert!(tls.crl_leaf_only, "only_verify_leaf_cert_crl takes effect");
    // A CRL with no trusted CA to check it with is refused, as Envoy refuses it.
    let e = convert(serde_json::json!({"validation_context": {
        "crl": {"filename": "/etc/certs/ca.crl"}}}))
    .unwrap_err();
    assert_eq!(e.0, "common_tls_context.validation_context.crl");
    // Inline text is checked now: no CRL block is refused by field; empty text is none.
    let inline = |text: &str| {
        serde_json::json!({"validation_context": {
            "trusted_ca": {"filename": "/etc/certs/ca.pem"},
            "crl": {"inline_string": text}}})
    };
    let e = convert(inline("not a CRL")).unwrap_err();
    assert_eq!(e.0, "common_tls_context.validation_context.crl");
    assert!(e.1.contains("no X509 CRL block"), "{}", e.1);
    assert_eq!(convert(inline("")).unwrap().0.crl, None);
    // Verification options that are not implemented are still refused by field.
    let e = convert(serde_json::json!({"validation_context": {
        "trusted_ca": {"filename": "/etc/certs/ca.pem"}, "max_verify_depth": 2}}))
    .unwrap_err();
    assert_eq!(
        e.0,
        "common_tls_context.validation_context.max_verify_depth"
    );
    // A `-cacert` secret's CRL (toEnvoyCaSecret, pilot/pkg/xds/sds.go) replaces the
    // default context's, as Envoy merges the secret into it.
    let ads = serde_json::json!({"ads": {}, "resource_api_version": "V3"});
    let mut ctx = context(serde_json::json!({"combined_validation_context": {
        "default_validation_context": {"only_verify_leaf_cert_crl": true},
        "validation_context_sds_secret_config": {"name": "kubernetes://creds-cacert", "sds_config": ads}}}));
    ctx.sni = "api.example.org".into();
    let (tls, secrets) = crate::translate::upstream_tls::convert(&ctx, Default::default()).unwrap();
    assert_eq!(tls.crl, None);
    let (_, cs, _) = dump_resources("waypoint-httpbin-1.21.json");
    let json = crate::envoy::to_json("envoy.config.cluster.v3.Cluster", &cs[0]).unwrap();
    let c: envoy_types::pb::envoy::config::cluster::v3::Cluster =
        from_json("envoy.config.cluster.v3.Cluster", &json).unwrap();
    let mut info = cluster::convert(&c).unwrap();
    info.tls = Some(tls);
    info.tls_secrets = secrets;
    let mut res = Resources::default();
    res.secrets.insert(
        "kubernetes://creds-cacert".into(),
        secret::AdsSecret::CaBundle {
            roots: "ROOTS".into(),
            crl: Some("CRL".into()),
        },
    );
    let tls = cluster_tls(&info, &res).unwrap();
    assert_eq!(tls.crl, Some(Crl::Pem("CRL".into())));
    assert!(tls.crl_leaf_only);
}
