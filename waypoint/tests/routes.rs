//! Route features the mesh conformance profile does not exercise: retries, timeouts,
//! mirrors, CORS, unusable backends, and `waypoint check`.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use http::Request;

fn route(rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: echo-route\n  namespace: {NS}\nspec:\n  parentRefs:\n  - group: \"\"\n    kind: Service\n    name: echo\n    port: 80\n  rules:\n{rules}"
    )
}

async fn with_routes(rules: &str, pods: usize) -> Harness {
    Harness::start(Spec {
        pods,
        extra_yaml: vec![route(rules)],
        ..Spec::default()
    })
    .await
}

#[tokio::test]
async fn retries_until_the_backend_succeeds() {
    let h = with_routes(
        "  - matches:\n    - path: {type: PathPrefix, value: /retry}\n    retry:\n      attempts: 3\n      codes: [500]\n      backoff: 10ms\n    backendRefs:\n    - {name: echo, port: 80}\n  - matches:\n    - path: {type: Exact, value: /retry/c}\n    backendRefs:\n    - {name: echo, port: 80}\n",
        1,
    )
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    // The echo fails the first two calls for this uuid, then succeeds.
    let resp = http
        .send_request(get("/retry/a?uuid=r1&succeedAfter=3&responseCode=500"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    http.ready().await.unwrap();
    // Too many failures for the policy: the last failure comes back.
    let resp = http
        .send_request(get("/retry/b?uuid=r2&succeedAfter=10&responseCode=500"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    http.ready().await.unwrap();
    let resp = http
        .send_request(get("/retry/c?uuid=r3&succeedAfter=2&responseCode=500"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
}

#[tokio::test]
async fn request_and_backend_timeouts_are_504() {
    let h = with_routes(
        "  - matches:\n    - path: {type: PathPrefix, value: /slow}\n    timeouts:\n      request: 300ms\n    backendRefs:\n    - {name: echo, port: 80}\n  - matches:\n    - path: {type: PathPrefix, value: /backend}\n    timeouts:\n      request: 2s\n      backendRequest: 200ms\n    backendRefs:\n    - {name: echo, port: 80}\n",
        1,
    )
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let start = Instant::now();
    let resp = http.send_request(get("/slow?delay=2s")).await.unwrap();
    assert_eq!(resp.status(), 504);
    // Answered before the backend would have (it waits 2 s): the timeout cut it short.
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(body_bytes(resp).await, "upstream request timeout");
    let mut http = conn.http1(authority(80)).await.unwrap();
    assert_eq!(
        http.send_request(get("/slow?delay=10ms"))
            .await
            .unwrap()
            .status(),
        200
    );
    let mut http = conn.http1(authority(80)).await.unwrap();
    assert_eq!(
        http.send_request(get("/backend?delay=1s"))
            .await
            .unwrap()
            .status(),
        504
    );
}

#[tokio::test]
async fn mirrors_copy_requests_to_another_backend() {
    use testkit::mesh::Port;
    let mirror_svc = "apiVersion: v1\nkind: Service\nmetadata:\n  name: mirror\n  namespace: default\nspec:\n  clusterIP: 127.96.0.30\n  selector:\n    app: mirror\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n".to_string();
    let mirror_ip = testkit::free_loopback_ip(15008);
    let h = Harness::start(Spec {
        ports: vec![Port { name: "http", port: 80, target: 8080 }],
        extra_yaml: vec![
            mirror_svc,
            format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: mirror-0\n  namespace: default\n  labels: {{app: mirror}}\n  annotations: {{ambient.istio.io/redirection: enabled}}\nspec:\n  serviceAccountName: echo\nstatus:\n  phase: Running\n  podIP: {mirror_ip}\n"),
            route("  - filters:\n    - type: RequestMirror\n      requestMirror:\n        backendRef: {name: mirror, port: 80}\n    backendRefs:\n    - {name: echo, port: 80}\n"),
        ],
        ..Spec::default()
    })
    .await;
    let mirror = testkit::ztunnel::FakeZtunnel::start(testkit::ztunnel::ZtunnelOptions {
        ip: mirror_ip,
        certs: h
            .ca
            .issue(&filters::model::Identity::new("cluster.local", NS, "echo"))
            .unwrap()
            .certs()
            .unwrap(),
        allowed_caller: Some(h.waypoint_id.clone()),
        who: testkit::echo::EchoIdentity {
            pod: "mirror-0".into(),
            namespace: NS.into(),
        },
        apps: Default::default(),
    })
    .await
    .unwrap();
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    for _ in 0..3 {
        http.ready().await.unwrap();
        let resp = http.send_request(get("/mirrored")).await.unwrap();
        assert_eq!(
            json(resp).await["pod"],
            "echo-0",
            "the real backend answers"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while mirror.counters.connects.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        mirror.counters.connects.load(Ordering::Relaxed) >= 1,
        "the mirror received copies"
    );
}

#[tokio::test]
async fn cors_preflight_and_response_headers() {
    let h = with_routes(
        "  - filters:\n    - type: CORS\n      cors:\n        allowOrigins: [\"https://*.example.com\"]\n        allowMethods: [GET, POST]\n        allowHeaders: [x-custom]\n        allowCredentials: true\n        maxAge: 600\n    backendRefs:\n    - {name: echo, port: 80}\n",
        1,
    )
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let preflight = Request::options("/api")
        .header("host", "echo")
        .header("origin", "https://www.example.com")
        .header("access-control-request-method", "POST")
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(preflight).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://www.example.com"
    );
    assert_eq!(resp.headers()["access-control-allow-methods"], "GET, POST");
    assert_eq!(resp.headers()["access-control-max-age"], "600");
    assert_eq!(resp.headers()["access-control-allow-credentials"], "true");
    assert!(
        json_or_empty(resp).await,
        "answered by the waypoint, not the backend"
    );
    http.ready().await.unwrap();
    let req = Request::get("/api")
        .header("host", "echo")
        .header("origin", "https://evil.org")
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}

async fn json_or_empty(resp: http::Response<hyper::body::Incoming>) -> bool {
    body_bytes(resp).await.is_empty()
}

#[tokio::test]
async fn unusable_backends_no_route_and_zero_weight() {
    let h = with_routes(
        "  - matches:\n    - path: {type: PathPrefix, value: /missing}\n    backendRefs:\n    - {name: does-not-exist, port: 80}\n  - matches:\n    - path: {type: PathPrefix, value: /none}\n  - matches:\n    - path: {type: PathPrefix, value: /zero}\n    backendRefs:\n    - {name: echo, port: 80, weight: 0}\n  - matches:\n    - path: {type: Exact, value: /ok}\n    backendRefs:\n    - {name: echo, port: 80}\n",
        1,
    )
    .await;
    let conn = h.client().connect().await.unwrap();
    for (path, status) in [
        ("/missing", 500),
        ("/none", 500),
        ("/zero", 500),
        ("/ok", 200),
        ("/elsewhere", 404),
    ] {
        let mut http = conn.http1(authority(80)).await.unwrap();
        assert_eq!(
            http.send_request(get(path)).await.unwrap().status(),
            status,
            "{path}"
        );
    }
}

#[tokio::test]
async fn check_reports_route_conditions() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = testkit::mesh::MeshYaml::new(NS, "waypoint")
        .service(NS, "echo", vip(), "echo", &[testkit::mesh::Port { name: "http", port: 80, target: 8080 }])
        .raw(&route("  - backendRefs:\n    - {name: echo, port: 80}\n"))
        .raw("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: broken\n  namespace: default\nspec:\n  parentRefs:\n  - {group: \"\", kind: Service, name: echo}\n  rules:\n  - matches:\n    - path: {type: RegularExpression, value: \"([\"}\n    backendRefs:\n    - {name: echo, port: 80}\n")
        .raw("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: dangling\n  namespace: default\nspec:\n  parentRefs:\n  - {group: \"\", kind: Service, name: echo, port: 81}\n  - {group: \"\", kind: Service, name: echo}\n  rules:\n  - backendRefs:\n    - {name: nope, port: 80}\n    - {name: other, namespace: elsewhere, port: 80}\n");
    let config = dir.path().join("mesh.yaml");
    std::fs::write(&config, mesh.render()).unwrap();
    let out = std::process::Command::new(bin())
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("HTTPRoute default/echo-route -> Service default/echo:80: Accepted=true (Accepted), ResolvedRefs=true"), "{stdout}");
    assert!(
        stdout.contains(
            "HTTPRoute default/broken -> Service default/echo: Accepted=false (UnsupportedValue)"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("invalid regular expression"), "{stdout}");
    assert!(stdout.contains("HTTPRoute default/dangling -> Service default/echo:81: Accepted=false (NoMatchingParent)"), "{stdout}");
    assert!(
        stdout.contains("ResolvedRefs=false (BackendNotFound): Service default/nope not found"),
        "{stdout}"
    );

    std::fs::write(&config, "kind: Service\n").unwrap();
    let out = std::process::Command::new(bin())
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn a_grpc_timeout_header_ends_a_grpc_request_on_time() {
    // As istiod's `max_grpc_timeout` on every route (route.go setTimeout): a gRPC
    // request's `grpc-timeout` sets its timeout (here the route has none to cap it).
    let h = Harness::start(Spec::default()).await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let req = Request::get("/get?delay=3s")
        .header("host", "echo.default.svc.cluster.local")
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "300m")
        .body(filters::body::empty())
        .unwrap();
    let started = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), http.send_request(req))
        .await
        .expect("answered")
        .unwrap();
    let took = started.elapsed();
    assert_eq!(
        resp.headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("14"),
        "{:?}",
        resp.headers()
    );
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "answered after {took:?}"
    );
}
