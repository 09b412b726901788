//! HTTP/1.1 header-case preservation as istiod writes it for ProxyConfig
//! `proxyHeaders.preserveHttp1HeaderCase: true`: the `preserve_case` stateful formatter in
//! the connection manager's `http_protocol_options.header_key_format`
//! (pilot/pkg/networking/core/listener_builder.go, buildHTTPConnectionManager) and in the
//! `explicit_http_config.http_protocol_options` of an `http` port's cluster
//! (cluster_builder.go, setUpstreamProtocol with preserveCaseFormatterConfig), served over
//! Delta ADS to a real waypoint process; a raw HTTP/1.1 client and pod see the bytes.

mod istiod;

use std::time::Duration;

use istiod::*;
use serde_json::json;
use testkit::raw_http::RawHttpApp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn preserve_case_format() -> serde_json::Value {
    json!({"stateful_formatter": {"name": "preserve_case", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.http.header_formatters.preserve_case.v3.PreserveCaseFormatterConfig"}}})
}

/// Sends a request with `X-Custom-Header` through a tunnel to the VIP's port 8100, as raw
/// bytes; the response head as received.
async fn raw_request(w: &World) -> String {
    let conn = w.client.connect().await.unwrap();
    let mut tunnel = conn
        .tunnel(SocketAddr::new(VIP.parse().unwrap(), 8100), &[])
        .await
        .unwrap();
    let req = format!(
        "GET /get HTTP/1.1\r\nHost: {HOST}\r\nX-Custom-Header: v\r\nconnection: close\r\n\r\n"
    );
    tunnel.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tunnel.read_to_end(&mut buf))
        .await
        .expect("answered in time")
        .unwrap();
    String::from_utf8_lossy(&buf).into_owned()
}

async fn world(preserve: bool) -> (World, RawHttpApp) {
    let app = RawHttpApp::start().await.unwrap();
    let w = start_with_pod(Some(App::Forward(app.addr)), |ls, cs, es, extra| {
        set_only_endpoint(es, CLUSTER_8100, extra.unwrap());
        if !preserve {
            return;
        }
        fixture::edit_listener(ls, |json| {
            for chain in json["filter_chains"].as_array_mut().unwrap() {
                let hcm = &mut chain["filters"].as_array_mut().unwrap().last_mut().unwrap()
                    ["typed_config"];
                if hcm.get("http_filters").is_some() {
                    hcm["http_protocol_options"] =
                        json!({"header_key_format": preserve_case_format()});
                }
            }
        });
        edit_cluster(cs, CLUSTER_8100, |c| {
            c["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http_protocol_options": {
                        "header_key_format": preserve_case_format()}}}});
        });
    })
    .await;
    (w, app)
}

#[tokio::test]
async fn header_case_is_preserved_both_ways_when_configured() {
    let (w, app) = world(true).await;
    let response = raw_request(&w).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("\r\nX-Reply-Header: yes\r\n"),
        "{response}"
    );
    let heads = app.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].contains("\r\nX-Custom-Header: v\r\n"),
        "{}",
        heads[0]
    );
}

#[tokio::test]
async fn header_names_are_lower_case_by_default() {
    let (w, app) = world(false).await;
    let response = raw_request(&w).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("\r\nx-reply-header: yes\r\n"),
        "{response}"
    );
    let heads = app.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].contains("\r\nx-custom-header: v\r\n"),
        "{}",
        heads[0]
    );
}

#[tokio::test]
async fn other_header_formats_are_nacked_by_field() {
    let w = start(|_, cs, _| {
        edit_cluster(cs, CLUSTER_8100, |c| {
            c["typed_extension_protocol_options"] = json!({
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http_protocol_options": {
                        "header_key_format": {"proper_case_words": {}}}}}});
        })
    })
    .await;
    let e = nack(&w).await;
    assert!(
        e.contains(CLUSTER_8100)
            && e.contains("explicit_http_config.http_protocol_options.header_key_format"),
        "{e}"
    );
}
