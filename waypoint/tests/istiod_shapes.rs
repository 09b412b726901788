//! Route, cluster and connection-manager shapes istiod generates for ordinary Gateway API,
//! Istio and Telemetry objects, served over Delta ADS to a real waypoint process and checked
//! over HBONE. Each shape follows istiod's source (pilot/pkg/config/kube/gateway/
//! conversion.go and pilot/pkg/networking/core/route/route.go for routes,
//! cluster_waypoint.go for subsets, model/telemetry.go and accesslog.go for telemetry).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use filters::model::Identity;
use hbone::tls::{CertStore, DevCa};
use http_body_util::BodyExt;
use serde_json::json;
use testkit::client::HboneClient;
use testkit::echo::EchoIdentity;
use testkit::istio_dump::{self as fixture, fake_pod, httpbin_dump, Named, VIP};
use testkit::process::{CertFiles, WaypointProcess};
use testkit::ztunnel::{App, FakeZtunnel, ZtunnelOptions};
use testkit::AdsServer;
use xds::ads::types::{CLUSTER, ENDPOINT, LISTENER};

const HOST: &str = "httpbin.default.svc.cluster.local";
const CLUSTER_8100: &str = "inbound-vip|8100|http|httpbin.default.svc.cluster.local";

struct World {
    _dir: tempfile::TempDir,
    /// The waypoint's stdout (access log lines).
    stdout: std::path::PathBuf,
    _serving: tokio::task::JoinHandle<()>,
    server: AdsServer,
    _wp: WaypointProcess,
    client: HboneClient,
    _pods: (FakeZtunnel, FakeZtunnel, Option<FakeZtunnel>),
    listeners: Named,
}

/// The httpbin waypoint of the shared config dump, with `edit` applied to its resources
/// (listeners, clusters, endpoints) before they are served.
async fn start(edit: impl FnOnce(&mut Named, &mut Named, &mut Named)) -> World {
    start_with_pod(None, |ls, cs, es, _| edit(ls, cs, es)).await
}

/// As [`start`], with a third pod serving `app` on 8080, whose IP `edit` gets.
async fn start_with_pod(
    app: Option<App>,
    edit: impl FnOnce(&mut Named, &mut Named, &mut Named, Option<IpAddr>),
) -> World {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("test").unwrap();
    let waypoint_id = Identity::new("cluster.local", "default", "waypoint");
    ca.issue(&waypoint_id).unwrap().write(dir.path()).unwrap();
    let pod = fake_pod(&ca, &waypoint_id, "httpbin-1").await;
    let canary = fake_pod(&ca, &waypoint_id, "httpbin-v2-1").await;
    let extra = match app {
        None => None,
        Some(app) => {
            let certs = ca
                .issue(&Identity::new("cluster.local", "default", "httpbin"))
                .unwrap();
            Some(
                FakeZtunnel::start_fresh(|ip| ZtunnelOptions {
                    ip,
                    certs: certs.certs().unwrap(),
                    allowed_caller: Some(waypoint_id.clone()),
                    who: EchoIdentity {
                        pod: "httpbin-extra".into(),
                        namespace: "default".into(),
                    },
                    apps: [(8080, app.clone())].into(),
                })
                .await
                .unwrap(),
            )
        }
    };
    let (mut ls, mut cs, mut es, _) =
        fixture::resources_with(&httpbin_dump(), pod.ip, Some(canary.ip), false);
    edit(&mut ls, &mut cs, &mut es, extra.as_ref().map(|p| p.ip));
    let server = AdsServer::default();
    server.set(LISTENER, ls.clone());
    server.set(CLUSTER, cs);
    server.set(ENDPOINT, es);
    let socket = dir.path().join("xds.sock");
    let serving = server.serve_unix(&socket).unwrap();
    let address = format!("unix:{}", socket.display());
    let stdout = dir.path().join("stdout.log");
    let mut wp = WaypointProcess::spawn_source(
        &std::path::PathBuf::from(env!("CARGO_BIN_EXE_waypoint")),
        &CertFiles::in_dir(dir.path()),
        &[
            "--xds-address",
            &address,
            "--gateway",
            "default/waypoint",
            "--log-level",
            "warn",
        ],
        Some(&stdout),
    )
    .unwrap();
    wp.wait_ready(Duration::from_secs(30)).await.unwrap();
    let client = HboneClient::new(
        wp.hbone,
        Arc::new(CertStore::fixed(
            ca.issue(&Identity::new("cluster.local", "default", "sleep"))
                .unwrap()
                .certs()
                .unwrap(),
        )),
        waypoint_id,
    );
    World {
        stdout,
        _dir: dir,
        _serving: serving,
        server,
        _wp: wp,
        client,
        _pods: (pod, canary, extra),
        listeners: ls,
    }
}

/// The first NACK the xDS server received (within ten seconds).
async fn nack(w: &World) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(e) = w.server.replies().into_iter().find_map(|r| r.error) {
            return e;
        }
        assert!(Instant::now() < deadline, "no NACK");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Answer {
    status: u16,
    content_type: Option<String>,
    headers: http::HeaderMap,
    body: bytes::Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

impl Answer {
    /// The echo app's report of the request it saw; panics when the pod was not reached.
    fn echo(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "not an echo answer ({}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

async fn get(w: &World, port: u16, path: &str) -> Answer {
    send(w, port, "GET", path, &[]).await
}

async fn send(w: &World, port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let conn = w.client.connect().await.unwrap();
    let mut http = conn
        .http1(SocketAddr::new(VIP.parse().unwrap(), port))
        .await
        .unwrap();
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", HOST);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = http
        .send_request(req.body(filters::body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let content_type = headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        headers,
        body,
    }
}

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
async fn destination_rule_subset_clusters_are_accepted_and_routable() {
    let w = start(|ls, cs, es| {
        // A DestinationRule with subset v2 on httpbin: istiod adds the subset cluster
        // whether or not a route names it; here a VirtualService-style route does.
        let canary_eps = "inbound-vip|8000|http|httpbin-v2.default.svc.cluster.local";
        let (c, e) = fixture::subset(cs, es, 8000, "v2", canary_eps);
        cs.push(c);
        es.push(e);
        fixture::prepend_routes(
            ls,
            8000,
            &[json!({"name": "vs.subset", "match": {"prefix": "/subset"},
                     "route": {"cluster": "inbound-vip|8000|http/v2|httpbin.default.svc.cluster.local"}})],
        );
    })
    .await;
    for _ in 0..8 {
        let a = get(&w, 8000, "/subset").await;
        assert_eq!(a.status, 200);
        assert_eq!(
            a.echo()["pod"],
            "httpbin-v2-1",
            "only the subset's endpoints"
        );
    }
    // The Service itself still balances over its own endpoints.
    assert_eq!(get(&w, 8000, "/get").await.echo()["pod"], "httpbin-1");
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

/// Adds the pod at `ip` (port 8080) to the endpoints of `cluster`, in the shape of its
/// first endpoint.
fn add_endpoint(es: &mut Named, cluster: &str, ip: IpAddr) {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    let (_, e) = es
        .iter_mut()
        .find(|(n, _)| n == cluster)
        .expect("endpoints");
    let cla = <ClusterLoadAssignment as prost::Message>::decode(e.value.as_slice()).unwrap();
    let mut json =
        xds::envoy::to_json("envoy.config.endpoint.v3.ClusterLoadAssignment", &cla).unwrap();
    let first = json["endpoints"][0]["lb_endpoints"][0].to_string();
    let pod_ip = first
        .split(['"', ':'])
        .find(|p| p.starts_with("127.") && p.parse::<IpAddr>().is_ok())
        .unwrap()
        .to_string();
    let second: serde_json::Value =
        serde_json::from_str(&first.replace(&pod_ip, &ip.to_string())).unwrap();
    json["endpoints"][0]["lb_endpoints"]
        .as_array_mut()
        .unwrap()
        .push(second);
    let cla: ClusterLoadAssignment =
        xds::envoy::from_json("envoy.config.endpoint.v3.ClusterLoadAssignment", &json).unwrap();
    *e = fixture::any(ENDPOINT, &cla);
}

#[tokio::test]
async fn consistent_hashing_keeps_each_user_on_one_pod() {
    // DestinationRule consistentHash (cluster_traffic_policy.go applyLoadBalancer):
    // RING_HASH on the cluster, hash_policy on the route (header, and a cookie with a TTL).
    let w = start_with_pod(Some(App::Echo), |ls, cs, es, extra| {
        add_endpoint(es, CLUSTER_8100, extra.unwrap());
        let (_, c) = cs.iter_mut().find(|(n, _)| n == CLUSTER_8100).unwrap();
        let mut cluster =
            <envoy_types::pb::envoy::config::cluster::v3::Cluster as prost::Message>::decode(
                c.value.as_slice(),
            )
            .unwrap();
        cluster.lb_policy = 2; // RING_HASH
        *c = fixture::any(CLUSTER, &cluster);
        fixture::prepend_routes(
            ls,
            8100,
            &[
                json!({"name": "dr.header", "match": {"prefix": "/user"}, "route": {"cluster": CLUSTER_8100,
                       "hash_policy": [{"header": {"header_name": "x-user"}}]}}),
                json!({"name": "dr.cookie", "match": {"prefix": "/cookie"}, "route": {"cluster": CLUSTER_8100,
                       "hash_policy": [{"cookie": {"name": "sticky", "ttl": "60s", "path": "/"}}]}}),
            ],
        );
    })
    .await;
    let mut pods = std::collections::HashSet::new();
    for u in 0..20 {
        let user = format!("user-{u}");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let a = send(&w, 8100, "GET", "/user", &[("x-user", &user)]).await;
            seen.insert(a.echo()["pod"].as_str().unwrap().to_string());
        }
        assert_eq!(seen.len(), 1, "{user} went to {seen:?}");
        pods.extend(seen);
    }
    assert_eq!(pods.len(), 2, "users spread over both pods: {pods:?}");

    // Without the cookie, one is generated and set; with it, the pod stays the same.
    let first = get(&w, 8100, "/cookie").await;
    let set = first
        .header("set-cookie")
        .expect("a generated cookie")
        .to_string();
    assert!(
        set.starts_with("sticky=") && set.contains("Max-Age=60"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let pod = first.echo()["pod"].as_str().unwrap().to_string();
    for _ in 0..6 {
        let a = send(&w, 8100, "GET", "/cookie", &[("cookie", &cookie)]).await;
        assert_eq!(a.echo()["pod"], pod.as_str());
        assert_eq!(a.header("set-cookie"), None);
    }
}

#[tokio::test]
async fn least_request_sends_new_requests_away_from_a_busy_pod() {
    // Istio's default load balancer (cluster.go defaultLBAlgorithm): LEAST_REQUEST.
    let w = start_with_pod(Some(App::Echo), |_, cs, es, extra| {
        add_endpoint(es, CLUSTER_8100, extra.unwrap());
        let (_, c) = cs.iter_mut().find(|(n, _)| n == CLUSTER_8100).unwrap();
        let mut cluster =
            <envoy_types::pb::envoy::config::cluster::v3::Cluster as prost::Message>::decode(
                c.value.as_slice(),
            )
            .unwrap();
        cluster.lb_policy = 1; // LEAST_REQUEST
        *c = fixture::any(CLUSTER, &cluster);
    })
    .await;
    // One slow request holds one pod busy.
    let slow = {
        let client = w.client.clone();
        tokio::spawn(async move {
            let conn = client.connect().await.unwrap();
            let mut http = conn
                .http1(SocketAddr::new(VIP.parse().unwrap(), 8100))
                .await
                .unwrap();
            let req = http::Request::get("/slow?delay=1500ms")
                .header("host", HOST)
                .body(filters::body::empty())
                .unwrap();
            let resp = http.send_request(req).await.unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<serde_json::Value>(&body).unwrap()["pod"]
                .as_str()
                .unwrap()
                .to_string()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut fast = std::collections::HashSet::new();
    for _ in 0..10 {
        fast.insert(
            get(&w, 8100, "/get").await.echo()["pod"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let busy = slow.await.unwrap();
    assert_eq!(fast.len(), 1, "every new request went to one pod: {fast:?}");
    assert!(!fast.contains(&busy), "not to the busy pod {busy}");
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

#[tokio::test]
async fn a_circuit_breaker_answers_503_uo_past_its_limit() {
    // DestinationRule connectionPool http.http2MaxRequests: 1 (cluster_traffic_policy.go
    // applyConnectionPool): circuit_breakers max_requests 1 on the cluster.
    let w = start(|_, cs, _| {
        let (_, c) = cs.iter_mut().find(|(n, _)| n == CLUSTER_8100).unwrap();
        let mut json = xds::envoy::to_json(
            "envoy.config.cluster.v3.Cluster",
            &<envoy_types::pb::envoy::config::cluster::v3::Cluster as prost::Message>::decode(
                c.value.as_slice(),
            )
            .unwrap(),
        )
        .unwrap();
        json["circuit_breakers"] = json!({"thresholds": [{
            "max_connections": 4294967295u32, "max_pending_requests": 4294967295u32,
            "max_requests": 1, "max_retries": 4294967295u32, "track_remaining": true}]});
        let cluster: envoy_types::pb::envoy::config::cluster::v3::Cluster =
            xds::envoy::from_json("envoy.config.cluster.v3.Cluster", &json).unwrap();
        *c = fixture::any(CLUSTER, &cluster);
    })
    .await;
    let slow = {
        let client = w.client.clone();
        tokio::spawn(async move {
            let conn = client.connect().await.unwrap();
            let mut http = conn
                .http1(SocketAddr::new(VIP.parse().unwrap(), 8100))
                .await
                .unwrap();
            let req = http::Request::get("/slow?delay=1s")
                .header("host", HOST)
                .body(filters::body::empty())
                .unwrap();
            let resp = http.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            status
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let over = get(&w, 8100, "/get").await;
    assert_eq!(over.status, 503, "the second request in flight overflows");
    assert_eq!(slow.await.unwrap(), 200);
    // With the first one done, requests go through again.
    assert_eq!(get(&w, 8100, "/get").await.status, 200);
}
