//! Local configuration: a DestinationRule's `outlierDetection` and `consistentHash` on a
//! ServiceEntry the waypoint serves (egress), over its listed addresses (`resolution:
//! STATIC`) and over the addresses its host resolves to (`resolution: DNS`, through the
//! test kit's DNS server via `--dns-server`).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use testkit::dns_server::DnsServer;
use testkit::echo::EchoIdentity;

const SE_VIP: &str = "127.97.0.3";
const HOST: &str = "api.example.test";

fn service_entry(resolution: &str, endpoints: &[Ipv4Addr]) -> String {
    let endpoints: String = match endpoints {
        [] => String::new(),
        eps => {
            let list: String = eps
                .iter()
                .map(|ip| format!("  - address: {ip}\n"))
                .collect();
            format!("  endpoints:\n{list}")
        }
    };
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: api\n  namespace: {NS}\n  labels: {{istio.io/use-waypoint: waypoint}}\nspec:\n  hosts: [{HOST}]\n  addresses: [{SE_VIP}]\n  location: MESH_EXTERNAL\n  resolution: {resolution}\n  ports:\n  - {{number: 80, name: http, protocol: HTTP, targetPort: 8080}}\n{endpoints}"
    )
}

/// A DestinationRule for the ServiceEntry's host with this `trafficPolicy` (indented).
fn destination_rule(traffic_policy: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: api\n  namespace: {NS}\nspec:\n  host: {HOST}\n  trafficPolicy:\n{traffic_policy}"
    )
}

const OUTLIER: &str = "    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection:\n      consecutive5xxErrors: 2\n      interval: 1s\n      baseEjectionTime: 30s\n      maxEjectionPercent: 100\n";
const HASH: &str = "    loadBalancer:\n      consistentHash: {httpHeaderName: x-user}\n";

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

/// A server on a fresh loopback address, port 8080, answering every request 503; with the
/// count of requests it got.
async fn failing() -> (Ipv4Addr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let IpAddr::V4(ip) = testkit::free_loopback_ip(8080) else {
        panic!("IPv4 loopback expected")
    };
    let listener = tokio::net::TcpListener::bind((ip, 8080)).await.unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        counter.fetch_add(1, Ordering::SeqCst);
                        let reply =
                            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 3\r\n\r\nbad";
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (ip, hits)
}

async fn start(dns: Option<&DnsServer>, yaml: Vec<String>) -> Harness {
    let mut extra_args = Vec::new();
    if let Some(dns) = dns {
        let server: &'static str = Box::leak(dns.addr.to_string().into_boxed_str());
        extra_args = vec!["--dns-server", server];
    }
    Harness::start(Spec {
        extra_yaml: yaml,
        extra_args,
        ..Spec::default()
    })
    .await
}

/// `GET /` at the ServiceEntry VIP with `x-user: user` if given: the status and, on 200,
/// the server that answered.
async fn send(h: &Harness, user: Option<&str>) -> (u16, Option<String>) {
    let conn = h.client().connect().await.unwrap();
    let vip: SocketAddr = format!("{SE_VIP}:80").parse().unwrap();
    let mut http = conn.http1(vip).await.unwrap();
    let mut req = http::Request::get("/").header("host", HOST);
    if let Some(u) = user {
        req = req.header("x-user", u);
    }
    let req = req.body(filters::body::empty()).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), http.send_request(req))
        .await
        .expect("answered in time")
        .unwrap();
    let status = resp.status().as_u16();
    let pod = match status {
        200 => Some(json(resp).await["pod"].as_str().unwrap().to_string()),
        _ => None,
    };
    (status, pod)
}

/// Sends until a server answers 200, within ten seconds (the name resolved).
async fn until_answered(h: &Harness) {
    let started = Instant::now();
    while send(h, None).await.0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Twelve requests in turn over a healthy and a failing address: the failing one answers
/// twice, is ejected, and the healthy one answers the rest.
async fn failing_address_is_ejected(h: &Harness, hits: &AtomicUsize) {
    let before = hits.load(Ordering::SeqCst);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(send(h, None).await.0);
    }
    assert_eq!(hits.load(Ordering::SeqCst) - before, 2, "{statuses:?}");
    assert!(statuses[4..].iter().all(|s| *s == 200), "{statuses:?}");
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_static_endpoint() {
    let (a, _sa) = external("a").await;
    let (bad, hits) = failing().await;
    let h = start(
        None,
        vec![
            service_entry("STATIC", &[a, bad]),
            destination_rule(OUTLIER),
        ],
    )
    .await;
    failing_address_is_ejected(&h, &hits).await;
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_address_the_host_resolves_to() {
    let dns = DnsServer::start().await.unwrap();
    let (a, _sa) = external("a").await;
    let (bad, hits) = failing().await;
    dns.set(HOST, &[a, bad], 30);
    let h = start(
        Some(&dns),
        vec![service_entry("DNS", &[]), destination_rule(OUTLIER)],
    )
    .await;
    until_answered(&h).await;
    failing_address_is_ejected(&h, &hits).await;
}

#[tokio::test]
async fn consistent_hashing_keeps_each_user_on_one_address_the_host_resolves_to() {
    let dns = DnsServer::start().await.unwrap();
    let (a, _sa) = external("a").await;
    let (b, _sb) = external("b").await;
    dns.set(HOST, &[a, b], 30);
    let h = start(
        Some(&dns),
        vec![service_entry("DNS", &[]), destination_rule(HASH)],
    )
    .await;
    until_answered(&h).await;
    let mut servers = std::collections::HashSet::new();
    for u in 0..20 {
        let user = format!("user-{u}");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let (status, pod) = send(&h, Some(&user)).await;
            assert_eq!(status, 200);
            seen.insert(pod.unwrap());
        }
        assert_eq!(seen.len(), 1, "{user} went to {seen:?}");
        servers.extend(seen);
    }
    assert_eq!(servers.len(), 2, "users spread: {servers:?}");
}
