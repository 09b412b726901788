//! The connection manager's `stream_idle_timeout` as istiod writes it from ProxyConfig
//! `connectionSettings.httpStreamIdleTimeout` (pilot/pkg/networking/core/
//! connection_settings.go `applyConnectionSettingsToHCM`, applied by listener_builder.go
//! `buildHTTPConnectionManager` over its default `0s`), served over Delta ADS to a real
//! waypoint process: a request idle for the timeout before its response starts is
//! answered 408 (`SI`, `stream_idle_timeout`), one idle after is reset, and one whose
//! response keeps coming with shorter gaps completes.

mod istiod;

use std::time::{Duration, Instant};

use istiod::*;
use serde_json::json;

const TIMEOUT: Duration = Duration::from_millis(800);

/// Every HTTP chain's connection manager gets the timeout and a stdout access log.
async fn waypoint() -> World {
    start(|ls, _, _| {
        fixture::edit_listener(ls, |json| {
            for chain in json["filter_chains"].as_array_mut().unwrap() {
                let hcm = &mut chain["filters"].as_array_mut().unwrap().last_mut().unwrap()
                    ["typed_config"];
                if hcm.get("http_filters").is_some() {
                    hcm["stream_idle_timeout"] = json!("0.800s");
                    hcm["access_log"] = json!([{"name": "envoy.access_loggers.file", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                        "path": "/dev/stdout",
                        "log_format": {"text_format_source": {"inline_string":
                            "IDLE %REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"}}}}]);
                }
            }
        });
    })
    .await
}

async fn logged(w: &World, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = std::fs::read_to_string(&w.stdout).unwrap_or_default();
        if log.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "no line {line:?}:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_pod_that_never_answers_gets_408_after_the_idle_timeout() {
    let w = waypoint().await;
    let t = Instant::now();
    // The pod waits 10 s before answering; the route has no timeout (istiod's 0s).
    let a = get(&w, 8100, "/hang?delay=10s").await;
    let took = t.elapsed();
    assert_eq!(a.status, 408);
    assert_eq!(&a.body[..], b"stream timeout");
    assert!(
        took >= TIMEOUT && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
    logged(&w, "IDLE /hang?delay=10s 408 SI stream_idle_timeout").await;
}

#[tokio::test]
async fn a_body_with_gaps_shorter_than_the_timeout_completes() {
    let w = waypoint().await;
    let t = Instant::now();
    // Six chunks 300 ms apart: 1.5 s in all, well past the timeout.
    let a = get(&w, 8100, "/drip?n=6&gap=300ms").await;
    assert_eq!(a.status, 200);
    assert_eq!(&a.body[..], b"xxxxxx");
    assert!(t.elapsed() > TIMEOUT);
    logged(&w, "IDLE /drip?n=6&gap=300ms 200 - via_upstream").await;
}

#[tokio::test]
async fn a_response_that_stalls_after_it_started_is_reset() {
    let w = waypoint().await;
    let conn = w.client.connect().await.unwrap();
    let mut http = conn
        .http1(SocketAddr::new(VIP.parse().unwrap(), 8100))
        .await
        .unwrap();
    let req = http::Request::get("/drip?n=2&gap=3s")
        .header("host", HOST)
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let t = Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("the stream ended before the pod's second chunk");
    assert!(body.is_err(), "the stream was reset, not completed");
    assert!(t.elapsed() < Duration::from_secs(3));
    logged(&w, "IDLE /drip?n=2&gap=3s 200 SI stream_idle_timeout").await;
}
