//! istiod's clusters for ServiceEntries enrolled in a waypoint, served over Delta ADS to a
//! real waypoint process: `buildWaypointInboundVIPCluster`
//! (pilot/pkg/networking/core/cluster_waypoint.go) picks the discovery type with
//! `convertResolution` (cluster.go: `resolution: DNS` → STRICT_DNS, `DNS_ROUND_ROBIN` →
//! LOGICAL_DNS, `NONE` → ORIGINAL_DST), and `buildCluster` (cluster_builder.go) writes the
//! endpoints inline in `load_assignment` with `dns_lookup_family`, `dns_refresh_rate`,
//! `respect_dns_ttl` and `dns_jitter`. Here the httpbin port 8100 cluster of the shared
//! dump is given that shape, with external plain HTTP servers as its endpoints.

mod istiod;

use istiod::*;
use serde_json::json;

/// An external plain HTTP server (a loopback address standing in for the internet).
async fn external(name: &str) -> (IpAddr, tokio::task::JoinHandle<()>) {
    let ip = testkit::free_loopback_ip(8080);
    let server = testkit::echo::serve_plain(
        SocketAddr::new(ip, 8080),
        testkit::echo::EchoIdentity {
            pod: name.into(),
            namespace: "internet".into(),
        },
    )
    .await
    .unwrap();
    (ip, server)
}

/// Turns the 8100 cluster into istiod's DNS cluster of `kind` over `addresses`.
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

#[tokio::test]
async fn strict_dns_clusters_reach_every_external_address_over_plain_tcp() {
    let (a, _sa) = external("a").await;
    let (b, _sb) = external("b").await;
    let addrs = [a.to_string(), b.to_string()];
    let w =
        start(|_, cs, _| edit_cluster(cs, CLUSTER_8100, |c| dns_cluster(c, "STRICT_DNS", &addrs)))
            .await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let answer = get(&w, 8100, "/get").await;
        assert_eq!(answer.status, 200);
        seen.insert(answer.echo()["pod"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, ["a".to_string(), "b".to_string()].into());
    // The other port's EDS cluster still reaches the mesh pod.
    assert_eq!(get(&w, 8000, "/get").await.echo()["pod"], "httpbin-1");
}

#[tokio::test]
async fn logical_dns_clusters_use_the_first_address() {
    let (a, _sa) = external("a").await;
    let (b, _sb) = external("b").await;
    let addrs = [a.to_string(), b.to_string()];
    let w =
        start(|_, cs, _| edit_cluster(cs, CLUSTER_8100, |c| dns_cluster(c, "LOGICAL_DNS", &addrs)))
            .await;
    for _ in 0..8 {
        assert_eq!(get(&w, 8100, "/get").await.echo()["pod"], "a");
    }
}

/// istiod's STRICT_DNS cluster for a ServiceEntry without endpoints: one endpoint, the
/// host name itself (`NewCDSEndpointBuilder` over the entry's host), resolved by the
/// waypoint through the test DNS server.
#[tokio::test]
async fn a_strict_dns_cluster_naming_a_host_is_resolved_and_followed() {
    let dns = testkit::dns_server::DnsServer::start().await.unwrap();
    let (a, _sa) = external("a").await;
    let (b, _sb) = external("b").await;
    let (IpAddr::V4(a), IpAddr::V4(b)) = (a, b) else {
        panic!("IPv4 loopback expected")
    };
    dns.set("api.example.test", &[a], 1);
    let server = dns.addr.to_string();
    let w = start_with_args(None, &["--dns-server", &server], |_, cs, _, _| {
        edit_cluster(cs, CLUSTER_8100, |c| {
            dns_cluster(c, "STRICT_DNS", &["api.example.test".into()])
        })
    })
    .await;
    let until = |want: &'static str| {
        let w = &w;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
            loop {
                let answer = get(w, 8100, "/get").await;
                if answer.status == 200 && answer.echo()["pod"] == want {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{want} never answered"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    until("a").await;
    dns.set("api.example.test", &[b], 1);
    until("b").await;
}

#[tokio::test]
async fn host_names_among_several_endpoints_are_nacked_by_field() {
    let w = start(|_, cs, _| {
        edit_cluster(cs, CLUSTER_8100, |c| {
            dns_cluster(
                c,
                "STRICT_DNS",
                &["127.0.0.1".into(), "api.example.test".into()],
            )
        })
    })
    .await;
    let e = nack(&w).await;
    assert!(
        e.contains(CLUSTER_8100)
            && e.contains("load_assignment.endpoints[0].lb_endpoints[1].endpoint.address.socket_address.address")
            && e.contains("only as the one endpoint"),
        "{e}"
    );
}
