//! The Istio waypoint config dumps, translated.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use filters::model::{NamespacedName, Target, Waypoint};

use super::*;
use crate::envoy::from_json;

pub(crate) fn dump_resources(
    file: &str,
) -> (Vec<Listener>, Vec<Cluster>, Vec<ClusterLoadAssignment>) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/istio/config-dumps")
        .join(file);
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (mut l, mut c, mut e) = (vec![], vec![], vec![]);
    for cfg in d["configs"].as_array().unwrap() {
        let t = cfg["@type"].as_str().unwrap();
        if t.ends_with("ListenersConfigDump") {
            for x in cfg["dynamic_listeners"].as_array().unwrap() {
                l.push(
                    from_json(
                        "envoy.config.listener.v3.Listener",
                        &x["active_state"]["listener"],
                    )
                    .unwrap(),
                );
            }
        } else if t.ends_with("ClustersConfigDump") {
            for x in cfg["dynamic_active_clusters"].as_array().unwrap() {
                c.push(from_json("envoy.config.cluster.v3.Cluster", &x["cluster"]).unwrap());
            }
        } else if t.ends_with("EndpointsConfigDump") {
            for x in cfg["dynamic_endpoint_configs"].as_array().unwrap() {
                e.push(
                    from_json(
                        "envoy.config.endpoint.v3.ClusterLoadAssignment",
                        &x["endpoint_config"],
                    )
                    .unwrap(),
                );
            }
        }
    }
    (l, c, e)
}

fn resources(file: &str) -> (Resources, Vec<InvalidResource>) {
    let (ls, cs, es) = dump_resources(file);
    let mut r = Resources::default();
    let mut errors = Vec::new();
    for l in &ls {
        match listener::convert(l) {
            Ok(i) => {
                r.listeners.insert(l.name.clone(), i);
            }
            Err(e) => errors.push(e),
        }
    }
    for c in &cs {
        match cluster::convert(c) {
            Ok(i) => {
                r.clusters.insert(c.name.clone(), i);
            }
            Err(e) => errors.push(e),
        }
    }
    for e in &es {
        match endpoint::convert(e) {
            Ok(i) => {
                r.endpoints.insert(e.cluster_name.clone(), i);
            }
            Err(err) => errors.push(err),
        }
    }
    (r, errors)
}

fn options() -> BuildOptions {
    BuildOptions {
        version: 1,
        source: "xds:test".into(),
        waypoint: Waypoint {
            gateway: NamespacedName::new("default", "waypoint"),
            trust_domain: "cluster.local".into(),
        },
    }
}

#[test]
fn httpbin_waypoint_dump_translates() {
    let (r, errors) = resources("waypoint-httpbin-1.21.json");
    assert!(errors.is_empty(), "{errors:#?}");
    let snap = build(&r, &options()).unwrap();
    let httpbin = &snap.services()["default/httpbin"];
    assert_eq!(httpbin.hostname, "httpbin.default.svc.cluster.local");
    assert_eq!(
        httpbin.vips,
        vec!["10.104.171.68".parse::<IpAddr>().unwrap()]
    );
    assert!(httpbin.served);
    let Some(Target::Service { service, port }) =
        snap.resolve("10.104.171.68:8000".parse().unwrap())
    else {
        panic!("VIP:8000 not served");
    };
    assert_eq!(
        (service.name.to_string(), port),
        ("default/httpbin".to_string(), 8000)
    );
    // The dump holds the cluster of port 8000 and the endpoints of port 8100: the pod
    // behind connect_originate is known with Istio's workload metadata, and served when
    // addressed directly (the listener's direct-http chain names its IP).
    assert!(httpbin.port(8000).is_some());
    let pod = snap
        .workload("192.168.195.248".parse().unwrap())
        .expect("pod from EDS");
    assert!(pod.hbone && pod.served);
    assert_eq!(pod.name.to_string(), "default/httpbin");
    assert_eq!(pod.labels["service.istio.io/canonical-revision"], "v1");
    assert!(snap.routes(&httpbin.name, 8000).is_some());
}

#[test]
fn bookinfo_waypoint_dump_translates_or_names_what_it_lacks() {
    let (r, errors) = resources("waypoint-bookinfo.json");
    for e in &errors {
        // Every rejection names the resource, the field and the reason.
        assert!(
            !e.name.is_empty() && !e.field.is_empty() && !e.reason.is_empty(),
            "{e}"
        );
        println!("rejected: {e}");
    }
    let snap = build(&r, &options()).unwrap();
    println!("services: {:?}", snap.services().keys().collect::<Vec<_>>());
    assert!(
        snap.services().contains_key("default/ratings"),
        "{:?}",
        snap.services().keys()
    );
}

#[test]
fn unsupported_filters_are_rejected_with_their_place() {
    let (mut ls, _, _) = dump_resources("waypoint-httpbin-1.21.json");
    let l = ls.iter_mut().find(|l| l.name == "main_internal").unwrap();
    l.filter_chains[0].filters[0].name = "envoy.filters.network.redis_proxy".into();
    let err = listener::convert(l).unwrap_err();
    assert_eq!(err.field, "filter_chains[0].filters[0]");
    assert!(err.reason.contains("redis_proxy"), "{err}");
    assert!(
        err.to_string().starts_with("listener main_internal: "),
        "{err}"
    );
}

/// The `main_internal` listener of the httpbin dump, as proto-JSON.
fn httpbin_main_internal() -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/testdata/istio/config-dumps/waypoint-httpbin-1.21.json");
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    d["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["@type"]
                .as_str()
                .unwrap()
                .ends_with("ListenersConfigDump")
        })
        .unwrap()["dynamic_listeners"][0]["active_state"]["listener"]
        .clone()
}

#[test]
fn connection_manager_tracing_becomes_the_tracing_settings() {
    let mut listener = httpbin_main_internal();
    let provider = serde_json::json!({
        "name": "envoy.tracers.opentelemetry",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
            "grpc_service": {"envoy_grpc": {"cluster_name": "outbound|4317||otel.observability.svc.cluster.local"}, "timeout": "2s"},
            "service_name": "waypoint.default"
        }
    });
    for chain in listener["filter_chains"].as_array_mut().unwrap() {
        let hcm = &mut chain["filters"].as_array_mut().unwrap().last_mut().unwrap()["typed_config"];
        if hcm.get("tracing").is_some() {
            hcm["tracing"]["provider"] = provider.clone();
        }
    }
    let l: Listener = from_json("envoy.config.listener.v3.Listener", &listener).unwrap();
    let (mut r, _) = resources("waypoint-httpbin-1.21.json");
    r.listeners
        .insert(l.name.clone(), listener::convert(&l).unwrap());
    let snap = build(&r, &options()).unwrap();
    let t = snap
        .telemetry()
        .tracing
        .as_ref()
        .expect("tracing configured");
    assert_eq!(t.endpoint(), "otel.observability.svc.cluster.local:4317");
    assert_eq!(
        t.cluster.as_deref(),
        Some("outbound|4317||otel.observability.svc.cluster.local")
    );
    assert_eq!(t.service_name.as_deref(), Some("waypoint.default"));
    assert!(matches!(
        t.protocol,
        filters::model::telemetry::OtlpProtocol::Grpc { .. }
    ));
    assert_eq!(t.timeout, std::time::Duration::from_secs(2));
    assert_eq!(t.sampling_percentage, 100.0);
    assert!(
        t.custom_tags
            .iter()
            .any(|(k, _)| k == "istio.canonical_service"),
        "{:?}",
        t.custom_tags
    );
    // Metadata tags (dry-run results) are not custom tags here.
    assert!(!t
        .custom_tags
        .iter()
        .any(|(k, _)| k.starts_with("istio.authorization")));
    // Without a provider, no tracing (the dump as istiod sent it).
    let (r, _) = resources("waypoint-httpbin-1.21.json");
    assert!(build(&r, &options()).unwrap().telemetry().tracing.is_none());
}

#[test]
fn cluster_features_the_waypoint_lacks_are_rejected_not_ignored() {
    let (_, cs, _) = dump_resources("waypoint-httpbin-1.21.json");
    let base = cs[0].clone();
    assert!(cluster::convert(&base).is_ok());
    let mut c = base.clone();
    c.lb_policy = 4; // CLUSTER_PROVIDED
    assert_eq!(cluster::convert(&c).unwrap_err().field, "lb_policy");
    let mut c = base.clone();
    c.outlier_detection = Some(Default::default());
    assert_eq!(
        cluster::convert(&c).unwrap_err().field,
        "outlier_detection.enforcing_success_rate"
    );
    let mut c = base.clone();
    c.circuit_breakers = Some(
        envoy_types::pb::envoy::config::cluster::v3::CircuitBreakers {
            thresholds: vec![
                envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::Thresholds {
                    max_retries: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 3 }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        },
    );
    assert_eq!(
        cluster::convert(&c).unwrap().retry_limit,
        Some(filters::retry::limit::RetryLimit::Max(3))
    );
    let thresholds = &mut c.circuit_breakers.as_mut().unwrap().thresholds[0];
    thresholds.retry_budget = Some(
        envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget {
            budget_interval: Some(envoy_types::pb::google::protobuf::Duration {
                seconds: 1,
                nanos: 0,
            }),
            ..Default::default()
        },
    );
    assert_eq!(
        cluster::convert(&c).unwrap_err().field,
        "circuit_breakers.thresholds[0].retry_budget.budget_interval"
    );
    let mut c = base;
    c.lb_policy = 1; // LEAST_REQUEST, Istio's default
    assert!(cluster::convert(&c).is_ok());
}

#[test]
fn consistent_hash_settings_apply_or_are_refused_as_envoy_refuses_them() {
    // istiod's ApplyRingHashLoadBalancer (cluster_traffic_policy.go) writes RING_HASH with
    // `minimum_ring_size`, or MAGLEV with `table_size` when the DestinationRule sets one.
    use envoy_types::pb::envoy::config::cluster::v3::cluster::{
        LbConfig, MaglevLbConfig, RingHashLbConfig,
    };
    use envoy_types::pb::google::protobuf::UInt64Value;
    use filters::balance::{ring::RingSize, Policy};
    let (_, cs, _) = dump_resources("waypoint-httpbin-1.21.json");
    let ring = |min: Option<u64>, max: Option<u64>, function: i32| {
        let mut c = cs[0].clone();
        c.lb_policy = 2;
        c.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
            minimum_ring_size: min.map(|value| UInt64Value { value }),
            maximum_ring_size: max.map(|value| UInt64Value { value }),
            hash_function: function,
        }));
        cluster::convert(&c)
    };
    assert_eq!(
        ring(Some(10), None, 0).unwrap().balancing,
        Policy::RingHash(RingSize {
            min: 10,
            max: 8 * 1024 * 1024
        })
    );
    assert_eq!(
        ring(None, Some(4096), 0).unwrap().balancing,
        Policy::RingHash(RingSize {
            min: 1024,
            max: 4096
        })
    );
    let field = |r: Result<cluster::ClusterInfo, InvalidResource>| r.unwrap_err().field;
    assert_eq!(
        field(ring(None, None, 1)),
        "ring_hash_lb_config.hash_function"
    );
    assert_eq!(
        field(ring(Some(2048), Some(1024), 0)),
        "ring_hash_lb_config.minimum_ring_size"
    );
    assert_eq!(
        field(ring(None, Some(1 << 24), 0)),
        "ring_hash_lb_config.maximum_ring_size"
    );
    let maglev = |size: Option<u64>| {
        let mut c = cs[0].clone();
        c.lb_policy = 5;
        c.lb_config = size.map(|value| {
            LbConfig::MaglevLbConfig(MaglevLbConfig {
                table_size: Some(UInt64Value { value }),
            })
        });
        cluster::convert(&c)
    };
    assert_eq!(maglev(None).unwrap().balancing, Policy::Maglev(65537));
    assert_eq!(maglev(Some(251)).unwrap().balancing, Policy::Maglev(251));
    assert_eq!(field(maglev(Some(1000))), "maglev_lb_config.table_size");

    // Endpoint weights are what the tables weigh; Envoy requires them to be at least 1.
    let (_, _, es) = dump_resources("waypoint-httpbin-1.21.json");
    let mut cla = es
        .into_iter()
        .find(|e| e.endpoints.iter().any(|l| !l.lb_endpoints.is_empty()))
        .unwrap();
    let weight = |cla: &mut ClusterLoadAssignment, value: u32| {
        cla.endpoints[0].lb_endpoints[0].load_balancing_weight =
            Some(envoy_types::pb::google::protobuf::UInt32Value { value });
    };
    weight(&mut cla, 3);
    assert_eq!(endpoint::convert(&cla).unwrap()[0].weight, 3);
    weight(&mut cla, 0);
    assert!(endpoint::convert(&cla)
        .unwrap_err()
        .field
        .ends_with("load_balancing_weight"));
}

#[test]
fn connection_manager_access_log_becomes_the_access_log_settings() {
    use filters::model::telemetry::{
        AccessLog, AccessLogConfig, AccessLogSink, Comparison, LogFilter,
    };
    let base = httpbin_main_internal();
    let with = |log: serde_json::Value| {
        let mut listener = base.clone();
        for chain in listener["filter_chains"].as_array_mut().unwrap() {
            let hcm =
                &mut chain["filters"].as_array_mut().unwrap().last_mut().unwrap()["typed_config"];
            if hcm.get("http_filters").is_some() {
                hcm["access_log"] = serde_json::json!([log.clone()]);
            }
        }
        let l: Listener = from_json("envoy.config.listener.v3.Listener", &listener).unwrap();
        listener::convert(&l)
    };
    let file = |fmt: serde_json::Value| {
        serde_json::json!({"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": "/dev/stdout", "log_format": fmt}})
    };
    let (mut r, _) = resources("waypoint-httpbin-1.21.json");
    let text = with(file(
        serde_json::json!({"text_format_source": {"inline_string": "%RESPONSE_CODE%\n"}}),
    ));
    r.listeners.insert("main_internal".into(), text.unwrap());
    let snap = build(&r, &options()).unwrap();
    assert_eq!(
        snap.telemetry().access_logs,
        vec![AccessLog::stdout(AccessLogConfig::Text(Some(
            "%RESPONSE_CODE%\n".into()
        )))]
    );
    let json = with(file(
        serde_json::json!({"json_format": {"code": "%RESPONSE_CODE%", "method": "%REQ(:METHOD)%"}}),
    ));
    r.listeners.insert("main_internal".into(), json.unwrap());
    let snap = build(&r, &options()).unwrap();
    assert_eq!(
        snap.telemetry().access_logs,
        vec![AccessLog::stdout(AccessLogConfig::Json(Some(vec![
            ("code".into(), "%RESPONSE_CODE%".into()),
            ("method".into(), "%REQ(:METHOD)%".into()),
        ])))]
    );
    // Another file, and the filters istiod writes (pilot/pkg/networking/core/accesslog.go:
    // a status filter and the Telemetry CEL filter under `and`).
    let mut elsewhere = file(serde_json::json!({"text_format": "%RESPONSE_CODE%"}));
    elsewhere["typed_config"]["path"] = "/var/log/access.log".into();
    elsewhere["filter"] = serde_json::json!({"and_filter": {"filters": [
        {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 400, "runtime_key": "istio.io/unset"}}}},
        {"extension_filter": {"name": "envoy.access_loggers.extension_filters.cel", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
            "expression": "response.code >= 500"}}}
    ]}});
    r.listeners
        .insert("main_internal".into(), with(elsewhere).unwrap());
    let snap = build(&r, &options()).unwrap();
    let log = &snap.telemetry().access_logs[0];
    assert!(matches!(&log.sink, AccessLogSink::File { path, .. } if path == "/var/log/access.log"));
    let Some(LogFilter::And(parts)) = &log.filter else {
        panic!("{:?}", log.filter)
    };
    assert_eq!(parts[0], LogFilter::Status(Comparison::Ge, 400));
    assert!(matches!(&parts[1], LogFilter::Cel(e) if e.source() == "response.code >= 500"));
    // Filters and expressions outside what is supported are refused by name.
    let mut filtered = file(serde_json::json!({"text_format": "%RESPONSE_CODE%"}));
    filtered["filter"] = serde_json::json!({"runtime_filter": {"runtime_key": "k"}});
    assert!(with(filtered)
        .unwrap_err()
        .field
        .ends_with("access_log[0].filter.runtime_filter"));
    let mut bad_cel = file(serde_json::json!({"text_format": "%RESPONSE_CODE%"}));
    bad_cel["filter"] = serde_json::json!({"extension_filter": {"name": "envoy.access_loggers.extension_filters.cel", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
            "expression": "filter_state['x'] == 'y'"}}});
    let e = with(bad_cel).unwrap_err();
    assert!(
        e.field
            .ends_with("access_log[0].filter.extension_filter.typed_config.expression"),
        "{e}"
    );
    assert!(e.reason.contains("filter_state"), "{e}");
}

#[test]
fn path_normalization_comes_from_the_connection_manager() {
    use filters::authz::path::Normalization;
    let with = |merge: bool, escaped: &str| {
        let mut listener = httpbin_main_internal();
        for chain in listener["filter_chains"].as_array_mut().unwrap() {
            let hcm =
                &mut chain["filters"].as_array_mut().unwrap().last_mut().unwrap()["typed_config"];
            if hcm.get("http_filters").is_some() {
                hcm["merge_slashes"] = merge.into();
                hcm["path_with_escaped_slashes_action"] = escaped.into();
            }
        }
        let l: Listener = from_json("envoy.config.listener.v3.Listener", &listener).unwrap();
        listener::convert(&l)
    };
    let (mut r, _) = resources("waypoint-httpbin-1.21.json");
    for (merge, escaped, want) in [
        (false, "KEEP_UNCHANGED", Normalization::Base),
        (true, "KEEP_UNCHANGED", Normalization::MergeSlashes),
        (
            true,
            "UNESCAPE_AND_FORWARD",
            Normalization::DecodeAndMergeSlashes,
        ),
    ] {
        r.listeners
            .insert("main_internal".into(), with(merge, escaped).unwrap());
        assert_eq!(build(&r, &options()).unwrap().authz().normalization, want);
    }
    let e = with(true, "REJECT_REQUEST").unwrap_err();
    assert!(e.field.ends_with("normalize_path"), "{e:?}");
}

#[test]
fn the_stream_idle_timeout_comes_from_the_connection_manager() {
    // listener_builder.go sets `stream_idle_timeout: 0s` on main_internal's connection
    // managers; ProxyConfig `connectionSettings.httpStreamIdleTimeout` replaces it
    // (connection_settings.go `applyConnectionSettingsToHCM`).
    let (mut r, _) = resources("waypoint-httpbin-1.21.json");
    let mut with = |timeout: &str| {
        let mut listener = httpbin_main_internal();
        for chain in listener["filter_chains"].as_array_mut().unwrap() {
            let hcm =
                &mut chain["filters"].as_array_mut().unwrap().last_mut().unwrap()["typed_config"];
            if hcm.get("http_filters").is_some() {
                hcm["stream_idle_timeout"] = timeout.into();
            }
        }
        let l: Listener = from_json("envoy.config.listener.v3.Listener", &listener).unwrap();
        r.listeners
            .insert("main_internal".into(), listener::convert(&l).unwrap());
        build(&r, &options())
            .unwrap()
            .request_headers()
            .stream_idle_timeout
    };
    assert_eq!(with("0s"), None);
    assert_eq!(with("300s"), Some(std::time::Duration::from_secs(300)));
}

#[test]
fn listener_and_connection_manager_fields_no_translator_reads_are_refused_by_name() {
    let refused = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut listener = httpbin_main_internal();
        edit(&mut listener);
        let l: Listener = from_json("envoy.config.listener.v3.Listener", &listener).unwrap();
        listener::convert(&l).unwrap_err().field
    };
    assert_eq!(
        refused(&|l| l["per_connection_buffer_limit_bytes"] = 1024.into()),
        "per_connection_buffer_limit_bytes"
    );
    assert_eq!(
        refused(
            &|l| l["listener_filters"][0]["name"] = "envoy.filters.listener.proxy_protocol".into()
        ),
        "listener_filters[0]"
    );
    assert_eq!(
        refused(
            &|l| l["filter_chains"][0]["transport_socket"] = serde_json::json!({"name": "raw", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"}})
        ),
        "filter_chains[0].transport_socket"
    );
    // The common options istiod writes from ProxyConfig connectionSettings besides
    // `httpIdleTimeout` (applyConnectionSettingsToHCM, connection_settings.go) are refused
    // by name.
    for (field, value) in [
        ("max_headers_count", serde_json::json!(10)),
        ("max_requests_per_connection", serde_json::json!(10)),
    ] {
        let got = refused(&|l| {
            l["filter_chains"][0]["filters"][0]["typed_config"]["common_http_protocol_options"] =
                serde_json::json!({"idle_timeout": "60s", field: value.clone()})
        });
        assert!(
            got.ends_with(&format!("filters[0].common_http_protocol_options.{field}")),
            "{got}"
        );
    }
    // HTTP/1.1 settings other than HTTP/1.0 and the header-case formatter.
    let field = refused(&|l| {
        l["filter_chains"][0]["filters"][0]["typed_config"]["http_protocol_options"] =
            serde_json::json!({"accept_http_10": true, "allow_chunked_length": true})
    });
    assert!(
        field.ends_with("filters[0].http_protocol_options.allow_chunked_length"),
        "{field}"
    );
    let field = refused(&|l| {
        l["filter_chains"][0]["filters"][0]["typed_config"]["http_protocol_options"] =
            serde_json::json!({"accept_http_10": true, "default_host_for_http_10": "a\nb"})
    });
    assert!(
        field.ends_with("filters[0].http_protocol_options.default_host_for_http_10"),
        "{field}"
    );
}

#[test]
fn http_10_and_the_idle_timeout_come_from_the_connection_manager() {
    // buildWaypointInboundHTTPFilters (listener_waypoint.go) writes
    // `http_protocol_options {accept_http_10: true}` for the proxy's HTTP10 metadata;
    // buildHTTPConnectionManager (listener_builder.go) writes
    // `common_http_protocol_options {idle_timeout}` for its IDLE_TIMEOUT metadata.
    let (mut r, _) = resources("waypoint-httpbin-1.21.json");
    let mut with = |h1: serde_json::Value, common: serde_json::Value| {
        let mut listener = httpbin_main_internal();
        for chain in listener["filter_chains"].as_array_mut().unwrap() {
            let hcm =
                &mut chain["filters"].as_array_mut().unwrap().last_mut().unwrap()["typed_config"];
            if hcm.get("http_filters").is_some() {
                hcm["http_protocol_options"] = h1.clone();
                hcm["common_http_protocol_options"] = common.clone();
            }
        }
        let l: Listener = from_json("envoy.config.listener.v3.Listener", &listener).unwrap();
        r.listeners
            .insert("main_internal".into(), listener::convert(&l).unwrap());
        build(&r, &options()).unwrap().request_headers().clone()
    };
    let none = with(serde_json::json!({}), serde_json::json!({}));
    assert!(!none.accept_http_10);
    assert_eq!(none.idle_timeout, None);
    assert_eq!(none.max_connection_duration, None);
    assert_eq!(none.max_stream_duration, None);
    let set = with(
        serde_json::json!({"accept_http_10": true}),
        serde_json::json!({"idle_timeout": "1.5s", "max_connection_duration": "60s",
            "max_stream_duration": "2s"}),
    );
    assert!(set.accept_http_10);
    assert_eq!(set.default_host_for_http_10, None);
    assert_eq!(set.idle_timeout, Some(Duration::from_millis(1500)));
    // ProxyConfig connectionSettings.httpMaxConnectionDuration (applyConnectionSettingsToHCM).
    assert_eq!(set.max_connection_duration, Some(Duration::from_secs(60)));
    // connectionSettings.httpMaxStreamDuration.
    assert_eq!(set.max_stream_duration, Some(Duration::from_secs(2)));
    assert_eq!(
        set.underscore_headers,
        filters::model::UnderscoreHeaders::Allow
    );
    // `0s` turns Envoy's idle timeout off; connectionSettings
    // httpHeadersWithUnderscoresAction (toEnvoyHeadersWithUnderscoresAction).
    let off = with(
        serde_json::json!({"accept_http_10": true, "default_host_for_http_10": "h.example"}),
        serde_json::json!({"idle_timeout": "0s", "headers_with_underscores_action": "DROP_HEADER"}),
    );
    assert_eq!(off.idle_timeout, None);
    assert_eq!(
        off.underscore_headers,
        filters::model::UnderscoreHeaders::DropHeader
    );
    assert_eq!(off.default_host_for_http_10.as_deref(), Some("h.example"));
    // Without accept_http_10 the default host is unused, as in Envoy.
    let unused = with(
        serde_json::json!({"default_host_for_http_10": "h.example"}),
        serde_json::json!({}),
    );
    assert!(!unused.accept_http_10);
    assert_eq!(unused.default_host_for_http_10, None);
}

mod tcp_proxy;
mod upstream;
