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

/// istiod's DNS cache for a wildcard host (`model.BuildDNSCacheName`).
const DFP_CACHE: &str = "*.example.test_dfp_dns_cache";

/// `buildDFPCluster` (pilot/pkg/networking/core/cluster_builder.go, from
/// `buildWaypointInboundVIPCluster` in cluster_waypoint.go for `resolution: DYNAMIC_DNS`):
/// the `envoy.clusters.dynamic_forward_proxy` custom type over a DNS cache, balanced by the
/// cluster itself; `cache` is merged into the cache configuration.
fn dfp_cluster(c: &mut serde_json::Value, cache: &serde_json::Value) {
    let o = c.as_object_mut().unwrap();
    o.remove("eds_cluster_config");
    o.remove("type");
    let mut dns_cache = json!({"name": DFP_CACHE, "dns_lookup_family": "V4_ONLY"});
    for (k, v) in cache.as_object().unwrap() {
        dns_cache[k] = v.clone();
    }
    o.insert("lb_policy".into(), json!("CLUSTER_PROVIDED"));
    o.insert(
        "cluster_type".into(),
        json!({"name": "envoy.clusters.dynamic_forward_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
            "dns_cache_config": dns_cache}}),
    );
}

/// The chain of a DYNAMIC_DNS Service: the `envoy.filters.http.dynamic_forward_proxy`
/// filter before the router (`BuildWaypointInboundDFPFilter`, pilot/pkg/xds/filters/
/// filters.go, added in listener_builder.go), and virtual host domains restricted to the
/// wildcard host (`buildRouteVHostDomains`, listener_waypoint.go).
fn dfp_chain(ls: &mut Named, cache: &serde_json::Value) {
    let mut dns_cache = json!({"name": DFP_CACHE, "dns_lookup_family": "V4_ONLY"});
    for (k, v) in cache.as_object().unwrap() {
        dns_cache[k] = v.clone();
    }
    fixture::edit_listener(ls, |l| {
        for chain in l["filter_chains"].as_array_mut().unwrap() {
            if !chain["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("inbound-vip|8100|"))
            {
                continue;
            }
            let hcm = &mut chain["filters"][0]["typed_config"];
            for vh in hcm["route_config"]["virtual_hosts"].as_array_mut().unwrap() {
                vh["domains"] = json!(["*.example.test"]);
            }
            let list = hcm["http_filters"].as_array_mut().unwrap();
            let router = list.len() - 1;
            list.insert(router, json!({"name": "envoy.filters.http.dynamic_forward_proxy", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig",
                "dns_cache_config": dns_cache.clone()}}));
        }
    });
}

/// `GET /` to port 8100 with `Host: host`: the status and, on 200, the answering server.
async fn get_host(w: &World, host: &str) -> (u16, Option<String>) {
    let conn = w.client.connect().await.unwrap();
    let mut http = conn
        .http1(SocketAddr::new(VIP.parse().unwrap(), 8100))
        .await
        .unwrap();
    let req = http::Request::get("/")
        .header("host", host)
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let pod = (status == 200).then(|| {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["pod"].as_str().unwrap().to_string()
    });
    (status, pod)
}

async fn start_dfp(dns: &testkit::dns_server::DnsServer, cache: serde_json::Value) -> World {
    let server = dns.addr.to_string();
    start_with_args(None, &["--dns-server", &server], |ls, cs, _, _| {
        edit_cluster(cs, CLUSTER_8100, |c| dfp_cluster(c, &cache));
        dfp_chain(ls, &cache);
    })
    .await
}

/// `TestWaypointAsEgressGatewayForWildcardEntries` (tests/integration/ambient/
/// waypoint_test.go) over istiod's shapes: two hosts under the wildcard, each reached by
/// its Host; a Host outside it matches no virtual host (404); an unresolvable one 503.
#[tokio::test]
async fn the_dynamic_forward_proxy_reaches_each_host_the_request_names() {
    let dns = testkit::dns_server::DnsServer::start().await.unwrap();
    let (a, _sa) = external("a").await;
    let (b, _sb) = external("b").await;
    let (IpAddr::V4(a), IpAddr::V4(b)) = (a, b) else {
        panic!("IPv4 loopback expected")
    };
    dns.set("a.example.test", &[a], 30);
    dns.set("b.example.test", &[b], 30);
    let w = start_dfp(&dns, json!({})).await;
    for _ in 0..3 {
        assert_eq!(
            get_host(&w, "a.example.test:8080").await,
            (200, Some("a".into()))
        );
        assert_eq!(
            get_host(&w, "b.example.test:8080").await,
            (200, Some("b".into()))
        );
    }
    assert_eq!(dns.queries_for("b.example.test"), 1, "cached for the TTL");
    assert_eq!(get_host(&w, "a.example.org:8080").await, (404, None));
    assert_eq!(get_host(&w, "nowhere.example.test:8080").await, (503, None));
    // The other port's EDS cluster still reaches the mesh pod.
    assert_eq!(get(&w, 8000, "/get").await.echo()["pod"], "httpbin-1");
}

/// `max_hosts` (Envoy's DNS cache bound; istiod leaves the default, 1024) takes effect: a
/// new host beyond it is refused with 503, Envoy's "DNS cache overflow".
#[tokio::test]
async fn the_dns_cache_is_bounded_by_max_hosts() {
    let dns = testkit::dns_server::DnsServer::start().await.unwrap();
    let (a, _sa) = external("a").await;
    let IpAddr::V4(a) = a else {
        panic!("IPv4 loopback expected")
    };
    dns.set("a.example.test", &[a], 30);
    dns.set("b.example.test", &[a], 30);
    let w = start_dfp(&dns, json!({"max_hosts": 1})).await;
    assert_eq!(
        get_host(&w, "a.example.test:8080").await,
        (200, Some("a".into()))
    );
    let conn = w.client.connect().await.unwrap();
    let mut http = conn
        .http1(SocketAddr::new(VIP.parse().unwrap(), 8100))
        .await
        .unwrap();
    let req = http::Request::get("/")
        .header("host", "b.example.test:8080")
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"DNS cache overflow");
    assert_eq!(
        dns.queries_for("b.example.test"),
        0,
        "refused before any lookup"
    );
    // The cached host still answers.
    assert_eq!(
        get_host(&w, "a.example.test:8080").await,
        (200, Some("a".into()))
    );
}

#[tokio::test]
async fn dns_cache_fields_not_implemented_are_nacked_by_field() {
    let w = start(|ls, cs, _| {
        let cache =
            json!({"preresolve_hostnames": [{"address": "a.example.test", "port_value": 80}]});
        edit_cluster(cs, CLUSTER_8100, |c| dfp_cluster(c, &cache));
        dfp_chain(ls, &json!({}));
    })
    .await;
    let e = nack(&w).await;
    assert!(
        e.contains(CLUSTER_8100)
            && e.contains("cluster_type.typed_config.dns_cache_config.preresolve_hostnames"),
        "{e}"
    );
}

/// istiod's ORIGINAL_DST cluster for a ServiceEntry with `resolution: NONE`
/// (`convertResolution`, pilot/pkg/networking/core/cluster.go; `buildCluster` in
/// cluster_builder.go sets `original_dst_lb_config.upstream_port_override` from the port's
/// `targetPort`; `buildWaypointInboundVIPCluster`, cluster_waypoint.go, sets
/// CLUSTER_PROVIDED), with `lb` merged into its `original_dst_lb_config`.
fn original_dst_cluster(c: &mut serde_json::Value, lb: serde_json::Value) {
    let o = c.as_object_mut().unwrap();
    o.remove("eds_cluster_config");
    o.insert("type".into(), json!("ORIGINAL_DST"));
    o.insert("lb_policy".into(), json!("CLUSTER_PROVIDED"));
    let mut config = json!({"upstream_port_override": 8080});
    for (k, v) in lb.as_object().unwrap() {
        config[k] = v.clone();
    }
    o.insert("original_dst_lb_config".into(), config);
}

/// The tunnel to the VIP on port 8100 goes to the VIP itself (the address the client
/// connected to: for `resolution: NONE` the entry's addresses are the real destinations),
/// at the overriding port 8080, over plain TCP.
#[tokio::test]
async fn original_dst_clusters_send_to_the_tunnels_destination() {
    let vip: IpAddr = VIP.parse().unwrap();
    let _at_vip = testkit::echo::serve_plain(
        SocketAddr::new(vip, 8080),
        testkit::echo::EchoIdentity {
            pod: "original-destination".into(),
            namespace: "internet".into(),
        },
    )
    .await
    .unwrap();
    let w =
        start(|_, cs, _| edit_cluster(cs, CLUSTER_8100, |c| original_dst_cluster(c, json!({}))))
            .await;
    for _ in 0..3 {
        let answer = get(&w, 8100, "/get").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.echo()["pod"], "original-destination");
    }
    // The other port's EDS cluster still reaches the mesh pod.
    assert_eq!(get(&w, 8000, "/get").await.echo()["pod"], "httpbin-1");
}

#[tokio::test]
async fn original_dst_from_a_request_header_is_nacked_by_field() {
    let w = start(|_, cs, _| {
        edit_cluster(cs, CLUSTER_8100, |c| {
            original_dst_cluster(c, json!({"use_http_header": true}))
        })
    })
    .await;
    let e = nack(&w).await;
    assert!(
        e.contains(CLUSTER_8100) && e.contains("original_dst_lb_config.use_http_header"),
        "{e}"
    );
}

const TLS_CLUSTER: &str = "inbound-vip|9443|tcp|httpbin.default.svc.cluster.local";
const TLS_CHAIN: &str = "inbound-vip|9443||httpbin.default.svc.cluster.local-tcp";

/// A TLS port 9443 on a DYNAMIC_DNS Service as istiod builds it: a dynamic forward proxy
/// cluster (`buildDFPCluster`, cluster_builder.go: one cluster for HTTP and TLS), a TCP
/// chain whose `sni_dynamic_forward_proxy` filter (`buildSNIDFPFilter`,
/// pilot/pkg/networking/core/networkfilter.go, with `port_value` the Service port) comes
/// before the tcp_proxy (`buildWaypointNetworkFilters`, listener_waypoint.go), and the TLS
/// inspector among the listener filters (`buildWaypointInternal`).
fn tls_dfp_port(ls: &mut Named, cs: &mut Named, port_value: u16) {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use prost::Message;
    let (_, c) = cs.iter().find(|(n, _)| n == CLUSTER_8100).unwrap();
    let mut c = Cluster::decode(c.value.as_slice()).unwrap();
    c.name = TLS_CLUSTER.into();
    cs.push((TLS_CLUSTER.into(), fixture::any(CLUSTER, &c)));
    edit_cluster(cs, TLS_CLUSTER, |c| dfp_cluster(c, &json!({})));
    let filters = json!([
        {"name": "envoy.filters.network.sni_dynamic_forward_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3.FilterConfig",
            "dns_cache_config": {"name": DFP_CACHE, "dns_lookup_family": "V4_ONLY"},
            "port_value": port_value}},
        {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": TLS_CLUSTER, "cluster": TLS_CLUSTER}}
    ]);
    fixture::edit_listener(ls, |l| {
        l["listener_filters"].as_array_mut().unwrap().push(json!({
            "name": "envoy.filters.listener.tls_inspector", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"}}));
        l["filter_chains"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": TLS_CHAIN, "filters": filters.clone()}));
        let map = &mut l["filter_chain_matcher"]["matcher_tree"]["custom_match"]["typed_config"]
            ["range_matchers"][0]["on_match"]["matcher"]["matcher_tree"]["exact_match_map"]["map"];
        map["9443"] = json!({"action": {"name": TLS_CHAIN, "typed_config": {
            "@type": "type.googleapis.com/google.protobuf.StringValue", "value": TLS_CHAIN}}});
    });
}

/// A TLS handshake naming `name` inside a tunnel to the VIP's port 9443, then `GET /`:
/// the answering server's name.
async fn tls_through(w: &World, name: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let conn = w.client.connect().await.unwrap();
    let tunnel = conn
        .tunnel(SocketAddr::new(VIP.parse().unwrap(), 9443), &[])
        .await
        .map_err(std::io::Error::other)?;
    let config = hbone::tls::origination_config(&filters::model::UpstreamTls {
        sni: None,
        auto_sni: false,
        subject_alt_names: vec![],
        auto_san_validation: false,
        roots: filters::model::TlsRoots::Insecure,
        crl: None,
        crl_leaf_only: false,
        client_certificate: None,
        alpn: vec!["http/1.1".into()],
    })
    .unwrap();
    let sni = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(sni, tunnel)
        .await?;
    tls.write_all(
        format!("GET / HTTP/1.1\r\nhost: {name}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut answer = String::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tls.read_to_string(&mut answer),
    )
    .await;
    let (start, end) = (answer.find('{'), answer.rfind('}'));
    let (Some(start), Some(end)) = (start, end) else {
        return Err(std::io::Error::other(format!("no echo answer: {answer}")));
    };
    let v: serde_json::Value =
        serde_json::from_str(&answer[start..=end]).map_err(std::io::Error::other)?;
    Ok(v["pod"].as_str().unwrap_or_default().to_string())
}

/// TLS passthrough by SNI over istiod's shapes (Istio's "basic TLS" case of
/// `TestWaypointAsEgressGatewayForWildcardEntries`): the ClientHello's server name picks
/// the host, resolved through the DNS cache, at `port_value`; TLS is not terminated.
#[tokio::test]
async fn a_tls_port_forwards_by_sni_through_the_dynamic_forward_proxy() {
    let ca = hbone::tls::DevCa::new("external-ca").unwrap();
    let certs = ca
        .issue(&filters::model::Identity::new(
            "cluster.local",
            "internet",
            "api",
        ))
        .unwrap()
        .certs()
        .unwrap();
    let ip = testkit::free_loopback_ip(9443);
    let server = testkit::tls_echo::TlsEcho::start_simple(
        SocketAddr::new(ip, 9443),
        &certs,
        testkit::echo::EchoIdentity {
            pod: "tls-external".into(),
            namespace: "internet".into(),
        },
    )
    .await
    .unwrap();
    let IpAddr::V4(v4) = ip else {
        panic!("IPv4 loopback expected")
    };
    let dns = testkit::dns_server::DnsServer::start().await.unwrap();
    dns.set("a.example.test", &[v4], 30);
    let dns_addr = dns.addr.to_string();
    let w = start_with_args(None, &["--dns-server", &dns_addr], |ls, cs, _, _| {
        tls_dfp_port(ls, cs, 9443)
    })
    .await;
    assert_eq!(
        tls_through(&w, "a.example.test").await.unwrap(),
        "tls-external"
    );
    assert_eq!(server.server_names(), [Some("a.example.test".to_string())]);
    // A name that does not resolve: no upstream, the handshake fails.
    assert!(tls_through(&w, "nowhere.example.test").await.is_err());
}

#[tokio::test]
async fn an_sni_port_value_other_than_the_clusters_is_nacked() {
    let w = start(|ls, cs, _| tls_dfp_port(ls, cs, 443)).await;
    let e = nack(&w).await;
    assert!(e.contains("port_value") && e.contains(TLS_CLUSTER), "{e}");
}

#[tokio::test]
async fn tcp_keepalive_is_set_on_connections_to_external_addresses() {
    // DestinationRule connectionPool.tcp.tcpKeepalive {time: 7s, interval: 3s, probes: 2}
    // on the ServiceEntry's host: cluster.go applyTCPKeepalive / setKeepAliveSettings
    // writes `upstream_connection_options.tcp_keepalive` in whole seconds.
    let (a, _sa) = external("a").await;
    let addrs = [a.to_string()];
    let w = start(|_, cs, _| {
        edit_cluster(cs, CLUSTER_8100, |c| {
            dns_cluster(c, "STRICT_DNS", &addrs);
            c["upstream_connection_options"] = json!({"tcp_keepalive": {
                "keepalive_probes": 2, "keepalive_time": 7, "keepalive_interval": 3}});
        })
    })
    .await;
    assert_eq!(get(&w, 8100, "/get").await.status, 200);
    // The waypoint's pooled connection to the address, idle now, runs a keepalive timer
    // that fires within 7 s (USER_HZ ticks).
    let timers = testkit::tcp_timers::timers_to(SocketAddr::new(a, 8080));
    assert_eq!(timers.len(), 1, "{timers:?}");
    assert_eq!(timers[0].0, testkit::tcp_timers::KEEPALIVE, "{timers:?}");
    assert!(timers[0].1 <= 700, "{timers:?}");
}

/// A ServiceEntry with a CIDR address (`addresses: [<range>]`, `resolution: NONE`) bound
/// to the waypoint. istiod writes the range into `main_internal`'s IP matcher as it is
/// (`buildWaypointInternal`, listener_waypoint.go: each of `GetAllAddressesForProxy`
/// through `ConvertAddressToCidr`, so `prefix_len` 24), in front of the same port map as a
/// VIP; ztunnel sends traffic for any address inside it with that address as the CONNECT
/// authority (the Service's address carries the prefix length,
/// `toNetworkAddressFromCidr`, pilot/pkg/serviceregistry/ambient/helpers.go). Here the
/// httpbin VIP's range becomes a /24 holding two external servers; port 8100 is the
/// ORIGINAL_DST cluster of `resolution: NONE`, port 8000 keeps its EDS cluster.
#[tokio::test]
async fn a_cidr_range_serves_every_address_inside_it() {
    use std::net::Ipv4Addr;
    let first = testkit::free_loopback_ip(8080);
    let IpAddr::V4(v4) = first else {
        unreachable!("loopback v4")
    };
    let [a, b, c, d] = v4.octets();
    let second = (1..=254u8)
        .filter(|h| *h != d)
        .map(|h| IpAddr::V4(Ipv4Addr::new(a, b, c, h)))
        .find(|ip| std::net::TcpListener::bind(SocketAddr::new(*ip, 8080)).is_ok())
        .expect("a free address in the /24");
    let mut servers = Vec::new();
    for (ip, name) in [(first, "first"), (second, "second")] {
        servers.push(
            testkit::echo::serve_plain(
                SocketAddr::new(ip, 8080),
                testkit::echo::EchoIdentity {
                    pod: name.into(),
                    namespace: "internet".into(),
                },
            )
            .await
            .unwrap(),
        );
    }
    let network = format!("{a}.{b}.{c}.0");
    let w = start(|ls, cs, _| {
        edit_cluster(cs, CLUSTER_8100, |c| original_dst_cluster(c, json!({})));
        fixture::edit_listener(ls, |l| {
            let ranges = l["filter_chain_matcher"]["matcher_tree"]["custom_match"]["typed_config"]
                ["range_matchers"]
                .as_array_mut()
                .unwrap();
            let httpbin = ranges
                .iter_mut()
                .find(|r| r["ranges"][0]["address_prefix"] == VIP)
                .expect("the httpbin VIP's range");
            httpbin["ranges"] = json!([{"address_prefix": network, "prefix_len": 24}]);
        });
    })
    .await;
    let through = |to: SocketAddr| {
        let client = w.client.clone();
        async move {
            let conn = client.connect().await.unwrap();
            let Ok(mut http) = conn.http1(to).await else {
                return None;
            };
            let req = http::Request::get("/get")
                .header("host", HOST)
                .body(filters::body::empty())
                .unwrap();
            let resp = http.send_request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let echo: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            Some((status, echo["pod"].as_str().unwrap_or_default().to_string()))
        }
    };
    for (ip, name) in [(first, "first"), (second, "second")] {
        assert_eq!(
            through(SocketAddr::new(ip, 8100)).await,
            Some((200, name.to_string())),
            "{ip}"
        );
    }
    // Port 8000 of any address in the range is httpbin's port 8000: its EDS pod.
    let any = IpAddr::V4(Ipv4Addr::new(a, b, c, d ^ 0x40));
    assert_eq!(
        through(SocketAddr::new(any, 8000)).await,
        Some((200, "httpbin-1".to_string()))
    );
    // Outside the range (and the VIP itself, no longer listed): not served.
    let outside = IpAddr::V4(Ipv4Addr::new(a, b, c ^ 1, d));
    assert_eq!(through(SocketAddr::new(outside, 8100)).await, None);
    assert_eq!(through(format!("{VIP}:8100").parse().unwrap()).await, None);
}
