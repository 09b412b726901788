//! Route shapes istiod generates for ordinary Gateway API and Istio objects (rewrites,
//! direct responses, per-route CORS and fault, retries with bodies, path normalization),
//! served over Delta ADS to a real waypoint process and checked over HBONE.

mod istiod;

use std::time::{Duration, Instant};

use istiod::*;
use serde_json::json;

#[tokio::test]
async fn httproute_rewrites_become_regex_rewrites_and_apply() {
    let w = start(|ls, _, _| {
        fixture::prepend_routes(
            ls,
            8100,
            &[
                // URLRewrite ReplaceFullPath /replaced (conversion.go createRewriteFilter,
                // route.go applyHTTPRouteDestination).
                json!({"name": "default.full.0", "match": {"path_separated_prefix": "/full", "case_sensitive": true},
                       "route": {"cluster": CLUSTER_8100,
                                 "regex_rewrite": {"pattern": {"regex": "/.*"}, "substitution": "/replaced"}}}),
                // URLRewrite ReplacePrefixMatch "/" on PathPrefix /strip.
                json!({"name": "default.strip.0", "match": {"path_separated_prefix": "/strip", "case_sensitive": true},
                       "route": {"cluster": CLUSTER_8100,
                                 "regex_rewrite": {"pattern": {"regex": "^/strip(/?)(.*)"}, "substitution": "/\\2"}}}),
            ],
        );
    })
    .await;
    let full = get(&w, 8100, "/full/deep/path?keep=1").await;
    assert_eq!(full.status, 200);
    assert_eq!(full.echo()["path"], "/replaced?keep=1");
    let strip = get(&w, 8100, "/strip/a/b?x=1").await;
    assert_eq!(strip.echo()["path"], "/a/b?x=1");
    assert_eq!(get(&w, 8100, "/strip").await.echo()["path"], "/");
    // Routes after them still serve as before.
    assert_eq!(get(&w, 8100, "/get").await.echo()["path"], "/get");
}

#[tokio::test]
async fn direct_responses_answer_without_reaching_the_pod() {
    let w = start(|ls, _, _| {
        fixture::prepend_routes(
            ls,
            8100,
            &[
                // An HTTPRoute rule whose backendRefs all have weight 0 (conversion.go
                // convertHTTPRoute: DirectResponse{Status: 500}, no body).
                json!({"name": "default.zero.0", "match": {"path_separated_prefix": "/zero"},
                       "direct_response": {"status": 500}}),
                // A VirtualService directResponse with a body (route.go ApplyDirectResponse).
                json!({"name": "vs.teapot", "match": {"prefix": "/teapot"},
                       "direct_response": {"status": 418, "body": {"inline_string": "short and stout"}},
                       "response_headers_to_add": [{"header": {"key": "x-route", "value": "teapot"}}]}),
            ],
        );
    })
    .await;
    let zero = get(&w, 8100, "/zero").await;
    assert_eq!(zero.status, 500);
    assert!(zero.body.is_empty(), "{:?}", zero.body);
    let tea = get(&w, 8100, "/teapot").await;
    assert_eq!(tea.status, 418);
    assert_eq!(&tea.body[..], b"short and stout");
    assert_eq!(tea.content_type.as_deref(), Some("text/plain"));
    assert_eq!(get(&w, 8100, "/get").await.status, 200);
}

#[tokio::test]
async fn an_oversized_direct_response_is_nacked_and_the_last_good_listener_serves() {
    let w = start(|_, _, _| {}).await;
    assert_eq!(get(&w, 8100, "/get").await.status, 200);
    let mut ls = w.listeners.clone();
    fixture::prepend_routes(
        &mut ls,
        8100,
        &[json!({"name": "vs.big", "match": {"prefix": "/"},
                 "direct_response": {"status": 200, "body": {"inline_string": "x".repeat(5000)}}})],
    );
    w.server.set(LISTENER, ls);
    let error = nack(&w).await;
    assert!(error.contains("direct_response.body"), "{error}");
    assert!(error.contains("5000 bytes"), "{error}");
    // Envoy's semantics: the listener update is rejected whole; the last good one serves.
    assert_eq!(get(&w, 8100, "/get").await.echo()["path"], "/get");
}

/// The CORS policy istiod writes for an HTTPRoute `CORS` filter (conversion.go
/// createCorsFilter, route.go TranslateCORSPolicy): exact and regex origins, methods and
/// headers comma-joined, max age in seconds, 100% enabled, preflights never forwarded.
fn cors_route() -> serde_json::Value {
    json!({"name": "default.cors.0", "match": {"path_separated_prefix": "/cors"},
           "route": {"cluster": CLUSTER_8100},
           "typed_per_filter_config": {"envoy.filters.http.cors": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
               "allow_origin_string_match": [{"exact": "https://a.example"},
                                             {"safe_regex": {"regex": "^https://[a-z]+\\.b\\.example$"}}],
               "allow_methods": "GET,POST",
               "allow_headers": "x-custom",
               "expose_headers": "x-exposed",
               "max_age": "600",
               "allow_credentials": true,
               "filter_enabled": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
               "forward_not_matching_preflights": false}}})
}

#[tokio::test]
async fn per_route_cors_from_istiod_answers_preflights_and_decorates_responses() {
    let w = start(|ls, _, _| fixture::prepend_routes(ls, 8100, &[cors_route()])).await;
    let pre = send(
        &w,
        8100,
        "OPTIONS",
        "/cors",
        &[
            ("origin", "https://a.example"),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    assert_eq!(pre.status, 200);
    assert!(pre.body.is_empty(), "answered by the waypoint, not the pod");
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("https://a.example")
    );
    assert!(pre
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert_eq!(pre.header("access-control-allow-headers"), Some("x-custom"));
    assert_eq!(pre.header("access-control-max-age"), Some("600"));
    assert_eq!(pre.header("access-control-allow-credentials"), Some("true"));

    let simple = send(
        &w,
        8100,
        "GET",
        "/cors",
        &[("origin", "https://z.b.example")],
    )
    .await;
    assert_eq!(simple.echo()["path"], "/cors");
    assert_eq!(
        simple.header("access-control-allow-origin"),
        Some("https://z.b.example")
    );
    assert_eq!(
        simple.header("access-control-expose-headers"),
        Some("x-exposed")
    );

    let stranger = send(
        &w,
        8100,
        "GET",
        "/cors",
        &[("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(stranger.status, 200);
    assert_eq!(stranger.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn per_route_faults_from_istiod_abort_and_delay() {
    // VirtualService `fault` (route.go TranslateFault): percentages over MILLION.
    let fault = |name: &str, prefix: &str, fault: serde_json::Value| {
        json!({"name": name, "match": {"prefix": prefix}, "route": {"cluster": CLUSTER_8100},
               "typed_per_filter_config": {"envoy.filters.http.fault": fault}})
    };
    let all = json!({"numerator": 1_000_000, "denominator": "MILLION"});
    let w = start(|ls, _, _| {
        fixture::prepend_routes(
            ls,
            8100,
            &[
                fault("vs.abort", "/abort", json!({
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                    "abort": {"http_status": 503, "percentage": all}})),
                fault("vs.grpc", "/grpc", json!({
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                    "abort": {"grpc_status": 14, "percentage": all}})),
                fault("vs.never", "/never", json!({
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                    "abort": {"http_status": 503, "percentage": {"numerator": 0, "denominator": "MILLION"}}})),
                fault("vs.delay", "/delay", json!({
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                    "delay": {"fixed_delay": "0.3s", "percentage": all}})),
            ],
        )
    })
    .await;
    let aborted = get(&w, 8100, "/abort").await;
    assert_eq!(aborted.status, 503);
    assert_eq!(&aborted.body[..], b"fault filter abort");
    let grpc = send(
        &w,
        8100,
        "POST",
        "/grpc",
        &[("content-type", "application/grpc")],
    )
    .await;
    assert_eq!(grpc.status, 200);
    assert_eq!(grpc.header("grpc-status"), Some("14"));
    assert_eq!(get(&w, 8100, "/never").await.echo()["path"], "/never");
    let started = Instant::now();
    assert_eq!(get(&w, 8100, "/delay").await.echo()["path"], "/delay");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "not delayed"
    );
}

#[tokio::test]
async fn per_route_configuration_of_other_filters_is_nacked_naming_it() {
    let w = start(|_, _, _| {}).await;
    let mut ls = w.listeners.clone();
    let mut route = cors_route();
    route["typed_per_filter_config"]["envoy.filters.http.lua"] = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"});
    fixture::prepend_routes(&mut ls, 8100, &[route]);
    w.server.set(LISTENER, ls);
    let error = nack(&w).await;
    assert!(
        error.contains("typed_per_filter_config[envoy.filters.http.lua]"),
        "{error}"
    );
    assert_eq!(get(&w, 8100, "/get").await.status, 200);
}

/// A pod app that reads the whole request body, counts the request, and answers 503: the
/// upstream that fails after it consumed the body.
async fn failing_app(hits: Arc<std::sync::atomic::AtomicUsize>) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let hits = hits.clone();
            tokio::spawn(async move {
                // One request per connection: headers, then Content-Length bytes.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len: usize = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let _ = s
                    .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_post_is_retried_with_its_body_to_another_pod() {
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = App::Forward(failing_app(hits.clone()).await);
    let w = start_with_pod(Some(app), |ls, _, es, bad| {
        // Port 8100 gets a second endpoint, the failing pod.
        add_endpoint(es, CLUSTER_8100, bad.unwrap());
        // istiod's retry policy (route/retry/retry.go) with 503 retriable, on /echo-body.
        fixture::prepend_routes(
            ls,
            8100,
            &[json!({"name": "default.post.0", "match": {"prefix": "/echo-body"},
                     "route": {"cluster": CLUSTER_8100, "retry_policy": {
                         "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
                         "num_retries": 2,
                         "retriable_status_codes": [503],
                         "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts",
                             "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
                         "host_selection_retry_max_attempts": 5}}})],
        );
    })
    .await;
    let payload = "the same body, every attempt ".repeat(200);
    for _ in 0..4 {
        let conn = w.client.connect().await.unwrap();
        let mut http = conn
            .http1(SocketAddr::new(VIP.parse().unwrap(), 8100))
            .await
            .unwrap();
        let req = http::Request::post("/echo-body")
            .header("host", HOST)
            .header("content-length", payload.len())
            .body(filters::body::full(payload.clone()))
            .unwrap();
        let resp = http.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, payload.as_bytes(), "the body arrived intact");
    }
    assert!(
        hits.load(std::sync::atomic::Ordering::Relaxed) >= 1,
        "the failing pod was tried (and the request retried elsewhere)"
    );
}

#[tokio::test]
async fn the_connection_managers_path_normalization_applies_before_authorization() {
    // MeshConfig pathNormalization MERGE_SLASHES: istiod sets normalize_path and
    // merge_slashes on every HTTP connection manager. Port 8000 denies /admin (RBAC).
    let w = start(|ls, _, _| {
        fixture::edit_listener(ls, |json| {
            for chain in json["filter_chains"].as_array_mut().unwrap() {
                let hcm = &mut chain["filters"][0]["typed_config"];
                if hcm.get("http_filters").is_some() {
                    hcm["merge_slashes"] = json!(true);
                }
            }
        })
    })
    .await;
    let conn = w.client.connect().await.unwrap();
    let mut http = conn
        .http1(SocketAddr::new(VIP.parse().unwrap(), 8000))
        .await
        .unwrap();
    let req = http::Request::get("//admin/x")
        .header("host", HOST)
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(req).await.unwrap();
    assert_eq!(
        resp.status(),
        403,
        "//admin is /admin once slashes are merged"
    );
    let _ = resp.into_body().collect().await;
    http.ready().await.unwrap();
    let req = http::Request::get("/a//b")
        .header("host", HOST)
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["path"], "/a/b", "the normalized path goes upstream");
}
