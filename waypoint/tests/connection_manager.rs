//! HTTP/1.0 and the connection idle timeout from the local configuration: MeshConfig
//! `defaultConfig` (ProxyConfig) `proxyMetadata` `ISTIO_META_HTTP10` / `ISTIO_META_IDLE_TIMEOUT`
//! (node metadata istiod turns into `accept_http_10` and `common_http_protocol_options
//! .idle_timeout`) and `connectionSettings.httpIdleTimeout` / `httpStreamIdleTimeout` /
//! `httpMaxConnectionDuration` / `httpMaxStreamDuration` / `httpHeadersWithUnderscoresAction`,
//! as istiod applies them (`istiod_connection_manager.rs` serves their xDS form).

mod common;

use std::time::{Duration, Instant};

use common::*;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn harness(mesh: &str) -> Harness {
    Harness::start(Spec {
        extra_yaml: if mesh.is_empty() {
            vec![]
        } else {
            vec![mesh_config(mesh)]
        },
        ..Spec::default()
    })
    .await
}

/// An HTTP/1.0 request as raw bytes through a tunnel; what came back before the close.
async fn http_10(h: &Harness) -> String {
    let conn = h.client().connect().await.unwrap();
    let mut tunnel = conn.tunnel(authority(80), &[]).await.unwrap();
    tunnel
        .write_all(b"GET /get HTTP/1.0\r\nHost: echo.default.svc.cluster.local\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tunnel.read_to_end(&mut buf))
        .await
        .expect("answered and closed in time")
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn http_10_is_answered_426_by_default() {
    let h = harness("").await;
    let response = http_10(&h).await;
    assert!(response.starts_with("HTTP/1.0 426"), "{response}");
}

#[tokio::test]
async fn proxy_metadata_http10_serves_http_10() {
    let h = harness("defaultConfig:\n  proxyMetadata:\n    ISTIO_META_HTTP10: \"1\"\n").await;
    let response = http_10(&h).await;
    assert!(response.starts_with("HTTP/1.0 200 OK\r\n"), "{response}");
    assert!(response.contains("\"proto\":\"HTTP/1.1\""), "{response}");
}

/// How long after its last response an HTTP/1.1 connection through the waypoint stayed
/// open, waiting at most `max`; `None` when it did not close.
async fn open_for(h: &Harness, path: &str, max: Duration) -> Option<Duration> {
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let resp = http.send_request(get(path)).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    let since = Instant::now();
    while since.elapsed() < max {
        if http.is_closed() {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test]
async fn proxy_metadata_idle_timeout_closes_idle_connections() {
    let h = harness("defaultConfig:\n  proxyMetadata:\n    ISTIO_META_IDLE_TIMEOUT: 600ms\n").await;
    let took = open_for(&h, "/get", Duration::from_secs(5))
        .await
        .expect("closed");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // Busy past the timeout: the request completes.
    let took = open_for(&h, "/drip?n=5&gap=300ms", Duration::from_secs(5)).await;
    assert!(took.is_some());
}

#[tokio::test]
async fn connection_settings_set_the_idle_and_stream_idle_timeouts() {
    // httpIdleTimeout replaces IDLE_TIMEOUT (applyConnectionSettingsToHCM runs last).
    let h = harness(
        "defaultConfig:\n  proxyMetadata:\n    ISTIO_META_IDLE_TIMEOUT: 1h\n  connectionSettings:\n    httpIdleTimeout: 0.6s\n    httpStreamIdleTimeout: 0.8s\n",
    )
    .await;
    let took = open_for(&h, "/get", Duration::from_secs(5))
        .await
        .expect("closed");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The stream idle timeout: a pod that answers after 5 s gets 408.
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let t = Instant::now();
    let resp = http.send_request(get("/get?delay=5s")).await.unwrap();
    assert_eq!(resp.status(), 408);
    assert_eq!(&body_bytes(resp).await[..], b"stream timeout");
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
}

#[tokio::test]
async fn connection_settings_max_stream_duration_ends_long_requests() {
    let h =
        harness("defaultConfig:\n  connectionSettings:\n    httpMaxStreamDuration: 0.8s\n").await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let t = Instant::now();
    let resp = http.send_request(get("/get?delay=5s")).await.unwrap();
    assert_eq!(resp.status(), 408);
    assert_eq!(&body_bytes(resp).await[..], b"downstream duration timeout");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[tokio::test]
async fn connection_settings_max_connection_duration_closes_busy_connections() {
    let h = harness("defaultConfig:\n  connectionSettings:\n    httpMaxConnectionDuration: 0.8s\n")
        .await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let began = Instant::now();
    // Requests 100 ms apart: never idle, closed between two of them at 0.8 s.
    let mut served = 0;
    while began.elapsed() < Duration::from_secs(5) && http.ready().await.is_ok() {
        match http.send_request(get("/get")).await {
            Ok(resp) => {
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.unwrap();
                served += 1;
            }
            Err(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !http.is_closed() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = began.elapsed();
    assert!(http.is_closed());
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    assert!(served >= 3, "served {served}");
}

#[tokio::test]
async fn connection_settings_headers_with_underscores_action_refuses_or_drops() {
    let h = harness(
        "defaultConfig:\n  connectionSettings:\n    httpHeadersWithUnderscoresAction: HEADERS_WITH_UNDERSCORES_REJECT_REQUEST\n",
    )
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let req = http::Request::get("/get")
        .header("host", "echo.default.svc.cluster.local")
        .header("x_under", "1")
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 400);
    let h = harness(
        "defaultConfig:\n  connectionSettings:\n    httpHeadersWithUnderscoresAction: HEADERS_WITH_UNDERSCORES_DROP_HEADER\n",
    )
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let req = http::Request::get("/get")
        .header("host", "echo.default.svc.cluster.local")
        .header("x_under", "1")
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let echo = json(resp).await;
    let names: Vec<String> = echo["headers"]
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.to_ascii_lowercase())
        .collect();
    assert!(!names.contains(&"x_under".to_string()), "{echo}");
}

#[tokio::test]
async fn without_them_connections_stay_open() {
    let h = harness("").await;
    assert_eq!(open_for(&h, "/get", Duration::from_secs(2)).await, None);
}

#[tokio::test]
async fn connection_settings_not_implemented_are_refused_by_name() {
    let (code, out) = check_with(&mesh_config(
        "defaultConfig:\n  connectionSettings:\n    httpRequestTimeout: 60s\n",
    ))
    .await;
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("data.mesh.defaultConfig.connectionSettings.httpRequestTimeout"),
        "{out}"
    );
    let (code, out) = check_with(&mesh_config(
        "defaultConfig:\n  proxyMetadata:\n    ISTIO_META_IDLE_TIMEOUT: soon\n",
    ))
    .await;
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("data.mesh.defaultConfig.proxyMetadata.ISTIO_META_IDLE_TIMEOUT"),
        "{out}"
    );
}
