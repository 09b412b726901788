//! HTTP/1.1 header-case preservation from the local configuration: MeshConfig
//! `defaultConfig.proxyHeaders.preserveHttp1HeaderCase` (ProxyConfig), as istiod applies it
//! (`istiod_header_case.rs` serves its xDS form), seen in the bytes a raw client and pod
//! exchange through the waypoint.

mod common;

use common::*;
use testkit::raw_http::RawHttpApp;
use testkit::ztunnel::App;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The request heads the pod saw and the response the client got, for one request with
/// `X-Custom-Header` under MeshConfig `mesh` (none when empty).
async fn exchange(mesh: &str) -> (Vec<String>, String) {
    let app = RawHttpApp::start().await.unwrap();
    let h = Harness::start(Spec {
        apps: [(8080, App::Forward(app.addr))].into(),
        extra_yaml: if mesh.is_empty() {
            vec![]
        } else {
            vec![mesh_config(mesh)]
        },
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut tunnel = conn.tunnel(authority(80), &[]).await.unwrap();
    tunnel
        .write_all(b"GET /get HTTP/1.1\r\nHost: echo.default.svc.cluster.local\r\nX-Custom-Header: v\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tunnel.read_to_end(&mut buf),
    )
    .await
    .expect("answered in time")
    .unwrap();
    (app.heads(), String::from_utf8_lossy(&buf).into_owned())
}

#[tokio::test]
async fn proxy_config_preserve_http1_header_case_keeps_header_names_as_sent() {
    let (heads, response) =
        exchange("defaultConfig:\n  proxyHeaders:\n    preserveHttp1HeaderCase: true\n").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("\r\nX-Reply-Header: yes\r\n"),
        "{response}"
    );
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(heads[0].contains("\r\nX-Custom-Header: v\r\n"), "{heads:?}");
}

#[tokio::test]
async fn without_it_header_names_go_lower_case() {
    let (heads, response) = exchange("").await;
    assert!(
        response.contains("\r\nx-reply-header: yes\r\n"),
        "{response}"
    );
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(heads[0].contains("\r\nx-custom-header: v\r\n"), "{heads:?}");
}
