//! DestinationRule from the local configuration: the same load balancing istiod gives a
//! waypoint over xDS (`tests/istiod_*.rs`), from the same object, over real sockets.

mod common;

use std::collections::HashSet;

use common::*;
use filters::model::Identity;
use http::Request;
use testkit::ztunnel::App;

async fn pod_of(h: &Harness, user: &str) -> String {
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let req = Request::get("/get")
        .header("host", "echo.default.svc.cluster.local")
        .header("x-user", user)
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    json(resp).await["pod"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn consistent_hash_on_a_header_keeps_each_user_on_one_pod() {
    let h = Harness::start(Spec {
        pods: 2,
        extra_yaml: vec![destination_rule(
            "    loadBalancer:\n      consistentHash:\n        httpHeaderName: x-user\n",
        )],
        ..Spec::default()
    })
    .await;
    let mut pods = HashSet::new();
    for u in 0..20 {
        let user = format!("user-{u}");
        let first = pod_of(&h, &user).await;
        for _ in 0..3 {
            assert_eq!(pod_of(&h, &user).await, first, "{user} moved");
        }
        pods.insert(first);
    }
    assert_eq!(pods.len(), 2, "users spread over both pods: {pods:?}");
}

#[tokio::test]
async fn maglev_with_a_table_size_that_is_not_prime_is_refused() {
    // Envoy refuses such a table; istiod would pass it on (ApplyRingHashLoadBalancer).
    let (code, stdout) = check_with(&destination_rule(
        "    loadBalancer:\n      consistentHash:\n        httpHeaderName: x-user\n        maglev:\n          tableSize: 1000\n",
    ))
    .await;
    assert_eq!(code, Some(2), "{stdout}");
    assert!(
        stdout.contains("consistentHash.maglev.tableSize") && stdout.contains("prime"),
        "{stdout}"
    );
    let (code, stdout) = check_with(&destination_rule(
        "    loadBalancer:\n      consistentHash:\n        httpHeaderName: x-user\n        maglev:\n          tableSize: 251\n",
    ))
    .await;
    assert_eq!(code, Some(0), "{stdout}");
}

#[tokio::test]
async fn a_generated_hash_cookie_carries_its_path_and_attributes() {
    let h = Harness::start(Spec {
        pods: 2,
        extra_yaml: vec![destination_rule(
            "    loadBalancer:\n      consistentHash:\n        httpCookie:\n          name: sticky\n          path: /get\n          ttl: 30s\n          attributes:\n          - name: SameSite\n            value: Lax\n          - name: Secure\n",
        )],
        ..Spec::default()
    })
    .await;
    let send = |cookie: Option<String>| {
        let client = h.client();
        async move {
            let conn = client.connect().await.unwrap();
            let mut http = conn.http1(authority(80)).await.unwrap();
            let mut req = Request::get("/get").header("host", "echo.default.svc.cluster.local");
            if let Some(c) = cookie {
                req = req.header("cookie", c);
            }
            let resp = http
                .send_request(req.body(filters::body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let set = resp
                .headers()
                .get("set-cookie")
                .map(|v| v.to_str().unwrap().to_string());
            (set, json(resp).await["pod"].as_str().unwrap().to_string())
        }
    };
    let (set, pod) = send(None).await;
    let set = set.expect("a generated cookie");
    let (cookie, rest) = set.split_once(';').unwrap();
    assert!(cookie.starts_with("sticky=\""), "{set}");
    assert_eq!(
        rest,
        " Max-Age=30; Path=/get; SameSite=Lax; Secure; HttpOnly"
    );
    for _ in 0..4 {
        let (again, p) = send(Some(cookie.to_string())).await;
        assert_eq!((again, p), (None, pod.clone()));
    }
}

#[tokio::test]
async fn a_hash_cookie_attribute_repeated_or_unnamed_is_refused() {
    for (attributes, field) in [
        (
            "          - name: Secure\n          - name: Secure\n",
            "httpCookie.attributes[1].name",
        ),
        ("          - value: Strict\n", "httpCookie.attributes[0]"),
        (
            "          - name: Secure\n            sameSite: x\n",
            "sameSite",
        ),
    ] {
        let (code, stdout) = check_with(&destination_rule(&format!(
            "    loadBalancer:\n      consistentHash:\n        httpCookie:\n          name: sticky\n          ttl: 30s\n          attributes:\n{attributes}"
        )))
        .await;
        assert_eq!(code, Some(2), "{stdout}");
        assert!(stdout.contains(field), "{field}: {stdout}");
    }
}

#[tokio::test]
async fn traffic_policy_fields_not_implemented_are_refused_by_name() {
    let (code, stdout) = check_with(&destination_rule(
        "    loadBalancer:\n      localityLbSetting:\n        enabled: true\n",
    ))
    .await;
    assert_eq!(code, Some(2), "{stdout}");
    assert!(
        stdout.contains("DestinationRule default/echo")
            && stdout.contains("spec.trafficPolicy.loadBalancer.localityLbSetting"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_misspelled_authorization_field_is_refused_not_ignored() {
    // `principalz` would have made an ALLOW rule with no condition: everyone allowed.
    let (code, stdout) = check_with(&format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-a, namespace: {NS}}}\nspec:\n  targetRefs: [{{group: \"\", kind: Service, name: echo}}]\n  rules:\n  - from:\n    - source:\n        principalz: [cluster.local/ns/a/sa/b]\n"
    ))
    .await;
    assert_eq!(code, Some(2), "{stdout}");
    assert!(stdout.contains("principalz"), "{stdout}");
}

#[tokio::test]
async fn connection_pool_limits_answer_503_past_them() {
    let h = Harness::start(Spec {
        extra_yaml: vec![destination_rule(
            "    connectionPool:\n      tcp: {maxConnections: 1}\n      http: {http1MaxPendingRequests: 0, http2MaxRequests: 100}\n",
        )],
        ..Spec::default()
    })
    .await;
    let slow = {
        let client = h.client();
        tokio::spawn(async move {
            let conn = client.connect().await.unwrap();
            let mut http = conn.http1(authority(80)).await.unwrap();
            let resp = http.send_request(get("/slow?delay=1s")).await.unwrap();
            resp.status().as_u16()
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let over = http.send_request(get("/get")).await.unwrap();
    assert_eq!(
        over.status(),
        503,
        "one connection, no pending: the second overflows"
    );
    assert_eq!(slow.await.unwrap(), 200);
}

#[tokio::test]
async fn outlier_detection_ejects_the_failing_pod() {
    let h = Harness::start(Spec {
        pods: 2,
        extra_yaml: vec![destination_rule(
            "    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection:\n      consecutive5xxErrors: 2\n      interval: 1s\n      baseEjectionTime: 30s\n      maxEjectionPercent: 100\n",
        )],
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..12 {
        let resp = http
            .send_request(get("/status/500?pod=echo-1"))
            .await
            .unwrap();
        let status = resp.status().as_u16();
        answers.push((
            status,
            json(resp).await["pod"].as_str().unwrap().to_string(),
        ));
    }
    let failing: Vec<_> = answers.iter().filter(|(_, p)| p == "echo-1").collect();
    assert_eq!(
        failing.len(),
        2,
        "echo-1 ejected after two 5xx: {answers:?}"
    );
    assert!(failing.iter().all(|(s, _)| *s == 500));
    assert!(
        answers[4..].iter().all(|(s, p)| *s == 200 && p == "echo-0"),
        "{answers:?}"
    );
}

#[tokio::test]
async fn tls_mutual_is_originated_to_a_tls_only_app() {
    let dir = tempfile::tempdir().unwrap();
    let ca = hbone::tls::DevCa::new("app-ca").unwrap();
    let app = testkit::tls_echo::TlsEcho::start(
        &ca.issue(&Identity::new("cluster.local", "default", "httpbin"))
            .unwrap()
            .certs()
            .unwrap(),
        testkit::echo::EchoIdentity {
            pod: "tls-app".into(),
            namespace: NS.into(),
        },
    )
    .await
    .unwrap();
    ca.issue(&Identity::new("cluster.local", NS, "waypoint"))
        .unwrap()
        .write(dir.path())
        .unwrap();
    let p = |f: &str| dir.path().join(f).display().to_string();
    let tls = |san: &str| {
        destination_rule(&format!(
            "    tls:\n      mode: MUTUAL\n      clientCertificate: {}\n      privateKey: {}\n      caCertificates: {}\n      subjectAltNames: [\"{san}\"]\n",
            p("cert-chain.pem"),
            p("key.pem"),
            p("root-cert.pem")
        ))
    };
    for (san, expected) in [
        ("spiffe://cluster.local/ns/default/sa/httpbin", 200),
        ("spiffe://cluster.local/ns/default/sa/other", 503),
    ] {
        let h = Harness::start(Spec {
            apps: [(8080, App::Forward(app.addr))].into(),
            extra_yaml: vec![tls(san)],
            ..Spec::default()
        })
        .await;
        let conn = h.client().connect().await.unwrap();
        let mut http = conn.http1(authority(80)).await.unwrap();
        let resp = http.send_request(get("/get")).await.unwrap();
        assert_eq!(resp.status(), expected, "SAN {san}");
        if expected == 200 {
            assert_eq!(json(resp).await["pod"], "tls-app");
        }
    }
}

#[tokio::test]
async fn max_retries_caps_the_retries_in_flight() {
    let route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: retry\n  namespace: {NS}\nspec:\n  parentRefs: [{{group: \"\", kind: Service, name: echo, port: 80}}]\n  rules:\n  - retry: {{attempts: 2, codes: [503]}}\n    backendRefs: [{{name: echo, port: 80}}]\n"
    );
    let h = Harness::start(Spec {
        extra_yaml: vec![
            route,
            destination_rule("    connectionPool:\n      http: {maxRetries: 1}\n"),
        ],
        ..Spec::default()
    })
    .await;
    let send = |path: &'static str| {
        let client = h.client();
        tokio::spawn(async move {
            let conn = client.connect().await.unwrap();
            let mut http = conn.http1(authority(80)).await.unwrap();
            http.send_request(get(path))
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    // Each path answers 503 once (after 600 ms), then 200: a request needs one retry.
    let a = send("/retry/a?uuid=a&succeedAfter=1&responseCode=503&delay=600ms");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let b = send("/retry/b?uuid=b&succeedAfter=1&responseCode=503&delay=600ms");
    assert_eq!(a.await.unwrap(), 200, "A was retried");
    assert_eq!(
        b.await.unwrap(),
        503,
        "B's retry overflowed: its answer stands"
    );
    let c = send("/retry/c?uuid=c&succeedAfter=1&responseCode=503");
    assert_eq!(c.await.unwrap(), 200);
}

#[tokio::test]
async fn connection_pool_limits_bound_each_upstream_connection() {
    for (pool, expected) in [("", 1), ("      http: {maxRequestsPerConnection: 2}\n", 2)] {
        let rule = if pool.is_empty() {
            vec![]
        } else {
            vec![destination_rule(&format!("    connectionPool:\n{pool}"))]
        };
        let h = Harness::start(Spec {
            extra_yaml: rule,
            ..Spec::default()
        })
        .await;
        let conn = h.client().connect().await.unwrap();
        let mut http = conn.http1(authority(80)).await.unwrap();
        for _ in 0..4 {
            let resp = http.send_request(get("/get")).await.unwrap();
            assert_eq!(resp.status(), 200);
            json(resp).await;
        }
        let connects = h.pods[0]
            .counters
            .connects
            .load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            connects, expected,
            "upstream tunnels for 4 requests ({pool:?})"
        );
    }
}

#[tokio::test]
async fn proxy_protocol_v2_sends_the_client_and_the_vip_first() {
    // `proxyProtocol: {version: V2}`: each upstream connection starts with the binary
    // PROXY header (the client from `forwarded`, the VIP:port it connected to), and two
    // clients never share a connection.
    let front = testkit::proxy_front::ProxyFront::start(testkit::proxy_front::Behind::Echo(
        testkit::echo::EchoIdentity {
            pod: "proxy-app".into(),
            namespace: NS.into(),
        },
    ))
    .await
    .unwrap();
    let h = Harness::start(Spec {
        apps: [(8080, App::Forward(front.addr))].into(),
        extra_yaml: vec![destination_rule("    proxyProtocol:\n      version: V2\n")],
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    for source in ["10.9.8.7:41001", "10.9.8.7:41002"] {
        let source =
            testkit::source::SourceWorkload::deployment(source.parse().unwrap(), NS, "sleep");
        let tunnel = conn.tunnel_from(authority(80), &source).await.unwrap();
        let mut http = testkit::client::http1_over(tunnel).await.unwrap();
        let resp = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            http.send_request(get("/get")),
        )
        .await
        .expect("answered in time")
        .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(json(resp).await["pod"], "proxy-app");
    }
    let received = front.received();
    assert!(received.iter().all(|r| r.version == 2), "{received:?}");
    let addresses: Vec<_> = received.iter().map(|r| r.addresses.unwrap()).collect();
    assert_eq!(
        addresses,
        [
            ("10.9.8.7:41001".parse().unwrap(), authority(80)),
            ("10.9.8.7:41002".parse().unwrap(), authority(80)),
        ]
    );
}

#[tokio::test]
async fn an_unknown_proxy_protocol_version_is_refused() {
    let (code, stdout) =
        check_with(&destination_rule("    proxyProtocol:\n      version: V3\n")).await;
    assert_eq!(code, Some(2), "{stdout}");
    assert!(
        stdout.contains("spec.trafficPolicy.proxyProtocol.version"),
        "{stdout}"
    );
}

#[tokio::test]
async fn proxy_protocol_v1_starts_a_tcp_tunnels_upstream_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let front = testkit::proxy_front::ProxyFront::start(testkit::proxy_front::Behind::Echo(
        testkit::echo::EchoIdentity {
            pod: "proxy-app".into(),
            namespace: NS.into(),
        },
    ))
    .await
    .unwrap();
    let h = Harness::start(Spec {
        ports: vec![testkit::mesh::Port {
            name: "tcp-app",
            port: 9000,
            target: 9000,
        }],
        apps: [(9000, App::Forward(front.addr))].into(),
        extra_yaml: vec![destination_rule("    proxyProtocol:\n      version: V1\n")],
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let source =
        testkit::source::SourceWorkload::deployment("10.9.8.7:41003".parse().unwrap(), NS, "sleep");
    let mut tunnel = conn.tunnel_from(authority(9000), &source).await.unwrap();
    // The tunnel's bytes (an HTTP request, which the app behind the header serves) follow
    // the header unchanged.
    tunnel
        .write_all(b"GET /get HTTP/1.1\r\nhost: echo\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tunnel.read_to_end(&mut got),
    )
    .await
    .expect("the app answered and closed")
    .unwrap();
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let received = front.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].version, 1);
    assert_eq!(
        received[0].addresses,
        Some(("10.9.8.7:41003".parse().unwrap(), authority(9000)))
    );
}

/// Pods answering `n` requests, in order.
async fn pods_answering(h: &Harness, n: usize) -> Vec<String> {
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let mut pods = Vec::with_capacity(n);
    for _ in 0..n {
        http.ready().await.unwrap();
        let resp = http.send_request(get("/get")).await.unwrap();
        assert_eq!(resp.status(), 200);
        pods.push(json(resp).await["pod"].as_str().unwrap().to_string());
    }
    pods
}

/// Polls `f` every 100 ms until it is true, for at most 10 s.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !f().await {
        assert!(std::time::Instant::now() < deadline, "{what}: not in time");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn warmup_ramps_a_joining_pod_up_over_its_window() {
    let h = Harness::start(Spec {
        pods: 2,
        extra_yaml: vec![destination_rule(
            "    loadBalancer:\n      simple: ROUND_ROBIN\n      warmup:\n        duration: 3s\n        minimumPercent: 10\n",
        )],
        ..Spec::default()
    })
    .await;
    // echo-1 leaves, and comes back once echo-0's own window is over.
    let full = std::fs::read_to_string(&h.config).unwrap();
    let without: Vec<&str> = full
        .split("---\n")
        .filter(|d| !d.contains("kind: Pod\nmetadata:\n  name: echo-1\n"))
        .collect();
    h.write_config(&without.join("---\n"));
    eventually("echo-1 to leave", || async {
        pods_answering(&h, 6).await.iter().all(|p| p == "echo-0")
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    h.write_config(&full);
    eventually("echo-1 to join", || async {
        pods_answering(&h, 10).await.iter().any(|p| p == "echo-1")
    })
    .await;
    // Just joined: about 10% at first, growing; round robin alone would give it half.
    let early = pods_answering(&h, 40).await;
    let joined = early.iter().filter(|p| *p == "echo-1").count();
    assert!(joined <= 14, "echo-1 took {joined} of 40 while warming up");
    // Past the window: an even share.
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    let late = pods_answering(&h, 60).await;
    let joined = late.iter().filter(|p| *p == "echo-1").count();
    assert!(
        (20..=40).contains(&joined),
        "echo-1 took {joined} of 60 after warming up"
    );
}

#[tokio::test]
async fn warmup_with_a_hash_or_random_balancer_is_refused() {
    let (code, stdout) = check_with(&destination_rule(
        "    loadBalancer:\n      simple: RANDOM\n      warmupDurationSecs: 10s\n",
    ))
    .await;
    assert_eq!(code, Some(2), "{stdout}");
    assert!(
        stdout.contains("trafficPolicy.loadBalancer.warmup") && stdout.contains("RANDOM"),
        "{stdout}"
    );
}
