//! Egress through the waypoint: a ServiceEntry enrolled with `istio.io/use-waypoint`,
//! reached over HBONE at its address and forwarded over plain TCP to an external server
//! (a loopback address standing in for the internet).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use testkit::echo::EchoIdentity;

/// The ServiceEntry's address, as a client CONNECTs to it.
const SE_VIP: &str = "127.97.0.1";

fn service_entry(resolution: &str, endpoints: &[IpAddr]) -> String {
    let endpoints: String = endpoints
        .iter()
        .map(|ip| format!("  - address: {ip}\n"))
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: api\n  namespace: {NS}\n  labels: {{istio.io/use-waypoint: waypoint}}\nspec:\n  hosts: [api.example.test]\n  addresses: [{SE_VIP}]\n  location: MESH_EXTERNAL\n  resolution: {resolution}\n  ports:\n  - {{number: 80, name: http, protocol: HTTP, targetPort: 8080}}\n  endpoints:\n{endpoints}"
    )
}

/// An external plain HTTP server on a fresh loopback address, port 8080, answering with
/// `pod: <name>`.
async fn external(name: &str) -> (IpAddr, tokio::task::JoinHandle<()>) {
    let ip = testkit::free_loopback_ip(8080);
    let server = testkit::echo::serve_plain(
        SocketAddr::new(ip, 8080),
        EchoIdentity {
            pod: name.into(),
            namespace: "internet".into(),
        },
    )
    .await
    .unwrap();
    (ip, server)
}

/// Which external server answers `GET /` through the waypoint at the ServiceEntry VIP.
async fn answered_by(h: &Harness) -> String {
    let conn = h.client().connect().await.unwrap();
    let vip: SocketAddr = format!("{SE_VIP}:80").parse().unwrap();
    let mut http = conn.http1(vip).await.unwrap();
    let req = http::Request::get("/")
        .header("host", "api.example.test")
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    json(resp).await["pod"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_static_service_entry_reaches_the_external_server_over_plain_tcp() {
    let (ip, _server) = external("external").await;
    let h = Harness::start(Spec {
        extra_yaml: vec![service_entry("STATIC", &[ip])],
        ..Spec::default()
    })
    .await;
    assert_eq!(answered_by(&h).await, "external");
    // Telemetry names the ServiceEntry host as the destination service.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = h.prometheus().await;
        let labels = [
            ("destination_service", "api.example.test"),
            ("response_code", "200"),
        ];
        if metric(&samples, "istio_requests_total", &labels) >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no request counted: {samples:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn dns_resolution_balances_over_all_endpoints_and_round_robin_uses_the_first() {
    let (a, _sa) = external("a").await;
    let (b, _sb) = external("b").await;
    // DNS (Envoy's STRICT_DNS): every address is an endpoint.
    let h = Harness::start(Spec {
        extra_yaml: vec![service_entry("DNS", &[a, b])],
        ..Spec::default()
    })
    .await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        seen.insert(answered_by(&h).await);
    }
    assert_eq!(seen.len(), 2, "both endpoints answer: {seen:?}");
    drop(h);
    // DNS_ROUND_ROBIN (LOGICAL_DNS): the first address only.
    let h = Harness::start(Spec {
        extra_yaml: vec![service_entry("DNS_ROUND_ROBIN", &[a, b])],
        ..Spec::default()
    })
    .await;
    for _ in 0..10 {
        assert_eq!(answered_by(&h).await, "a");
    }
}

#[tokio::test]
async fn an_unreachable_external_endpoint_answers_503() {
    // Nothing listens at this address: connecting fails.
    let ip = testkit::free_loopback_ip(8080);
    let h = Harness::start(Spec {
        extra_yaml: vec![service_entry("STATIC", &[ip])],
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn
        .http1(format!("{SE_VIP}:80").parse().unwrap())
        .await
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(20), http.send_request(get("/")))
        .await
        .expect("answered in time")
        .unwrap();
    assert_eq!(resp.status(), 503);
}

#[tokio::test]
async fn a_service_entry_with_an_unimplemented_field_is_refused_by_name() {
    let h = Harness::start(Spec::default()).await;
    let config = std::fs::read_to_string(&h.config).unwrap();
    let path = h.dir().join("with-entry.yaml");
    // A CIDR address with DNS resolution (istiod's validation allows them only for NONE
    // and STATIC).
    let bad = service_entry("DNS", &["127.0.0.1".parse().unwrap()])
        .replace(&format!("[{SE_VIP}]"), "[127.97.0.0/24]");
    std::fs::write(&path, format!("{config}\n---\n{bad}")).unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("ServiceEntry default/api") && stdout.contains("spec.addresses[0]"),
        "{stdout}"
    );
}

/// DestinationRule `tls` for the ServiceEntry host originates TLS on the plain TCP
/// connection to the external endpoint (the same origination as inside HBONE tunnels).
#[tokio::test]
async fn destination_rule_tls_is_originated_to_the_external_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ca = hbone::tls::DevCa::new("external-ca").unwrap();
    let app = testkit::tls_echo::TlsEcho::start(
        &ca.issue(&filters::model::Identity::new(
            "cluster.local",
            "internet",
            "api",
        ))
        .unwrap()
        .certs()
        .unwrap(),
        EchoIdentity {
            pod: "tls-external".into(),
            namespace: "internet".into(),
        },
    )
    .await
    .unwrap();
    ca.issue(&filters::model::Identity::new(
        "cluster.local",
        NS,
        "waypoint",
    ))
    .unwrap()
    .write(dir.path())
    .unwrap();
    let p = |f: &str| dir.path().join(f).display().to_string();
    let entry = service_entry("STATIC", &[app.addr.ip()]).replace(
        "targetPort: 8080",
        &format!("targetPort: {}", app.addr.port()),
    );
    for (san, expected) in [
        ("spiffe://cluster.local/ns/internet/sa/api", 200),
        ("spiffe://cluster.local/ns/internet/sa/other", 503),
    ] {
        let rule = format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: {NS}}}\nspec:\n  host: api.example.test\n  trafficPolicy:\n    tls:\n      mode: MUTUAL\n      clientCertificate: {}\n      privateKey: {}\n      caCertificates: {}\n      subjectAltNames: [\"{san}\"]\n",
            p("cert-chain.pem"),
            p("key.pem"),
            p("root-cert.pem")
        );
        let h = Harness::start(Spec {
            extra_yaml: vec![entry.clone(), rule],
            ..Spec::default()
        })
        .await;
        let conn = h.client().connect().await.unwrap();
        let mut http = conn
            .http1(format!("{SE_VIP}:80").parse().unwrap())
            .await
            .unwrap();
        let resp = http.send_request(get("/get")).await.unwrap();
        assert_eq!(resp.status(), expected, "SAN {san}");
        if expected == 200 {
            assert_eq!(json(resp).await["pod"], "tls-external");
        }
    }
}

/// An AuthorizationPolicy whose `targetRefs` name the ServiceEntry applies to its traffic.
#[tokio::test]
async fn an_authorization_policy_on_the_service_entry_denies_a_path() {
    let (ip, _server) = external("external").await;
    let policy = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-admin, namespace: {NS}}}\nspec:\n  targetRefs: [{{group: networking.istio.io, kind: ServiceEntry, name: api}}]\n  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [/admin*]\n"
    );
    let h = Harness::start(Spec {
        extra_yaml: vec![service_entry("STATIC", &[ip]), policy],
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn
        .http1(format!("{SE_VIP}:80").parse().unwrap())
        .await
        .unwrap();
    let denied = http.send_request(get("/admin/users")).await.unwrap();
    assert_eq!(denied.status(), 403);
    let allowed = http.send_request(get("/get")).await.unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(json(allowed).await["pod"], "external");
}

/// A ServiceEntry whose `workloadSelector` chooses mesh Pods: its endpoints are those pods,
/// reached over HBONE at the port's `targetPort` (a ServiceEntry standing for workloads
/// inside the mesh, `location: MESH_INTERNAL`).
#[tokio::test]
async fn a_workload_selector_makes_the_selected_pods_the_endpoints() {
    let entry = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: api\n  namespace: {NS}\n  labels: {{istio.io/use-waypoint: waypoint}}\nspec:\n  hosts: [api.example.test]\n  addresses: [{SE_VIP}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports:\n  - {{number: 80, name: http, protocol: HTTP, targetPort: 8080}}\n  workloadSelector:\n    labels: {{app: echo}}\n"
    );
    let h = Harness::start(Spec {
        pods: 2,
        extra_yaml: vec![entry],
        ..Spec::default()
    })
    .await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..8 {
        seen.insert(answered_by(&h).await);
    }
    assert_eq!(seen, ["echo-0".to_string(), "echo-1".to_string()].into());
}
