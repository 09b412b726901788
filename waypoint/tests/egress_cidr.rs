//! A ServiceEntry whose `addresses` hold a CIDR range (`10.1.0.0/24`): ztunnel, given the
//! Service's address with its prefix length (istiod's `toNetworkAddressFromCidr`,
//! pilot/pkg/serviceregistry/ambient/helpers.go), sends traffic for any address inside the
//! range to the waypoint with the destination itself as the CONNECT authority. The
//! waypoint serves each such tunnel as the ServiceEntry: its routes and policies, and its
//! upstream (the original destination for `resolution: NONE`, the endpoints for STATIC).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use common::*;
use testkit::echo::EchoIdentity;

/// Two fresh loopback addresses in one /24 (each with a plain echo server on 8080, named
/// `first` / `second`), and that /24. Each address is taken by binding its server, not by
/// checking first: tests running at the same time may look at the same /24.
async fn two_servers_in_one_range() -> ([IpAddr; 2], String, [tokio::task::JoinHandle<()>; 2]) {
    let serve = |ip: IpAddr, name: &'static str| {
        testkit::echo::serve_plain(
            SocketAddr::new(ip, 8080),
            EchoIdentity {
                pod: name.into(),
                namespace: "internet".into(),
            },
        )
    };
    let mut first = None;
    for _ in 0..50 {
        let ip = testkit::free_loopback_ip(8080);
        if let Ok(server) = serve(ip, "first").await {
            first = Some((ip, server));
            break;
        }
    }
    let (first, s1) = first.expect("a free loopback address");
    let IpAddr::V4(v4) = first else {
        unreachable!("loopback v4")
    };
    let [a, b, c, d] = v4.octets();
    let mut second = None;
    for h in (1..=254u8).filter(|h| *h != d) {
        let ip = IpAddr::V4(Ipv4Addr::new(a, b, c, h));
        if let Ok(server) = serve(ip, "second").await {
            second = Some((ip, server));
            break;
        }
    }
    let (second, s2) = second.expect("a free address in the /24");
    ([first, second], format!("{a}.{b}.{c}.0/24"), [s1, s2])
}

fn service_entry(cidr: &str, resolution: &str, endpoints: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: range\n  namespace: {NS}\n  labels: {{istio.io/use-waypoint: waypoint}}\nspec:\n  hosts: [range.example.test]\n  addresses: [{cidr}]\n  location: MESH_EXTERNAL\n  resolution: {resolution}\n  ports:\n  - {{number: 80, name: http, protocol: HTTP, targetPort: 8080}}\n  - {{number: 9000, name: tcp, protocol: TCP, targetPort: 8080}}\n{endpoints}"
    )
}

/// Whether a tunnel to `to` is refused (no Service or pod the waypoint serves there).
async fn refused(h: &Harness, to: SocketAddr) -> bool {
    let conn = h.client().connect().await.unwrap();
    conn.http1(to).await.is_err()
}

#[tokio::test]
async fn resolution_none_sends_each_address_of_the_range_to_itself() {
    let (ips, cidr, _servers) = two_servers_in_one_range().await;
    let h = Harness::start(Spec {
        extra_yaml: vec![service_entry(&cidr, "NONE", "")],
        ..Spec::default()
    })
    .await;
    for (ip, name) in ips.iter().zip(["first", "second"]) {
        for port in [80, 9000] {
            assert_eq!(
                answer_of(&h, SocketAddr::new(*ip, port), "range.example.test").await,
                (200, Some(name.to_string())),
                "{ip}:{port}"
            );
        }
    }
    // Outside the range, or a port the entry does not have: not served.
    let IpAddr::V4(v4) = ips[0] else {
        unreachable!()
    };
    let [a, b, c, d] = v4.octets();
    let outside = IpAddr::V4(Ipv4Addr::new(a, b, c ^ 1, d));
    assert!(refused(&h, SocketAddr::new(outside, 80)).await);
    assert!(refused(&h, SocketAddr::new(ips[0], 81)).await);
}

#[tokio::test]
async fn static_resolution_serves_the_range_with_its_policies_and_endpoints() {
    let (ips, _, _servers) = two_servers_in_one_range().await;
    let endpoints = format!("  endpoints:\n  - address: {}\n", ips[1]);
    let policy = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-admin, namespace: {NS}}}\nspec:\n  targetRefs: [{{group: networking.istio.io, kind: ServiceEntry, name: range}}]\n  action: DENY\n  rules:\n  - to:\n    - operation:\n        paths: [/admin*]\n"
    );
    let h = Harness::start(Spec {
        extra_yaml: vec![service_entry("127.97.0.0/24", "STATIC", &endpoints), policy],
        ..Spec::default()
    })
    .await;
    for last in [1u8, 77, 254] {
        let to = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 97, 0, last)), 80);
        let conn = h.client().connect().await.unwrap();
        let mut http = conn.http1(to).await.unwrap();
        let denied = http.send_request(get("/admin/users")).await.unwrap();
        assert_eq!(denied.status(), 403, "{to}");
        let req = http::Request::get("/get")
            .header("host", "range.example.test")
            .body(filters::body::empty())
            .unwrap();
        let ok = http.send_request(req).await.unwrap();
        assert_eq!(ok.status(), 200, "{to}");
        let echo = json(ok).await;
        // The endpoint, whichever address of the range was asked for.
        assert_eq!(echo["pod"], "second", "{to}");
        assert_eq!(echo["host"], "range.example.test", "{to}: {echo}");
    }
    assert!(refused(&h, "127.97.1.1:80".parse().unwrap()).await);
}
