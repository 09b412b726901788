//! Egress through a wildcard ServiceEntry with `resolution: DYNAMIC_DNS` (Istio's
//! `TestWaypointAsEgressGatewayForWildcardEntries`, tests/integration/ambient/
//! waypoint_test.go): the waypoint forwards each request to the host its `Host` names,
//! resolved through the test kit's DNS server; a host outside the wildcard matches no
//! route (404, as the test there expects), one that does not resolve answers 503 `DF`.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use testkit::dns_server::DnsServer;
use testkit::echo::EchoIdentity;

/// The address istiod allocated to the wildcard host (`status.addresses`).
const SE_VIP: &str = "127.97.0.3";

fn service_entry() -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: wildcard\n  namespace: {NS}\n  labels: {{istio.io/use-waypoint: waypoint}}\nspec:\n  hosts: ['*.example.test']\n  location: MESH_EXTERNAL\n  resolution: DYNAMIC_DNS\n  ports:\n  - {{number: 80, name: http, protocol: HTTP}}\nstatus:\n  addresses:\n  - {{value: {SE_VIP}, host: '*.example.test'}}\n"
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

/// The status and, on 200, the answering server of `GET /` with `Host: host`.
async fn send(h: &Harness, host: &str) -> (u16, Option<String>) {
    answer_of(h, format!("{SE_VIP}:80").parse().unwrap(), host).await
}

async fn until_logged(h: &Harness, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = h.stdout();
        if out.contains(text) {
            return;
        }
        assert!(Instant::now() < deadline, "no log line {text:?}: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn until_counted(h: &Harness, labels: &[(&str, &str)]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = h.prometheus().await;
        if metric(&samples, "istio_requests_total", labels) >= 1.0 {
            return;
        }
        assert!(Instant::now() < deadline, "nothing counted with {labels:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn one_wildcard_entry_reaches_two_hosts_by_their_host_header() {
    let dns = DnsServer::start().await.unwrap();
    let (a, _sa) = external("a").await;
    let (b, _sb) = external("b").await;
    dns.set("a.example.test", &[a], 30);
    dns.set("b.example.test", &[b], 30);
    let server: &'static str = Box::leak(dns.addr.to_string().into_boxed_str());
    let h = Harness::start(Spec {
        extra_yaml: vec![service_entry()],
        extra_args: vec!["--dns-server", server],
        capture_stdout: true,
        ..Spec::default()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            send(&h, "a.example.test:8080").await,
            (200, Some("a".into()))
        );
        assert_eq!(
            send(&h, "b.example.test:8080").await,
            (200, Some("b".into()))
        );
    }
    // Cached for the answer's TTL: one query per host.
    assert_eq!(dns.queries_for("a.example.test"), 1);
    until_counted(
        &h,
        &[
            ("response_code", "200"),
            ("destination_service", "*.example.test"),
        ],
    )
    .await;

    // Outside the wildcard: no route (the test above expects 404 for such a Host).
    assert_eq!(send(&h, "a.example.org:8080").await, (404, None));
    assert_eq!(send(&h, "example.test:8080").await, (404, None));
    until_counted(&h, &[("response_code", "404"), ("response_flags", "NR")]).await;

    // Under the wildcard but not resolvable: 503 DF.
    assert_eq!(send(&h, "nowhere.example.test:8080").await, (503, None));
    until_logged(&h, "DNS resolution failed (503 DF)").await;
    until_counted(&h, &[("response_code", "503"), ("response_flags", "DF")]).await;
}

/// The forward proxy's cache keeps an answer for its TTL, and follows a changed answer
/// once it runs out.
#[tokio::test]
async fn a_changed_answer_is_followed_within_its_ttl() {
    let dns = DnsServer::start().await.unwrap();
    let (a, _sa) = external("a").await;
    let (b, _sb) = external("b").await;
    dns.set("c.example.test", &[a], 1);
    let server: &'static str = Box::leak(dns.addr.to_string().into_boxed_str());
    let h = Harness::start(Spec {
        extra_yaml: vec![service_entry()],
        extra_args: vec!["--dns-server", server],
        ..Spec::default()
    })
    .await;
    assert_eq!(
        send(&h, "c.example.test:8080").await,
        (200, Some("a".into()))
    );
    dns.set("c.example.test", &[b], 1);
    let started = Instant::now();
    loop {
        if send(&h, "c.example.test:8080").await.1.as_deref() == Some("b") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the new answer was not followed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
