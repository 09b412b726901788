//! The `main_internal` connection manager's HTTP/1.0 and connection idle settings as istiod
//! writes them, served over Delta ADS to a real waypoint process:
//!
//! - `http_protocol_options {accept_http_10: true}` for the proxy's `HTTP10` metadata
//!   (pilot/pkg/networking/core/listener_waypoint.go, `buildWaypointInboundHTTPFilters`);
//!   without it Envoy answers HTTP/1.0 requests 426 (details `low_version`);
//! - `common_http_protocol_options {idle_timeout}` for the proxy's `IDLE_TIMEOUT` metadata
//!   (listener_builder.go, `buildHTTPConnectionManager`; ProxyConfig
//!   `connectionSettings.httpIdleTimeout` writes the same, connection_settings.go
//!   `applyConnectionSettingsToHCM`): the HTTP connection inside a tunnel is closed once it
//!   has had no request in flight for that long;
//! - `common_http_protocol_options {max_connection_duration}` for ProxyConfig
//!   `connectionSettings.httpMaxConnectionDuration` (`applyConnectionSettingsToHCM`): the
//!   connection is drained that long after it began, requests in flight finishing;
//! - `common_http_protocol_options {max_stream_duration}` for ProxyConfig
//!   `connectionSettings.httpMaxStreamDuration` (`applyConnectionSettingsToHCM`): a request
//!   still going that long after its headers is answered 408 before its response starts,
//!   reset after;
//! - `common_http_protocol_options {headers_with_underscores_action}` for ProxyConfig
//!   `connectionSettings.httpHeadersWithUnderscoresAction` (`applyConnectionSettingsToHCM`,
//!   `toEnvoyHeadersWithUnderscoresAction`): such request headers dropped, or the request
//!   refused (HTTP/1.1 400, HTTP/2 stream reset).

mod istiod;

use std::time::{Duration, Instant};

use istiod::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every HTTP chain's connection manager gets `edit` and a stdout access log.
async fn waypoint(edit: impl Fn(&mut serde_json::Value)) -> World {
    start(|ls, _, _| {
        fixture::edit_listener(ls, |json| {
            for chain in json["filter_chains"].as_array_mut().unwrap() {
                let hcm = &mut chain["filters"].as_array_mut().unwrap().last_mut().unwrap()
                    ["typed_config"];
                if hcm.get("http_filters").is_some() {
                    edit(hcm);
                    hcm["access_log"] = json!([{"name": "envoy.access_loggers.file", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                        "path": "/dev/stdout",
                        "log_format": {"text_format_source": {"inline_string":
                            "HCM %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"}}}}]);
                }
            }
        });
    })
    .await
}

/// Waits (at most ten seconds) until the pod's endpoints are in: the waypoint is ready once
/// listeners and clusters are, and EDS may come a moment later.
async fn served(w: &World) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(w, 8100, "/get").await.status != 200 {
        assert!(Instant::now() < deadline, "never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

/// Writes `request` as raw bytes into a tunnel to the VIP's port 8100 and reads until the
/// waypoint closes it.
async fn raw(w: &World, request: &str) -> String {
    let conn = w.client.connect().await.unwrap();
    let mut tunnel = conn
        .tunnel(SocketAddr::new(VIP.parse().unwrap(), 8100), &[])
        .await
        .unwrap();
    tunnel.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tunnel.read_to_end(&mut buf))
        .await
        .expect("answered and closed in time")
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn http_10_is_answered_426_without_accept_http_10() {
    // istiod's connection manager without the HTTP10 metadata: no http_protocol_options.
    let w = waypoint(|_| {}).await;
    served(&w).await;
    let response = raw(&w, &format!("GET /get HTTP/1.0\r\nHost: {HOST}\r\n\r\n")).await;
    assert!(
        response.starts_with("HTTP/1.0 426 Upgrade Required\r\n"),
        "{response}"
    );
    assert!(response.ends_with("\r\n\r\n"), "no body: {response}");
    logged(&w, "HCM /get HTTP/1.0 426 - low_version").await;
    // Without a Host as well (Envoy checks the version first).
    let response = raw(&w, "GET /get HTTP/1.0\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.0 426"), "{response}");
    // HTTP/1.1 is served as before.
    assert_eq!(get(&w, 8100, "/get").await.status, 200);
}

#[tokio::test]
async fn http_10_is_served_with_accept_http_10() {
    let w = waypoint(|hcm| hcm["http_protocol_options"] = json!({"accept_http_10": true})).await;
    served(&w).await;
    let response = raw(&w, &format!("GET /get HTTP/1.0\r\nHost: {HOST}\r\n\r\n")).await;
    assert!(response.starts_with("HTTP/1.0 200 OK\r\n"), "{response}");
    assert!(response.contains("\"pod\":\"httpbin-"), "{response}");
    logged(&w, "HCM /get HTTP/1.0 200 - via_upstream").await;
    // No Host and no default host: refused, as before.
    let response = raw(&w, "GET /get HTTP/1.0\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.0 400"), "{response}");
}

#[tokio::test]
async fn default_host_for_http_10_fills_a_missing_host() {
    // Envoy's field, which istiod never writes: accepted and applied as Envoy applies it.
    let w = waypoint(|hcm| {
        hcm["http_protocol_options"] =
            json!({"accept_http_10": true, "default_host_for_http_10": HOST})
    })
    .await;
    served(&w).await;
    let response = raw(&w, "GET /get HTTP/1.0\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.0 200 OK\r\n"), "{response}");
    assert!(
        response.contains(&format!("\"host\":\"{HOST}\"")),
        "{response}"
    );
}

const IDLE: Duration = Duration::from_millis(600);

fn idle_timeout(hcm: &mut serde_json::Value) {
    hcm["common_http_protocol_options"] = json!({"idle_timeout": "0.600s"});
}

/// How long after `since` the connection `closed` reports closed, polled for at most
/// `max`; `None` when it stayed open.
async fn closed_after(
    since: Instant,
    max: Duration,
    closed: impl Fn() -> bool,
) -> Option<Duration> {
    while since.elapsed() < max {
        if closed() {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    closed().then(|| since.elapsed())
}

fn request(path: &str) -> http::Request<filters::body::Body> {
    http::Request::get(path)
        .header("host", HOST)
        .body(filters::body::empty())
        .unwrap()
}

async fn http1(w: &World) -> hyper::client::conn::http1::SendRequest<filters::body::Body> {
    let conn = w.client.connect().await.unwrap();
    conn.http1(SocketAddr::new(VIP.parse().unwrap(), 8100))
        .await
        .unwrap()
}

#[tokio::test]
async fn an_idle_http11_connection_is_closed_after_the_idle_timeout() {
    let w = waypoint(idle_timeout).await;
    served(&w).await;
    let mut http = http1(&w).await;
    let resp = http.send_request(request("/get")).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    let idle = Instant::now();
    let took = closed_after(idle, Duration::from_secs(5), || http.is_closed())
        .await
        .expect("closed within 5 s");
    assert!(
        took >= IDLE - Duration::from_millis(100) && took < Duration::from_secs(3),
        "closed {took:?} after its last response"
    );
}

#[tokio::test]
async fn a_busy_http11_connection_is_kept_past_the_idle_timeout() {
    let w = waypoint(idle_timeout).await;
    served(&w).await;
    let mut http = http1(&w).await;
    // Six chunks 300 ms apart: 1.5 s with a request in flight, past the idle timeout.
    let t = Instant::now();
    let resp = http
        .send_request(request("/drip?n=6&gap=300ms"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"xxxxxx");
    assert!(t.elapsed() > IDLE * 2);
    // The same connection serves the next request.
    assert!(!http.is_closed());
    let resp = http.send_request(request("/get")).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    let took = closed_after(Instant::now(), Duration::from_secs(5), || http.is_closed()).await;
    assert!(took.is_some(), "idle afterwards, then closed");
}

#[tokio::test]
async fn without_an_idle_timeout_the_connection_stays_open() {
    let w = waypoint(|_| {}).await;
    served(&w).await;
    let mut http = http1(&w).await;
    let resp = http.send_request(request("/get")).await.unwrap();
    resp.into_body().collect().await.unwrap();
    let took = closed_after(Instant::now(), IDLE * 3, || http.is_closed()).await;
    assert_eq!(took, None, "closed without an idle timeout");
    let resp = http.send_request(request("/get")).await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout_and_a_busy_one_is_not() {
    let w = waypoint(idle_timeout).await;
    served(&w).await;
    let conn = w.client.connect().await.unwrap();
    let mut h2 = conn
        .h2c(SocketAddr::new(VIP.parse().unwrap(), 8100))
        .await
        .unwrap();
    // Busy for 1.5 s: not closed.
    let resp = h2
        .send_request(request("/drip?n=6&gap=300ms"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"xxxxxx");
    assert!(!h2.is_closed());
    let resp = h2.send_request(request("/get")).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    // Idle: GOAWAY, then the connection ends.
    let idle = Instant::now();
    let took = closed_after(idle, Duration::from_secs(5), || h2.is_closed())
        .await
        .expect("closed within 5 s");
    assert!(
        took >= IDLE - Duration::from_millis(100) && took < Duration::from_secs(3),
        "closed {took:?} after its last response"
    );
}

#[tokio::test]
async fn other_common_options_are_nacked_by_field() {
    // None that istiod writes for a waypoint: `max_headers_count`.
    let w = waypoint(|hcm| {
        hcm["common_http_protocol_options"] =
            json!({"idle_timeout": "60s", "max_headers_count": 50})
    })
    .await;
    let e = nack(&w).await;
    assert!(
        e.contains("main_internal") && e.contains("common_http_protocol_options.max_headers_count"),
        "{e}"
    );
}

const MAX_DURATION: Duration = Duration::from_millis(800);

fn max_duration(hcm: &mut serde_json::Value) {
    hcm["common_http_protocol_options"] = json!({"max_connection_duration": "0.800s"});
}

#[tokio::test]
async fn an_http11_connection_is_closed_at_its_maximum_duration_between_requests() {
    let w = waypoint(max_duration).await;
    served(&w).await;
    let mut http = http1(&w).await;
    let began = Instant::now();
    // Requests 100 ms apart keep it busy: it is closed between two of them anyway.
    let mut served = 0;
    while began.elapsed() < Duration::from_secs(5) && !http.is_closed() {
        if http.ready().await.is_err() {
            break;
        }
        match http.send_request(request("/get")).await {
            Ok(resp) => {
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.unwrap();
                served += 1;
            }
            Err(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = closed_after(began, Duration::from_secs(5), || http.is_closed())
        .await
        .expect("closed");
    assert!(
        took >= MAX_DURATION && took < MAX_DURATION + Duration::from_secs(2),
        "closed after {took:?}"
    );
    assert!(served >= 3, "served {served}");
}

#[tokio::test]
async fn a_request_in_flight_at_the_maximum_duration_finishes_then_the_connection_closes() {
    let w = waypoint(max_duration).await;
    served(&w).await;
    let mut http = http1(&w).await;
    let began = Instant::now();
    // 1.5 s of response: past the maximum duration, well within Envoy's 5 s drain period.
    let resp = http
        .send_request(request("/drip?n=6&gap=300ms"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"xxxxxx");
    assert!(began.elapsed() > MAX_DURATION);
    let took = closed_after(Instant::now(), Duration::from_secs(2), || http.is_closed()).await;
    assert!(took.is_some(), "closed after the response");

    // HTTP/2: GOAWAY at the maximum duration; the stream in flight completes.
    let conn = w.client.connect().await.unwrap();
    let mut h2 = conn
        .h2c(SocketAddr::new(VIP.parse().unwrap(), 8100))
        .await
        .unwrap();
    let began = Instant::now();
    let resp = h2
        .send_request(request("/drip?n=6&gap=300ms"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"xxxxxx");
    let took = closed_after(began, Duration::from_secs(5), || h2.is_closed())
        .await
        .expect("closed");
    assert!(took < Duration::from_secs(4), "closed after {took:?}");
}

fn max_stream_duration(hcm: &mut serde_json::Value) {
    hcm["common_http_protocol_options"] = json!({"max_stream_duration": "0.800s"});
}

#[tokio::test]
async fn a_request_over_its_maximum_duration_gets_408_before_its_response() {
    let w = waypoint(max_stream_duration).await;
    served(&w).await;
    let t = Instant::now();
    // The pod answers after 10 s; the route has no timeout (istiod's 0s).
    let a = get(&w, 8100, "/hang?delay=10s").await;
    let took = t.elapsed();
    assert_eq!(a.status, 408);
    assert_eq!(&a.body[..], b"downstream duration timeout");
    assert!(
        took >= MAX_DURATION && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
    logged(
        &w,
        "HCM /hang?delay=10s HTTP/1.1 408 - max_duration_timeout",
    )
    .await;
}

#[tokio::test]
async fn a_response_still_streaming_at_the_maximum_duration_is_reset() {
    let w = waypoint(max_stream_duration).await;
    served(&w).await;
    let mut http = http1(&w).await;
    // Chunks 300 ms apart: never idle, but 1.5 s long.
    let resp = http
        .send_request(request("/drip?n=6&gap=300ms"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let t = Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("the stream ended");
    assert!(body.is_err(), "the stream was reset, not completed");
    assert!(
        t.elapsed() < Duration::from_millis(1400),
        "{:?}",
        t.elapsed()
    );
    logged(
        &w,
        "HCM /drip?n=6&gap=300ms HTTP/1.1 200 - max_duration_timeout",
    )
    .await;
    // A request within the duration completes.
    assert_eq!(get(&w, 8100, "/drip?n=2&gap=100ms").await.status, 200);
}

fn underscores(action: &'static str) -> impl Fn(&mut serde_json::Value) {
    move |hcm| {
        hcm["common_http_protocol_options"] = json!({"headers_with_underscores_action": action})
    }
}

#[tokio::test]
async fn header_names_with_underscores_are_dropped_with_drop_header() {
    let w = waypoint(underscores("DROP_HEADER")).await;
    served(&w).await;
    let a = send(
        &w,
        8100,
        "GET",
        "/get",
        &[("x_under", "1"), ("x-dash", "2")],
    )
    .await;
    assert_eq!(a.status, 200);
    let headers = a.echo()["headers"].clone();
    let names: Vec<String> = headers
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.to_ascii_lowercase())
        .collect();
    assert!(!names.contains(&"x_under".to_string()), "{headers}");
    assert!(names.contains(&"x-dash".to_string()), "{headers}");
}

#[tokio::test]
async fn header_names_with_underscores_refuse_the_request_with_reject_request() {
    let w = waypoint(underscores("REJECT_REQUEST")).await;
    served(&w).await;
    // HTTP/1.1: 400, then the connection closes.
    let response = raw(
        &w,
        &format!("GET /get HTTP/1.1\r\nHost: {HOST}\r\nx_under: 1\r\n\r\n"),
    )
    .await;
    assert!(
        response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{response}"
    );
    assert!(
        response
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{response}"
    );
    logged(&w, "HCM /get HTTP/1.1 400 DPE http1.unexpected_underscore").await;
    // HTTP/2: the stream is reset; the connection serves the next one.
    let conn = w.client.connect().await.unwrap();
    let mut h2 = conn
        .h2c(SocketAddr::new(VIP.parse().unwrap(), 8100))
        .await
        .unwrap();
    let req = http::Request::get("/get")
        .header("host", HOST)
        .header("x_under", "1")
        .body(filters::body::empty())
        .unwrap();
    let e = h2.send_request(req).await.expect_err("reset");
    let reason = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .and_then(h2::Error::reason);
    assert_eq!(reason, Some(h2::Reason::PROTOCOL_ERROR), "{e:?}");
    let resp = h2.send_request(request("/get")).await.unwrap();
    assert_eq!(resp.status(), 200);
    // Without underscores: served.
    assert_eq!(
        send(&w, 8100, "GET", "/get", &[("x-dash", "2")])
            .await
            .status,
        200
    );
}
