//! DestinationRule `connectionPool.tcp.connectTimeout` from the local configuration: an
//! upstream connection that is not open within it fails the request with 503 `UF`
//! (`connection_timeout`), as istiod's `connect_timeout` does over xDS
//! (`tests/istiod_connect_timeout.rs`), over real sockets.

mod common;

use std::time::{Duration, Instant};

use common::*;
use testkit::silent::SilentListener;
use testkit::ztunnel::App;

fn destination_rule(traffic_policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: echo\n  namespace: {NS}\nspec:\n  host: echo\n  trafficPolicy:\n{traffic_policy}"
    )
}

#[tokio::test]
async fn a_tls_handshake_that_never_completes_fails_after_the_connect_timeout() {
    // The pod's app accepts TCP and never answers; the waypoint originates TLS inside the
    // tunnel (DestinationRule `tls`), so the connection never opens.
    let silent = SilentListener::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let h = Harness::start(Spec {
        apps: [(8080, App::Forward(silent.addr))].into(),
        extra_yaml: vec![destination_rule(
            "    connectionPool:\n      tcp: {connectTimeout: 300ms}\n    tls: {mode: SIMPLE, insecureSkipVerify: true}\n",
        )],
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(8), http.send_request(get("/get")))
        .await
        .expect("answered long before the 10 s default")
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status(), 503);
    let body = String::from_utf8_lossy(&body_bytes(resp).await).into_owned();
    assert!(body.contains("reset reason: connection timeout"), "{body}");
    assert!(silent.accepted() >= 1, "the app was reached");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(4),
        "answered after {took:?}"
    );
}

#[tokio::test]
async fn without_a_connect_timeout_the_same_app_waits_longer() {
    // The control for the test above: the default (10 s) is not 300 ms.
    let silent = SilentListener::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let h = Harness::start(Spec {
        apps: [(8080, App::Forward(silent.addr))].into(),
        extra_yaml: vec![destination_rule(
            "    tls: {mode: SIMPLE, insecureSkipVerify: true}\n",
        )],
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(2), http.send_request(get("/get"))).await;
    assert!(waited.is_err(), "no answer within 2 s: {waited:?}");
}

#[tokio::test]
async fn a_zero_connect_timeout_is_refused_by_name() {
    let h = Harness::start(Spec::default()).await;
    let config = std::fs::read_to_string(&h.config).unwrap();
    let path = h.dir().join("with-extra.yaml");
    let rule = destination_rule("    connectionPool:\n      tcp: {connectTimeout: 0s}\n");
    std::fs::write(&path, format!("{config}\n---\n{rule}")).unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("spec.trafficPolicy.connectionPool.tcp.connectTimeout"),
        "{stdout}"
    );
}
