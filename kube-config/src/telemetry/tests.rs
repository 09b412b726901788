use super::*;
use filters::model::telemetry::{
    AccessLog, AccessLogConfig, AccessLogSink, LogFilter, MetricOverride,
};

fn mesh(yaml: &str) -> MeshConfig {
    serde_yaml::from_str(yaml).unwrap()
}

fn telemetry(ns: &str, name: &str, spec: &str) -> (String, Telemetry) {
    let t: Telemetry = serde_yaml::from_str(&format!(
        "metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    ))
    .unwrap();
    (format!("Telemetry {ns}/{name}"), t)
}

fn gw() -> NamespacedName {
    NamespacedName::new("apps", "waypoint")
}

const OTEL: &str = "extensionProviders:\n- name: otel\n  opentelemetry: {service: otel.obs.svc.cluster.local, port: 4317}\n- name: zipkin\n  zipkin: {service: z, port: 9411}\n- name: json-log\n  envoyFileAccessLog: {path: /dev/stdout, logFormat: {labels: {code: '%RESPONSE_CODE%'}}}\n";

#[test]
fn metric_overrides_become_removed_tags_and_dropped_metrics() {
    let m = mesh(OTEL);
    let ts = vec![telemetry(
        "apps",
        "metrics",
        "  metrics:\n  - providers: [{name: prometheus}]\n    overrides:\n    - match: {metric: REQUEST_COUNT}\n      tagOverrides: {request_protocol: {operation: REMOVE}}\n    - match: {metric: REQUEST_SIZE, mode: SERVER}\n      disabled: true\n    - match: {metric: RESPONSE_SIZE, mode: CLIENT}\n      disabled: true\n",
    )];
    let c = build(&ts, &m, &gw(), "istio-system").unwrap();
    assert_eq!(
        c.metric_overrides,
        vec![
            MetricOverride {
                metric: Some("requests_total".into()),
                tags_to_remove: vec!["request_protocol".into()],
                ..Default::default()
            },
            MetricOverride {
                metric: Some("request_bytes".into()),
                drop: true,
                ..Default::default()
            },
        ],
        "the CLIENT-side override does not apply to a waypoint"
    );
    // UPSERT values are CEL expressions, compiled; one outside the subset is refused
    // naming the tag.
    let upsert = vec![telemetry(
        "apps",
        "metrics",
        "  metrics:\n  - overrides:\n    - tagOverrides: {custom: {value: \"request.headers['x-user']\"}, destination_port: {value: string(destination.port)}}\n",
    )];
    let c = build(&upsert, &m, &gw(), "istio-system").unwrap();
    let dims: Vec<(&str, &str)> = c.metric_overrides[0]
        .dimensions
        .iter()
        .map(|(k, e)| (k.as_str(), e.source()))
        .collect();
    assert_eq!(
        dims,
        vec![
            ("custom", "request.headers['x-user']"),
            ("destination_port", "string(destination.port)")
        ]
    );
    let bad = vec![telemetry(
        "apps",
        "metrics",
        "  metrics:\n  - overrides:\n    - tagOverrides: {custom: {value: request.time}}\n",
    )];
    let e = build(&bad, &m, &gw(), "istio-system")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spec.metrics[0].overrides[0].tagOverrides.custom.value")
            && e.contains("request.time"),
        "{e}"
    );
}

#[test]
fn access_logging_filters_and_providers() {
    let m = mesh("extensionProviders:\n- name: otel-logs\n  envoyOtelAls: {service: obs/otel.obs.svc.cluster.local, port: 4317, logFormat: {labels: {code: '%RESPONSE_CODE%'}}}\n- name: file\n  envoyFileAccessLog: {path: /var/log/waypoint.log}\n");
    let ts = vec![telemetry(
        "apps",
        "logs",
        "  accessLogging:\n  - providers: [{name: otel-logs}, {name: file}]\n    filter: {expression: 'response.code >= 500'}\n",
    )];
    let c = build(&ts, &m, &gw(), "istio-system").unwrap();
    assert_eq!(c.access_logs.len(), 2);
    let AccessLogSink::OpenTelemetry(o) = &c.access_logs[0].sink else {
        panic!("{:?}", c.access_logs[0]);
    };
    assert_eq!(o.endpoint(), "obs/otel.obs.svc.cluster.local:4317");
    assert_eq!(o.authority, "otel.obs.svc.cluster.local");
    assert_eq!(o.log_name, "otel_envoy_accesslog");
    assert_eq!(
        o.attributes,
        vec![("code".into(), "%RESPONSE_CODE%".into())]
    );
    assert!(!o.builtin_labels);
    assert!(
        matches!(&c.access_logs[1].sink, AccessLogSink::File { path, .. } if path == "/var/log/waypoint.log")
    );
    for log in &c.access_logs {
        assert!(
            matches!(&log.filter, Some(LogFilter::Cel(e)) if e.source() == "response.code >= 500")
        );
    }
    // Strict fields and expressions.
    let err = |spec: &str| {
        build(&[telemetry("apps", "t", spec)], &m, &gw(), "istio-system")
            .unwrap_err()
            .to_string()
    };
    let e = err("  accessLogging:\n  - filter: {expression: 'response.code >= '}\n");
    assert!(e.contains("spec.accessLogging[0].filter.expression"), "{e}");
    let typo: Result<TelemetrySpec, _> =
        serde_yaml::from_str("accessLogging:\n- filter: {expression: 'true', typo: 1}\n");
    assert!(typo.unwrap_err().to_string().contains("typo"));
    let m2 =
        mesh("extensionProviders:\n- name: o\n  envoyOtelAls: {service: a, port: 1, logname: x}\n");
    let e = build(
        &[telemetry(
            "apps",
            "t",
            "  accessLogging:\n  - providers: [{name: o}]\n",
        )],
        &m2,
        &gw(),
        "istio-system",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("logname"), "{e}");
}

#[test]
fn built_in_listeners_get_the_logs_behind_istiods_filters() {
    use filters::model::telemetry::Comparison;
    // MeshConfig accessLogFile: every built-in listener gets it behind its filter.
    let c = build(
        &[],
        &mesh("accessLogFile: /dev/stdout\n"),
        &gw(),
        "istio-system",
    )
    .unwrap();
    let l = &c.listener_logs;
    assert_eq!(
        l.connect_terminate[0].filter,
        Some(LogFilter::Status(Comparison::Ge, 400))
    );
    assert_eq!(
        l.connect_originate[0].filter,
        Some(LogFilter::ResponseFlags(vec!["UF".into()]))
    );
    assert_eq!(
        l.no_chain[0].filter,
        Some(LogFilter::ResponseFlags(vec!["NR".into()]))
    );
    assert_eq!(l.no_chain[0].sink, c.access_logs[0].sink);
    // A Telemetry filter is and-ed with them; disableEnvoyListenerLog drops the NR log.
    let m = mesh("accessLogFile: /dev/stdout\ndisableEnvoyListenerLog: true\n");
    let ts = vec![telemetry(
        "apps",
        "logs",
        "  accessLogging:\n  - providers: [{name: envoy}]\n    filter: {expression: 'response.code >= 500'}\n",
    )];
    let c = build(&ts, &m, &gw(), "istio-system").unwrap();
    let l = &c.listener_logs;
    assert!(l.no_chain.is_empty());
    assert!(matches!(&l.connect_originate[0].filter,
        Some(LogFilter::And(fs)) if fs[0] == LogFilter::ResponseFlags(vec!["UF".into()])
            && matches!(&fs[1], LogFilter::Cel(e) if e.source() == "response.code >= 500")));
    // No access logging: no listener logs.
    let c = build(&[], &mesh(""), &gw(), "istio-system").unwrap();
    assert_eq!(c.listener_logs, Default::default());
}

#[test]
fn most_specific_telemetry_wins() {
    let m = mesh(OTEL);
    let ts = vec![
        telemetry("istio-system", "mesh", "  tracing:\n  - providers: [{name: otel}]\n    randomSamplingPercentage: 10\n"),
        telemetry("apps", "ns", "  tracing:\n  - providers: [{name: otel}]\n    randomSamplingPercentage: 50\n"),
        telemetry("apps", "wp", "  targetRefs:\n  - {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}\n  accessLogging:\n  - providers: [{name: json-log}]\n"),
        telemetry("other", "x", "  tracing:\n  - providers: [{name: otel}]\n    randomSamplingPercentage: 99\n"),
    ];
    let c = build(&ts, &m, &gw(), "istio-system").unwrap();
    let t = c.tracing.unwrap();
    assert_eq!(t.sampling_percentage, 50.0);
    assert_eq!(t.endpoint(), "otel.obs.svc.cluster.local:4317");
    assert!(matches!(t.protocol, OtlpProtocol::Grpc { .. }));
    assert_eq!(
        c.access_logs,
        vec![AccessLog::stdout(AccessLogConfig::Json(Some(vec![(
            "code".into(),
            "%RESPONSE_CODE%".into()
        )])))]
    );
}

#[test]
fn defaults_come_from_mesh_config() {
    let m = mesh(&format!("{OTEL}defaultProviders: {{tracing: [otel]}}\naccessLogFile: /dev/stdout\naccessLogEncoding: JSON\n"));
    let c = build(&[], &m, &gw(), "istio-system").unwrap();
    assert_eq!(c.tracing.unwrap().sampling_percentage, DEFAULT_SAMPLING);
    assert_eq!(
        c.access_logs,
        vec![AccessLog::stdout(AccessLogConfig::Json(None))]
    );
    // Built-in `envoy` provider, and access logging switched off by a Telemetry.
    let ts = vec![telemetry(
        "apps",
        "off",
        "  accessLogging:\n  - disabled: true\n",
    )];
    assert_eq!(
        build(&ts, &m, &gw(), "istio-system").unwrap().access_logs,
        vec![]
    );
    let ts = vec![telemetry(
        "apps",
        "on",
        "  accessLogging:\n  - providers: [{name: envoy}]\n",
    )];
    let m = mesh(OTEL);
    assert_eq!(
        build(&ts, &m, &gw(), "istio-system").unwrap().access_logs,
        vec![AccessLog::stdout(AccessLogConfig::Text(None))]
    );
    assert_eq!(
        build(&[], &m, &gw(), "istio-system").unwrap().access_logs,
        vec![]
    );
}

#[test]
fn unsupported_providers_and_bad_values_are_named() {
    let m = mesh(OTEL);
    let err = |spec: &str| {
        build(&[telemetry("apps", "t", spec)], &m, &gw(), "istio-system")
            .unwrap_err()
            .to_string()
    };
    let e = err("  tracing:\n  - providers: [{name: zipkin}]\n");
    assert!(
        e.contains("Telemetry apps/t") && e.contains("zipkin") && e.contains("only opentelemetry"),
        "{e}"
    );
    let e = err("  tracing:\n  - providers: [{name: nope}]\n");
    assert!(e.contains("no extensionProvider named \"nope\""), "{e}");
    let e = err("  tracing:\n  - providers: [{name: otel}]\n    randomSamplingPercentage: 101\n");
    assert!(e.contains("randomSamplingPercentage"), "{e}");
    let m2 = mesh(
        "extensionProviders:\n- name: bad\n  envoyFileAccessLog: {logFormat: {text: '%NOPE%'}}\n",
    );
    let e = build(
        &[telemetry(
            "apps",
            "t",
            "  accessLogging:\n  - providers: [{name: bad}]\n",
        )],
        &m2,
        &gw(),
        "istio-system",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unsupported operator %NOPE%"), "{e}");
}

#[test]
fn access_log_service_providers_become_grpc_loggers() {
    use filters::model::telemetry::GrpcLogKind;
    // telemetry_logging.go `httpGrpcAccessLogFromTelemetry` / `tcpGrpcAccessLogFromTelemetry`:
    // default log names and filter state objects, headers as given.
    let m = mesh("extensionProviders:\n- name: als\n  envoyHttpAls: {service: obs/als.obs.svc.cluster.local, port: 9001, additionalRequestHeadersToLog: [X-Tenant]}\n- name: tcp-als\n  envoyTcpAls: {service: als.obs.svc.cluster.local, port: 9001, logName: mine}\n- name: bad\n  envoyTcpAls: {service: a, port: 1, additionalRequestHeadersToLog: [x]}\n- name: trailers\n  envoyHttpAls: {service: a, port: 1, additionalResponseTrailersToLog: [x]}\n");
    let ts = vec![telemetry(
        "apps",
        "logs",
        "  accessLogging:\n  - providers: [{name: als}, {name: tcp-als}]\n",
    )];
    let c = build(&ts, &m, &gw(), "istio-system").unwrap();
    let AccessLogSink::Grpc(h) = &c.access_logs[0].sink else {
        panic!("{:?}", c.access_logs[0]);
    };
    assert_eq!(h.kind, GrpcLogKind::Http);
    assert_eq!(h.log_name, "http_envoy_accesslog");
    assert_eq!(h.endpoint(), "obs/als.obs.svc.cluster.local:9001");
    assert_eq!(h.authority, "als.obs.svc.cluster.local");
    assert_eq!(h.request_headers, ["x-tenant"]);
    assert_eq!(h.filter_state_objects, ["upstream_peer", "downstream_peer"]);
    let AccessLogSink::Grpc(t) = &c.access_logs[1].sink else {
        panic!("{:?}", c.access_logs[1]);
    };
    assert_eq!((t.kind, t.log_name.as_str()), (GrpcLogKind::Tcp, "mine"));
    // TCP chains get the same loggers, as istiod gives them.
    assert_eq!(c.tcp_access_logs, c.access_logs);
    for (name, field) in [
        ("bad", "envoyTcpAls.additionalRequestHeadersToLog"),
        ("trailers", "envoyHttpAls.additionalResponseTrailersToLog"),
    ] {
        let spec = format!("  accessLogging:\n  - providers: [{{name: {name}}}]\n");
        let e = build(&[telemetry("apps", "t", &spec)], &m, &gw(), "istio-system")
            .unwrap_err()
            .to_string();
        assert!(e.contains(field), "{e}");
    }
}
