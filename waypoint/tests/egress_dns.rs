//! Egress to a ServiceEntry with `resolution: DNS` and no endpoints: the waypoint resolves
//! its host through a DNS server (the test kit's, on loopback, via `--dns-server`),
//! follows answer changes within their TTL, and answers 503 while the name does not
//! resolve.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use testkit::dns_server::DnsServer;
use testkit::echo::EchoIdentity;

const SE_VIP: &str = "127.97.0.2";
const HOST: &str = "api.example.test";

fn service_entry(resolution: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: api\n  namespace: {NS}\n  labels: {{istio.io/use-waypoint: waypoint}}\nspec:\n  hosts: [{HOST}]\n  addresses: [{SE_VIP}]\n  location: MESH_EXTERNAL\n  resolution: {resolution}\n  ports:\n  - {{number: 80, name: http, protocol: HTTP, targetPort: 8080}}\n"
    )
}

async fn external(name: &str) -> (Ipv4Addr, tokio::task::JoinHandle<()>) {
    let IpAddr::V4(ip) = testkit::free_loopback_ip(8080) else {
        panic!("IPv4 loopback expected")
    };
    let server = testkit::echo::serve_plain(
        SocketAddr::new(ip.into(), 8080),
        EchoIdentity {
            pod: name.into(),
            namespace: "internet".into(),
        },
    )
    .await
    .unwrap();
    (ip, server)
}

async fn start(dns: &DnsServer, resolution: &str) -> Harness {
    let server: &'static str = Box::leak(dns.addr.to_string().into_boxed_str());
    Harness::start(Spec {
        extra_yaml: vec![service_entry(resolution)],
        extra_args: vec!["--dns-server", server],
        capture_stdout: true,
        ..Spec::default()
    })
    .await
}

/// The status and, on 200, the answering server of `GET /` at the ServiceEntry VIP.
async fn send(h: &Harness) -> (u16, Option<String>) {
    answer_of(h, format!("{SE_VIP}:80").parse().unwrap(), HOST).await
}

/// Sends until `want` answers, within `limit`.
async fn until_answered_by(h: &Harness, want: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if send(h).await.1.as_deref() == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{want} did not answer within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_host_is_resolved_and_a_changed_answer_is_followed_within_its_ttl() {
    let dns = DnsServer::start().await.unwrap();
    let (a, _sa) = external("a").await;
    let (b, _sb) = external("b").await;
    dns.set(HOST, &[a], 2);
    let h = start(&dns, "DNS").await;
    until_answered_by(&h, "a", Duration::from_secs(10)).await;
    assert!(dns.queries() >= 1);
    dns.set(HOST, &[b], 2);
    // The old answer lives 2 s; the waypoint resolves again when it runs out.
    let took = until_answered_by(&h, "b", Duration::from_secs(8)).await;
    assert!(took <= Duration::from_secs(5), "followed after {took:?}");
    for _ in 0..5 {
        assert_eq!(send(&h).await.1.as_deref(), Some("b"));
    }
}

#[tokio::test]
async fn strict_dns_balances_over_every_address_and_logical_dns_takes_the_first() {
    let dns = DnsServer::start().await.unwrap();
    let (a, _sa) = external("a").await;
    let (b, _sb) = external("b").await;
    dns.set(HOST, &[a, b], 30);
    let h = start(&dns, "DNS").await;
    until_answered_by(&h, "a", Duration::from_secs(10)).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        seen.insert(send(&h).await.1.unwrap());
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    drop(h);
    let h = start(&dns, "DNS_ROUND_ROBIN").await;
    until_answered_by(&h, "a", Duration::from_secs(10)).await;
    for _ in 0..10 {
        assert_eq!(send(&h).await.1.as_deref(), Some("a"));
    }
}

#[tokio::test]
async fn an_unresolvable_host_answers_503_uh_with_a_log_line() {
    let dns = DnsServer::start().await.unwrap();
    let h = start(&dns, "DNS").await;
    // Give the resolver time to ask (and be told NXDOMAIN).
    let deadline = Instant::now() + Duration::from_secs(10);
    while dns.queries() == 0 {
        assert!(Instant::now() < deadline, "the waypoint never asked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(send(&h).await, (503, None));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = h.stdout();
        if out.contains("api.example.test has no resolved address") {
            break;
        }
        assert!(Instant::now() < deadline, "no log line: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The response flag, as Envoy reports it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = h.prometheus().await;
        let labels = [("response_code", "503"), ("response_flags", "UH")];
        if metric(&samples, "istio_requests_total", &labels) >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no 503 UH counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A ServiceEntry with two hosts is two Services (as istiod makes them), each at the
/// address istiod allocated to it (`status.addresses` with `host`), each resolving its own
/// name.
#[tokio::test]
async fn each_host_of_an_entry_is_reached_at_its_own_address() {
    let dns = DnsServer::start().await.unwrap();
    let (a, _sa) = external("a").await;
    let (b, _sb) = external("b").await;
    dns.set(HOST, &[a], 30);
    dns.set("other.example.test", &[b], 30);
    let other_vip = "127.97.0.5";
    let entry = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: api\n  namespace: {NS}\n  labels: {{istio.io/use-waypoint: waypoint}}\nspec:\n  hosts: [{HOST}, other.example.test]\n  location: MESH_EXTERNAL\n  resolution: DNS\n  ports:\n  - {{number: 80, name: http, protocol: HTTP, targetPort: 8080}}\nstatus:\n  addresses:\n  - {{value: {SE_VIP}, host: {HOST}}}\n  - {{value: {other_vip}, host: other.example.test}}\n"
    );
    let server: &'static str = Box::leak(dns.addr.to_string().into_boxed_str());
    let h = Harness::start(Spec {
        extra_yaml: vec![entry],
        extra_args: vec!["--dns-server", server],
        ..Spec::default()
    })
    .await;
    until_answered_by(&h, "a", Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let conn = h.client().connect().await.unwrap();
        let mut http = conn
            .http1(format!("{other_vip}:80").parse().unwrap())
            .await
            .unwrap();
        let req = http::Request::get("/")
            .header("host", "other.example.test")
            .body(filters::body::empty())
            .unwrap();
        let resp = http.send_request(req).await.unwrap();
        if resp.status() == 200 {
            assert_eq!(json(resp).await["pod"], "b");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "other.example.test never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(send(&h).await.1.as_deref(), Some("a"));
}
