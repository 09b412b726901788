//! A DestinationRule's `outlierDetection` and `consistentHash` on a ServiceEntry served by
//! the waypoint (egress), as istiod writes them into the ServiceEntry's `inbound-vip`
//! cluster, served over Delta ADS to a real waypoint process.
//!
//! Shapes: `buildWaypointInboundVIPCluster` (pilot/pkg/networking/core/cluster_waypoint.go)
//! builds the cluster with `convertResolution` (cluster.go: `resolution: DNS` → STRICT_DNS,
//! `DNS_ROUND_ROBIN` → LOGICAL_DNS; `STATIC` → EDS, which the EDS tests cover) and
//! `buildCluster` (cluster_builder.go: the endpoints inline, from `NewCDSEndpointBuilder`:
//! the entry's endpoint addresses, or its host name when it lists none), then applies the
//! DestinationRule with `applyOutlierDetection` (cluster_traffic_policy.go: success rate
//! off, each consecutive detector enforced at 100, `healthy_panic_threshold` from
//! `minHealthPercent`, 0 by default) and `applyLoadBalancer` (`RING_HASH`/`MAGLEV` for
//! `consistentHash`; the route's `hash_policy` from `ConsistentHashToHashPolicy`,
//! route/route.go). Here the httpbin port 8100 cluster of the shared dump is given those
//! shapes, with external plain HTTP servers on loopback addresses as its endpoints.

mod istiod;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use istiod::*;
use serde_json::json;
use testkit::dns_server::DnsServer;

/// An external plain HTTP echo server on a fresh loopback address, port 8080.
async fn external(name: &str) -> (std::net::Ipv4Addr, tokio::task::JoinHandle<()>) {
    let IpAddr::V4(ip) = testkit::free_loopback_ip(8080) else {
        panic!("IPv4 loopback expected")
    };
    let server = testkit::echo::serve_plain(
        SocketAddr::new(ip.into(), 8080),
        testkit::echo::EchoIdentity {
            pod: name.into(),
            namespace: "internet".into(),
        },
    )
    .await
    .unwrap();
    (ip, server)
}

/// An external server on a fresh loopback address, port 8080, answering every request 503;
/// with the count of requests it got.
async fn failing() -> (std::net::Ipv4Addr, Arc<AtomicUsize>) {
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

/// Turns the 8100 cluster into istiod's `kind` (STRICT_DNS / LOGICAL_DNS) cluster over
/// `addresses` (IP addresses, or one host name), port 8080.
fn dns_cluster(c: &mut serde_json::Value, kind: &str, addresses: &[String]) {
    let lb: Vec<_> = addresses
        .iter()
        .map(|a| json!({"endpoint": {"address": {"socket_address": {"address": a, "port_value": 8080}}}, "load_balancing_weight": 1}))
        .collect();
    let o = c.as_object_mut().unwrap();
    o.remove("eds_cluster_config");
    o.insert("type".into(), json!(kind));
    o.insert("dns_lookup_family".into(), json!("V4_ONLY"));
    o.insert("dns_refresh_rate".into(), json!("60s"));
    o.insert("respect_dns_ttl".into(), json!(true));
    o.insert("dns_jitter".into(), json!("0s"));
    o.insert(
        "load_assignment".into(),
        json!({"cluster_name": CLUSTER_8100,
               "endpoints": [{"locality": {}, "lb_endpoints": lb, "load_balancing_weight": addresses.len()}]}),
    );
}

/// DestinationRule `outlierDetection {consecutive5xxErrors: 2, interval: 1s,
/// baseEjectionTime: <base>, maxEjectionPercent: 100}` as `applyOutlierDetection` writes it.
fn outlier(c: &mut serde_json::Value, base: &str) {
    c["outlier_detection"] = json!({
        "enforcing_success_rate": 0,
        "consecutive_5xx": 2,
        "enforcing_consecutive_5xx": 100,
        "interval": "1s",
        "base_ejection_time": base,
        "max_ejection_percent": 100,
    });
    c["common_lb_config"] = json!({"healthy_panic_threshold": {}});
}

/// The route with the DestinationRule's `consistentHash.httpHeaderName: x-user`.
fn header_hash(ls: &mut Named) {
    fixture::prepend_routes(
        ls,
        8100,
        &[
            json!({"name": "dr.header", "match": {"prefix": "/user"}, "route": {"cluster": CLUSTER_8100,
                 "hash_policy": [{"header": {"header_name": "x-user"}}]}}),
        ],
    );
}

/// Sends `GET /get` until `ok` holds for the answer, within `limit`.
async fn until(w: &World, limit: Duration, ok: impl Fn(&Answer) -> bool) {
    let started = Instant::now();
    loop {
        let a = get(w, 8100, "/get").await;
        if ok(&a) {
            return;
        }
        assert!(started.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pod(a: &Answer) -> Option<String> {
    (a.status == 200).then(|| a.echo()["pod"].as_str().unwrap().to_string())
}

/// Twelve requests in turn over a healthy and a failing address: the failing one answers
/// twice (two consecutive 5xx), is ejected, and the healthy one answers the rest.
async fn failing_address_is_ejected(w: &World, hits: &AtomicUsize) {
    let before = hits.load(Ordering::SeqCst);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(get(w, 8100, "/get").await.status);
    }
    assert_eq!(hits.load(Ordering::SeqCst) - before, 2, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 2);
    assert!(statuses[4..].iter().all(|s| *s == 200), "{statuses:?}");
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_address_of_a_strict_dns_cluster() {
    // A ServiceEntry `resolution: DNS` listing two IP endpoints.
    let (a, _sa) = external("a").await;
    let (bad, hits) = failing().await;
    let addrs = [a.to_string(), bad.to_string()];
    let w = start(|_, cs, _| {
        edit_cluster(cs, CLUSTER_8100, |c| {
            dns_cluster(c, "STRICT_DNS", &addrs);
            outlier(c, "30s");
        })
    })
    .await;
    failing_address_is_ejected(&w, &hits).await;
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_address_a_host_name_resolves_to() {
    // A ServiceEntry `resolution: DNS` without endpoints: its host, resolved by the
    // waypoint (here through the test DNS server).
    let dns = DnsServer::start().await.unwrap();
    let (a, _sa) = external("a").await;
    let (b, _sb) = external("b").await;
    let (bad, hits) = failing().await;
    dns.set("api.example.test", &[a, bad], 1);
    let server = dns.addr.to_string();
    let mut clusters = None;
    let w = start_with_args(None, &["--dns-server", &server], |_, cs, _, _| {
        edit_cluster(cs, CLUSTER_8100, |c| {
            dns_cluster(c, "STRICT_DNS", &["api.example.test".into()]);
            outlier(c, "30s");
        });
        clusters = Some(cs.clone());
    })
    .await;
    until(&w, Duration::from_secs(10), |a| pod(a).is_some()).await;
    failing_address_is_ejected(&w, &hits).await;

    // A configuration push (a changed connect timeout) keeps the ejection.
    let mut cs = clusters.unwrap();
    edit_cluster(&mut cs, CLUSTER_8100, |c| {
        c["connect_timeout"] = json!("7s")
    });
    let acks = || {
        w.server
            .replies()
            .iter()
            .filter(|r| r.type_url == CLUSTER && r.error.is_none())
            .count()
    };
    let served = acks();
    w.server.set(CLUSTER, cs);
    let deadline = Instant::now() + Duration::from_secs(10);
    while acks() == served {
        assert!(Instant::now() < deadline, "the push was never acknowledged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A new answer that keeps the failing address keeps its ejection too (the state is the
    // address's); `b` joins.
    dns.set("api.example.test", &[bad, a, b], 1);
    until(&w, Duration::from_secs(8), |x| {
        pod(x).as_deref() == Some("b")
    })
    .await;
    for _ in 0..9 {
        assert_eq!(get(&w, 8100, "/get").await.status, 200);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 2, "still ejected");

    // An address that leaves the answer loses its state: back, it is tried again (no
    // request in between: the state goes with the answer, not with a pick seeing it).
    dns.set("api.example.test", &[a], 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    dns.set("api.example.test", &[a, bad], 1);
    let deadline = Instant::now() + Duration::from_secs(8);
    while hits.load(Ordering::SeqCst) == 2 {
        assert!(
            Instant::now() < deadline,
            "the returning address was never tried"
        );
        get(&w, 8100, "/get").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_logical_dns_host_is_ejected_as_one_host_whatever_address_it_stands_for() {
    // Envoy's LOGICAL_DNS cluster has one logical host (the first address resolved): outlier
    // detection ejects it, and its ejection outlives a change of address.
    let dns = DnsServer::start().await.unwrap();
    let (a, sa) = external("a").await;
    let (bad, hits) = failing().await;
    dns.set("api.example.test", &[bad], 1);
    let server = dns.addr.to_string();
    let w = start_with_args(None, &["--dns-server", &server], |_, cs, _, _| {
        edit_cluster(cs, CLUSTER_8100, |c| {
            dns_cluster(c, "LOGICAL_DNS", &["api.example.test".into()]);
            outlier(c, "5s");
        });
    })
    .await;
    // Until resolved, 503 without reaching the server; then its two 503s eject it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hits.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "never resolved");
        assert_eq!(get(&w, 8100, "/get").await.status, 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&w, 8100, "/get").await.status, 503);
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    let ejected_at = Instant::now();
    // Ejected: no healthy upstream, the server not asked.
    let a3 = get(&w, 8100, "/get").await;
    assert_eq!(a3.status, 503);
    assert_eq!(String::from_utf8_lossy(&a3.body), "no healthy upstream");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // The name now resolves to a healthy server; the logical host stays ejected.
    dns.set("api.example.test", &[a], 1);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get(&w, 8100, "/get").await.status, 503);
    assert!(ejected_at.elapsed() < Duration::from_secs(5));
    // Once the ejection is over, it is back, at its new address.
    until(&w, Duration::from_secs(8), |x| {
        pod(x).as_deref() == Some("a")
    })
    .await;
    assert!(ejected_at.elapsed() >= Duration::from_millis(4900));
    drop(sa);
}

#[tokio::test]
async fn consistent_hashing_keeps_each_user_on_one_resolved_address() {
    let dns = DnsServer::start().await.unwrap();
    let (a, _sa) = external("a").await;
    let (b, _sb) = external("b").await;
    dns.set("api.example.test", &[a, b], 30);
    let server = dns.addr.to_string();
    for policy in ["RING_HASH", "MAGLEV"] {
        let w = start_with_args(None, &["--dns-server", &server], |ls, cs, _, _| {
            edit_cluster(cs, CLUSTER_8100, |c| {
                dns_cluster(c, "STRICT_DNS", &["api.example.test".into()]);
                c["lb_policy"] = json!(policy);
            });
            header_hash(ls);
        })
        .await;
        until(&w, Duration::from_secs(10), |x| pod(x).is_some()).await;
        let mut servers = std::collections::HashSet::new();
        for u in 0..20 {
            let user = format!("user-{u}");
            let mut seen = std::collections::HashSet::new();
            for _ in 0..4 {
                let x = send(&w, 8100, "GET", "/user", &[("x-user", &user)]).await;
                seen.insert(pod(&x).expect("200"));
            }
            assert_eq!(seen.len(), 1, "{policy}: {user} went to {seen:?}");
            servers.extend(seen);
        }
        assert_eq!(servers.len(), 2, "{policy}: users spread: {servers:?}");
    }
}

#[tokio::test]
async fn consistent_hashing_over_a_strict_dns_clusters_ip_endpoints() {
    // A ServiceEntry `resolution: DNS` listing two IP endpoints, `consistentHash` on it.
    let (a, _sa) = external("a").await;
    let (b, _sb) = external("b").await;
    let addrs = [a.to_string(), b.to_string()];
    let w = start(|ls, cs, _| {
        edit_cluster(cs, CLUSTER_8100, |c| {
            dns_cluster(c, "STRICT_DNS", &addrs);
            c["lb_policy"] = json!("RING_HASH");
        });
        header_hash(ls);
    })
    .await;
    let mut servers = std::collections::HashSet::new();
    for u in 0..20 {
        let user = format!("user-{u}");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..4 {
            let x = send(&w, 8100, "GET", "/user", &[("x-user", &user)]).await;
            seen.insert(pod(&x).expect("200"));
        }
        assert_eq!(seen.len(), 1, "{user} went to {seen:?}");
        servers.extend(seen);
    }
    assert_eq!(servers.len(), 2, "users spread: {servers:?}");
}
