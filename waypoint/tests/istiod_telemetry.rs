//! Telemetry shapes istiod generates (the connection manager's access log, `istio.stats`
//! metric overrides), served over Delta ADS to a real waypoint process.

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
    fixture::edit_listener(ls, |json| {
        for chain in json["filter_chains"].as_array_mut().unwrap() {
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

#[tokio::test]
async fn metric_dimensions_are_nacked_rather_than_ignored() {
    // A Telemetry tag override with a value (a CEL expression): not implemented, so said.
    let w = start(|_, _, _| {}).await;
    let mut ls = w.listeners.clone();
    with_metric_overrides(
        &mut ls,
        json!([{"name": "requests_total", "dimensions": {"custom": "request.host"}}]),
    );
    w.server.set(LISTENER, ls);
    let error = nack(&w).await;
    assert!(
        error.contains("typed_config.metrics[0].dimensions"),
        "{error}"
    );
    assert_eq!(get(&w, 8100, "/get").await.status, 200);
}
