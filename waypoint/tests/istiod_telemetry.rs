//! Telemetry shapes istiod generates (the connection manager's access logs and their
//! filters, `istio.stats` metric overrides and dimensions), served over Delta ADS to a
//! real waypoint process.

mod istiod;

use std::time::{Duration, Instant};

use istiod::*;
use serde_json::json;

#[tokio::test]
async fn the_connection_managers_access_log_is_written_in_its_format() {
    // MeshConfig accessLogFile /dev/stdout with accessLogFormat: istiod gives every HTTP
    // chain's connection manager one file access log (accesslog.go).
    let w = start(|ls, _, _| {
        fixture::edit_listener(ls, |json| {
            for chain in json["filter_chains"].as_array_mut().unwrap() {
                let filters = chain["filters"].as_array_mut().unwrap();
                let hcm = &mut filters.last_mut().unwrap()["typed_config"];
                if hcm.get("http_filters").is_some() {
                    hcm["access_log"] = json!([{"name": "envoy.access_loggers.file", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                        "path": "/dev/stdout",
                        "log_format": {"text_format_source": {"inline_string":
                            "ACCESS %REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"}}}}]);
                }
            }
        });
        fixture::prepend_routes(
            ls,
            8100,
            &[json!({"name": "vs.abort", "match": {"prefix": "/abort"}, "route": {"cluster": CLUSTER_8100},
                     "typed_per_filter_config": {"envoy.filters.http.fault": {
                         "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                         "abort": {"http_status": 418, "percentage": {"numerator": 100, "denominator": "HUNDRED"}}}}})],
        );
    })
    .await;
    assert_eq!(get(&w, 8100, "/get").await.status, 200);
    assert_eq!(get(&w, 8100, "/abort").await.status, 418);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&w.stdout).unwrap_or_default();
        if log.contains("ACCESS GET /get 200 - via_upstream\n")
            && log.contains("ACCESS GET /abort 418 FI fault_filter_abort\n")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "access log lines missing:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `istio.stats` with `metrics` overrides, as istiod writes a Telemetry
/// `metrics.overrides` (model/telemetry.go generateStatsConfig), on every chain.
fn with_metric_overrides(ls: &mut Named, metrics: serde_json::Value) {
    with_chain_metric_overrides(ls, "", metrics)
}

/// As [`with_metric_overrides`], on the chains whose name contains `chain` only (a
/// Telemetry targeting a Service: istiod's `HTTPFilters(proxy, class, svc)`).
fn with_chain_metric_overrides(ls: &mut Named, chain: &str, metrics: serde_json::Value) {
    fixture::edit_listener(ls, |json| {
        for chain in json["filter_chains"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .filter(|c| c["name"].as_str().unwrap().contains(chain))
        {
            let hcm = &mut chain["filters"][0]["typed_config"];
            if let Some(list) = hcm.get_mut("http_filters").and_then(|f| f.as_array_mut()) {
                for f in list.iter_mut().filter(|f| f["name"] == "istio.stats") {
                    f["typed_config"]["value"]["metrics"] = metrics.clone();
                }
            }
        }
    });
}

async fn prometheus(w: &World) -> String {
    testkit::process::http_get(w._wp.metrics, "/stats/prometheus")
        .await
        .unwrap()
        .1
}

#[tokio::test]
async fn metric_overrides_remove_labels_and_drop_metrics() {
    let w = start(|ls, _, _| {
        with_metric_overrides(
            ls,
            json!([{"name": "requests_total", "tags_to_remove": ["request_protocol", "response_flags"]},
                   {"name": "request_bytes", "drop": true}]),
        )
    })
    .await;
    assert_eq!(get(&w, 8100, "/get").await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = prometheus(&w).await;
        if text.contains("istio_requests_total{") {
            break text;
        }
        assert!(Instant::now() < deadline, "no request counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let requests: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    assert!(!requests.is_empty());
    for line in &requests {
        assert!(!line.contains("request_protocol="), "{line}");
        assert!(!line.contains("response_flags="), "{line}");
        assert!(line.contains("response_code=\"200\""), "{line}");
    }
    assert!(!text.contains("istio_request_bytes"), "dropped:\n{text}");
    // Other metrics keep every label.
    assert!(
        text.lines()
            .any(|l| l.starts_with("istio_response_bytes_count{")
                && l.contains("request_protocol=\"http\"")),
        "{text}"
    );
}

/// Every HTTP chain's connection manager gets `logs` as its `access_log`.
fn with_access_logs(ls: &mut Named, logs: serde_json::Value) {
    fixture::edit_listener(ls, |json| {
        for chain in json["filter_chains"].as_array_mut().unwrap() {
            let filters = chain["filters"].as_array_mut().unwrap();
            let hcm = &mut filters.last_mut().unwrap()["typed_config"];
            if hcm.get("http_filters").is_some() {
                hcm["access_log"] = logs.clone();
            }
        }
    });
}

/// A route on 8100 that answers 503 from the fault filter.
fn with_abort_route(ls: &mut Named) {
    fixture::prepend_routes(
        ls,
        8100,
        &[
            json!({"name": "vs.abort", "match": {"prefix": "/abort"}, "route": {"cluster": CLUSTER_8100},
                 "typed_per_filter_config": {"envoy.filters.http.fault": {
                     "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                     "abort": {"http_status": 503, "percentage": {"numerator": 100, "denominator": "HUNDRED"}}}}}),
        ],
    );
}

/// The CEL filter istiod puts on a Telemetry provider's log
/// (accesslog.go `buildAccessLogFilterFromTelemetry`, `accessLogging.filter.expression`).
fn cel_filter(expression: &str) -> serde_json::Value {
    json!({"extension_filter": {"name": "envoy.access_loggers.extension_filters.cel", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
        "expression": expression}}})
}

#[tokio::test]
async fn a_cel_filter_logs_only_5xx_to_a_file() {
    // A Telemetry `accessLogging` with `filter.expression` naming an envoyFileAccessLog
    // provider with a path (telemetry_logging.go `fileAccessLogFromTelemetry`).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let p = path.to_str().unwrap().to_string();
    let w = start(|ls, _, _| {
        with_access_logs(
            ls,
            json!([{"name": "envoy.access_loggers.file",
                "filter": cel_filter("response.code >= 500"),
                "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                "path": p,
                "log_format": {"text_format_source": {"inline_string": "FILE %REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE%\n"}}}}]),
        );
        with_abort_route(ls);
    })
    .await;
    // Every response of 500 or more is logged, and nothing else (under load a request may
    // fail upstream: it is then logged too).
    let mut expected = String::new();
    for path in ["/get", "/abort", "/get?again"] {
        let status = get(&w, 8100, path).await.status;
        if path == "/abort" {
            assert_eq!(status, 503);
        }
        if status >= 500 {
            expected.push_str(&format!("FILE GET {path} {status}\n"));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if log.len() >= expected.len() {
            break log;
        }
        assert!(Instant::now() < deadline, "5xx lines missing:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Lines are written in the order the responses ended.
    assert_eq!(log, expected);
    let stdout = std::fs::read_to_string(&w.stdout).unwrap_or_default();
    assert!(!stdout.contains("FILE "), "{stdout}");
}

#[tokio::test]
async fn metric_dimensions_from_a_request_header_become_labels() {
    // A Telemetry tagOverrides `user: {value: "request.headers['x-user']"}` on
    // REQUEST_COUNT (telemetry.go `generateStatsConfig`: `dimensions`).
    let w = start(|ls, _, _| {
        with_metric_overrides(
            ls,
            json!([{"name": "requests_total", "dimensions": {
                "user": "request.headers['x-user']",
                "request_protocol": "request.url_path.startsWith('/get') ? 'getter' : 'other'"}}]),
        )
    })
    .await;
    assert_eq!(
        send(&w, 8100, "GET", "/get", &[("x-user", "alice")])
            .await
            .status,
        200
    );
    assert_eq!(get(&w, 8100, "/get").await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = prometheus(&w).await;
        if text.contains("user=\"alice\"") && text.contains("user=\"unknown\"") {
            break text;
        }
        assert!(Instant::now() < deadline, "no dimension:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let requests: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    assert_eq!(requests.len(), 2, "{requests:?}");
    for line in &requests {
        // A standard label rewritten by an expression.
        assert!(line.contains("request_protocol=\"getter\""), "{line}");
        assert!(line.ends_with(" 1"), "{line}");
    }
    // Other metrics do not get the dimension.
    assert!(
        text.lines()
            .filter(|l| l.starts_with("istio_request_duration_milliseconds_count{"))
            .all(|l| !l.contains("user=") && l.contains("request_protocol=\"http\"")),
        "{text}"
    );
}

#[tokio::test]
async fn expressions_outside_the_cel_subset_are_nacked_by_name() {
    let w = start(|_, _, _| {}).await;
    let mut ls = w.listeners.clone();
    with_metric_overrides(
        &mut ls,
        json!([{"name": "requests_total", "dimensions": {"t": "string(request.time)"}}]),
    );
    w.server.set(LISTENER, ls);
    let error = nack(&w).await;
    assert!(
        error.contains("typed_config.metrics[0].dimensions.t") && error.contains("request.time"),
        "{error}"
    );
    assert_eq!(get(&w, 8100, "/get").await.status, 200);
}

const COLLECTOR_HOST: &str = "otel-collector.observability.svc.cluster.local";

/// The connection manager's OpenTelemetry provider as istiod writes it for a MeshConfig
/// `opentelemetry` provider (tracing.go `otelConfig`: the collector's `outbound|port||host`
/// cluster, `service_name` the proxy's service cluster), its EDS cluster (istiod sends it
/// among the waypoint's extra services) and endpoints: the collector pod, in the mesh.
fn with_collector(ls: &mut Named, cs: &mut Named, es: &mut Named, pod: IpAddr, http: bool) {
    let port = if http { 4318 } else { 4317 };
    let cluster = format!("outbound|{port}||{COLLECTOR_HOST}");
    let mut otel = json!({
        "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
        "service_name": "waypoint.default"
    });
    if http {
        otel["http_service"] = json!({"http_uri": {
            "uri": format!("{COLLECTOR_HOST}/v1/traces"), "cluster": cluster, "timeout": "2s"}});
    } else {
        otel["grpc_service"] = json!({"envoy_grpc": {"cluster_name": cluster}, "timeout": "2s"});
    }
    let provider = json!({"name": "envoy.tracers.opentelemetry", "typed_config": otel});
    fixture::edit_listener(ls, |json| {
        for chain in json["filter_chains"].as_array_mut().unwrap() {
            let hcm =
                &mut chain["filters"].as_array_mut().unwrap().last_mut().unwrap()["typed_config"];
            if hcm.get("tracing").is_some() {
                hcm["tracing"]["provider"] = provider.clone();
            }
        }
    });
    let mut c = json!({
        "name": cluster, "type": "EDS",
        "eds_cluster_config": {"eds_config": {"ads": {}, "resource_api_version": "V3"},
                               "service_name": cluster},
        "connect_timeout": "10s", "lb_policy": "LEAST_REQUEST",
        "metadata": {"filter_metadata": {"istio": {"services": [
            {"host": COLLECTOR_HOST, "name": "otel-collector", "namespace": "observability"}]}}}
    });
    if !http {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}});
    }
    let c: envoy_types::pb::envoy::config::cluster::v3::Cluster =
        xds::envoy::from_json("envoy.config.cluster.v3.Cluster", &c).unwrap();
    cs.push((cluster.clone(), fixture::any(CLUSTER, &c)));
    let e = mesh_endpoints(es, &cluster, pod);
    es.push((cluster, e));
}

/// Traces requests to a collector that is only a Service and its mesh pod over xDS, and
/// checks what Envoy and istiod put on the SERVER span.
async fn spans_reach_the_collector_cluster(http: bool) {
    let collector = if http {
        testkit::otlp::Collector::http().await.unwrap()
    } else {
        testkit::otlp::Collector::grpc().await.unwrap()
    };
    let w = start_with_pod(Some(App::Forward(collector.addr)), |ls, cs, es, pod| {
        with_collector(ls, cs, es, pod.unwrap(), http)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let server = loop {
        // Under load the first requests may come before every cluster's endpoints: the
        // span of any answered request will do.
        let status = get(&w, 8000, "/traced").await.status;
        if let Some(s) = collector
            .spans()
            .into_iter()
            .find(|r| r.span.kind == 2 && r.attr("url.path").as_deref() == Some("/traced"))
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "no span reached the collector cluster ({} exports, last status {status})",
            collector.exports()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        server.attr("node_id").as_deref(),
        Some("waypoint~0.0.0.0~waypoint.default~default.svc.cluster.local")
    );
    // Named after the matched route's decorator (route.go GetRouteOperation; the 1.21
    // dump's routes have an empty host: `:8000/*`), not the waypoint's own `host:port/*`.
    assert_eq!(server.span.name, ":8000/*");
    // istiod's literal custom tag, as the dump's connection manager carries it.
    assert_eq!(server.attr("istio.cluster_id").as_deref(), Some("snorlax"));
    assert_eq!(
        server.attr("istio.canonical_service").as_deref(),
        Some("httpbin-istio-waypoint")
    );
    assert_eq!(
        server.resource_attr("service.name").as_deref(),
        Some("waypoint.default")
    );
    let pod = w._pods.2.as_ref().unwrap();
    assert!(
        pod.counters
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "the export went through the collector pod's ztunnel"
    );
}

#[tokio::test]
async fn spans_reach_an_outbound_collector_cluster_over_otlp_grpc() {
    spans_reach_the_collector_cluster(false).await;
}

#[tokio::test]
async fn spans_reach_an_outbound_collector_cluster_over_otlp_http() {
    spans_reach_the_collector_cluster(true).await;
}

/// The OpenTelemetry access log istiod writes for an `envoyOtelAls` provider
/// (telemetry_logging.go `buildOpenTelemetryAccessLogConfig`): the collector's cluster in
/// the deprecated `common_config`, the wasm filter state objects, builtin labels off, the
/// text format as the body and the provider's labels as attributes.
fn otel_access_log(resource: serde_json::Value) -> serde_json::Value {
    json!({"name": "envoy.access_loggers.open_telemetry", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
        "common_config": {
            "log_name": "otel_envoy_accesslog",
            "grpc_service": {"envoy_grpc": {"cluster_name": format!("outbound|4317||{COLLECTOR_HOST}"), "authority": COLLECTOR_HOST}},
            "transport_api_version": "V3",
            "filter_state_objects_to_log": ["upstream_peer", "downstream_peer", "wasm.upstream_peer",
                "wasm.upstream_peer_id", "wasm.downstream_peer", "wasm.downstream_peer_id"]},
        "disable_builtin_labels": true,
        "body": {"string_value": "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE%"},
        "attributes": {"values": [
            {"key": "code", "value": {"string_value": "%RESPONSE_CODE%"}},
            {"key": "flags", "value": {"string_value": "%RESPONSE_FLAGS%"}}]},
        "resource_attributes": resource}})
}

#[tokio::test]
async fn access_logs_reach_an_opentelemetry_collector_cluster() {
    let collector = testkit::otlp::Collector::grpc().await.unwrap();
    let w = start_with_pod(Some(App::Forward(collector.addr)), |ls, cs, es, pod| {
        with_collector(ls, cs, es, pod.unwrap(), false);
        with_access_logs(
            ls,
            json!([otel_access_log(json!({"values": [
                {"key": "k8s.cluster.name", "value": {"string_value": "snorlax"}}]}))]),
        );
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let record = loop {
        let status = get(&w, 8000, "/logged").await.status;
        if let Some(r) = collector
            .logs()
            .into_iter()
            .find(|r| r.body().is_some_and(|b| b.starts_with("GET /logged ")))
        {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "no log record reached the collector ({} exports, last status {status})",
            collector.exports()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let code = record.attr("code").unwrap();
    assert_eq!(record.body().unwrap(), format!("GET /logged {code}"));
    assert_eq!(record.attr("flags").as_deref(), Some("-"));
    assert!(record.record.time_unix_nano > 0);
    // Builtin labels are off, as istiod asks; the configured resource attribute is there.
    assert_eq!(
        testkit::otlp::attr(&record.resource, "k8s.cluster.name").as_deref(),
        Some("snorlax")
    );
    assert_eq!(testkit::otlp::attr(&record.resource, "log_name"), None);
    let pod = w._pods.2.as_ref().unwrap();
    assert!(
        pod.counters
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "the export went through the collector pod's ztunnel"
    );
}

#[tokio::test]
async fn tcp_chains_write_their_access_log() {
    // istiod gives a TCP chain's tcp_proxy the same access log as HTTP chains
    // (accesslog.go `setTCPAccessLog`, via `setAccessLogAndBuildTCPFilter`).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tcp.log");
    let p = path.to_str().unwrap().to_string();
    let w = start_with_pod(Some(App::TcpEcho), |ls, cs, es, extra| {
        tcp_port(ls, cs, es, extra.unwrap(), vec![]);
        fixture::edit_listener(ls, |json| {
            for chain in json["filter_chains"].as_array_mut().unwrap() {
                if chain["name"] == TCP_CHAIN {
                    let tcp = &mut chain["filters"].as_array_mut().unwrap().last_mut().unwrap()
                        ["typed_config"];
                    tcp["access_log"] = json!([{"name": "envoy.access_loggers.file", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                        "path": p,
                        "log_format": {"text_format_source": {"inline_string":
                            "TCP %REQ(:METHOD)% %PROTOCOL% %RESPONSE_CODE% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_CLUSTER%\n"}}}}]);
                }
            }
        });
    })
    .await;
    // Under load a first tunnel may come before the pod's endpoints (and is logged with
    // what it carried); one that echoes is logged with its five bytes each way.
    let want = format!("TCP - - 0 5 5 {TCP_CLUSTER}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let back = tcp_round_trip(&w).await;
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if back == b"hello" && log.lines().any(|l| l == want) {
            assert!(log.lines().all(|l| l.starts_with("TCP - - 0 ")), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "no TCP line ({back:?}):\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_service_ports_own_access_log_applies_to_its_chain_only() {
    // A Telemetry targeting one Service gives only its chains the log (telemetry.go
    // `AccessLogging(push, proxy, class, svc)`): here port 8100's chain has a file log and
    // port 8000's has none.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("svc.log");
    let p = path.to_str().unwrap().to_string();
    let w = start(|ls, _, _| {
        fixture::edit_listener(ls, |json| {
            for chain in json["filter_chains"].as_array_mut().unwrap() {
                if !chain["name"].as_str().unwrap().contains("|8100|") {
                    continue;
                }
                let hcm = &mut chain["filters"].as_array_mut().unwrap().last_mut().unwrap()
                    ["typed_config"];
                if hcm.get("http_filters").is_some() {
                    hcm["access_log"] = json!([{"name": "envoy.access_loggers.file", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                        "path": p,
                        "log_format": {"text_format_source": {"inline_string": "SVC %REQ(:PATH)% %DOWNSTREAM_LOCAL_ADDRESS%\n"}}}}]);
                }
            }
        });
    })
    .await;
    // Both ports answer (under load a first request may fail upstream; it is then retried).
    let deadline = Instant::now() + Duration::from_secs(10);
    for (port, path) in [(8000, "/on-8000"), (8100, "/on-8100")] {
        while get(&w, port, path).await.status != 200 {
            assert!(Instant::now() < deadline, "{port} does not answer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let log = loop {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        if log.contains("/on-8100") {
            break log;
        }
        assert!(Instant::now() < deadline, "no line for 8100:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Only port 8100's requests are logged.
    assert!(log.lines().all(|l| l.starts_with("SVC /on-8100 ")), "{log}");
}

#[tokio::test]
async fn a_service_ports_own_metric_overrides_apply_to_its_requests_only() {
    let w = start(|ls, _, _| {
        with_chain_metric_overrides(
            ls,
            "|8100|",
            json!([{"name": "requests_total", "tags_to_remove": ["response_flags"],
                    "dimensions": {"user": "request.headers['x-user']"}},
                   {"name": "request_bytes", "drop": true}]),
        )
    })
    .await;
    let user = [("x-user", "bob")];
    assert_eq!(send(&w, 8100, "GET", "/get", &user).await.status, 200);
    assert_eq!(send(&w, 8000, "GET", "/get", &user).await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = prometheus(&w).await;
        let n = text
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .count();
        if n >= 2 {
            break text;
        }
        assert!(Instant::now() < deadline, "requests not counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let requests: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    // One series per port: 8100's under its own overrides, 8000's under none.
    let with_user: Vec<&&str> = requests
        .iter()
        .filter(|l| l.contains("user=\"bob\""))
        .collect();
    let without: Vec<&&str> = requests.iter().filter(|l| !l.contains("user=")).collect();
    assert_eq!(with_user.len(), 1, "{requests:?}");
    assert_eq!(without.len(), 1, "{requests:?}");
    assert!(
        !with_user[0].contains("response_flags="),
        "{}",
        with_user[0]
    );
    assert!(
        without[0].contains("response_flags=\"-\""),
        "{}",
        without[0]
    );
    // request_bytes is dropped for 8100's requests only.
    let bytes: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_request_bytes_count{"))
        .collect();
    assert_eq!(bytes.len(), 1, "{bytes:?}");
}
