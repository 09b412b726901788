//! A TCP port tunneled through an HTTP proxy at its endpoint: the `tunneling_config`
//! istiod writes on the port's `tcp_proxy` from the Service's DestinationRule
//! `trafficPolicy.tunnel` (`tunnelingconfig.Apply`, called from
//! `buildWaypointNetworkFilters` in listener_waypoint.go: `hostname` is
//! `net.JoinHostPort(targetHost, targetPort)`, `use_post` is `protocol == "POST"`), served
//! over Delta ADS to a real waypoint process. The endpoint pod (behind HBONE) delivers to a
//! tunneling proxy in front of a TCP echo; the proxy greets after its response head, so an
//! answer of `welcome;hello` proves both the tunnel and the bytes that followed the head.

mod istiod;

use std::time::{Duration, Instant};

use istiod::*;
use serde_json::{json, Value};
use testkit::tunnel_proxy::{TunnelProxy, TunnelRequest};

/// httpbin's TCP port 9000, on the extra pod delivering to `proxy`, with `tunnel` as its
/// tcp_proxy's `tunneling_config`; its cluster has no HTTP protocol options (as istiod
/// writes a TCP port's) unless `cluster` (fields set on the cluster) gives some. `log` is
/// the TCP proxy's access log file.
async fn world(proxy: &TunnelProxy, tunnel: Value, cluster: Value, log: &str) -> World {
    let log = log.to_string();
    start_with_pod(Some(App::Forward(proxy.addr)), |ls, cs, es, extra| {
        tcp_port(ls, cs, es, extra.unwrap(), vec![]);
        edit_cluster(cs, TCP_CLUSTER, |c| {
            c.as_object_mut()
                .unwrap()
                .remove("typed_extension_protocol_options");
            for (k, v) in cluster.as_object().unwrap() {
                c[k] = v.clone();
            }
        });
        fixture::edit_listener(ls, |json| {
            for chain in json["filter_chains"].as_array_mut().unwrap() {
                if chain["name"] == TCP_CHAIN {
                    let tcp = &mut chain["filters"].as_array_mut().unwrap().last_mut().unwrap()
                        ["typed_config"];
                    tcp["tunneling_config"] = tunnel.clone();
                    tcp["access_log"] = json!([{"name": "envoy.access_loggers.file", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                        "path": log,
                        "log_format": {"text_format_source": {"inline_string":
                            "TCP %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %UPSTREAM_CLUSTER%\n"}}}}]);
                }
            }
        });
    })
    .await
}

/// Tunnels to port 9000 until one answers (the waypoint may still be taking the
/// configuration in), within ten seconds; what it answered.
async fn answer(w: &World, want: &[u8]) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let back = tcp_round_trip(w).await;
        if back == want || Instant::now() > deadline {
            return back;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Cluster fields: `protocol` as the HttpProtocolOptions' upstream protocol options.
fn http_options(protocol: Value) -> Value {
    let mut options = json!({
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"});
    for (k, v) in protocol.as_object().unwrap() {
        options[k] = v.clone();
    }
    json!({"typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options}})
}

fn request(version: &'static str, method: &str, target: &str, host: &str) -> TunnelRequest {
    TunnelRequest {
        version,
        method: method.into(),
        target: target.into(),
        host: host.into(),
        scheme: None,
    }
}

#[tokio::test]
async fn a_tunnel_setting_sends_the_tcp_port_through_an_http1_connect() {
    // DestinationRule tunnel {protocol: CONNECT, targetHost: db.example.com, targetPort:
    // 5432} on a TCP port: tunnelingconfig.Apply writes hostname db.example.com:5432.
    let proxy = TunnelProxy::start("127.0.0.1", 200, b"welcome;")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("tcp.log");
    let w = world(
        &proxy,
        json!({"hostname": "db.example.com:5432"}),
        json!({}),
        log.to_str().unwrap(),
    )
    .await;
    assert_eq!(answer(&w, b"welcome;hello").await, b"welcome;hello");
    let requests = proxy.requests();
    assert!(!requests.is_empty());
    assert!(
        requests.iter().all(|r| *r
            == request(
                "HTTP/1.1",
                "CONNECT",
                "db.example.com:5432",
                "db.example.com:5432"
            )),
        "{requests:?}"
    );
    // The access log counts the tunnel's own bytes, not the HTTP heads.
    let want = format!("TCP - 5 13 {TCP_CLUSTER}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().any(|l| l == want) {
            break;
        }
        assert!(Instant::now() < deadline, "no {want:?} in:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_post_tunnel_sends_post_with_the_hostname_as_host() {
    // DestinationRule tunnel {protocol: POST, ...}: tunnelingconfig.Apply sets use_post.
    let proxy = TunnelProxy::start("127.0.0.1", 200, b"welcome;")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("tcp.log");
    let w = world(
        &proxy,
        json!({"hostname": "[fd00::7]:8443", "use_post": true}),
        json!({}),
        log.to_str().unwrap(),
    )
    .await;
    assert_eq!(answer(&w, b"welcome;hello").await, b"welcome;hello");
    assert_eq!(
        proxy.requests().last(),
        Some(&request("HTTP/1.1", "POST", "/", "[fd00::7]:8443"))
    );
}

#[tokio::test]
async fn an_http2_cluster_tunnels_in_an_http2_connect_or_post() {
    // A cluster with HTTP/2 options tunnels in HTTP/2, as Envoy picks the tunnel's codec:
    // explicit HTTP/2 (setH2Options in cluster_builder.go, which `applyH2Upgrade` calls
    // for a DestinationRule `h2UpgradePolicy: UPGRADE` whatever the port's protocol,
    // `shouldH2Upgrade`), or the client's protocol with HTTP/2 options
    // (`setUseDownstreamProtocol`, an unknown-protocol port's clusters).
    let explicit = json!({"explicit_http_config": {"http2_protocol_options": {}}});
    let downstream = json!({"use_downstream_protocol_config": {
        "http_protocol_options": {}, "http2_protocol_options": {}}});
    let connect = request(
        "HTTP/2",
        "CONNECT",
        "db.example.com:5432",
        "db.example.com:5432",
    );
    let post = TunnelRequest {
        scheme: Some("http".into()),
        ..request("HTTP/2", "POST", "/", "db.example.com:5432")
    };
    for (protocol, tunnel, want) in [
        (
            explicit.clone(),
            json!({"hostname": "db.example.com:5432"}),
            connect.clone(),
        ),
        (
            explicit,
            json!({"hostname": "db.example.com:5432", "use_post": true}),
            post,
        ),
        (
            downstream,
            json!({"hostname": "db.example.com:5432"}),
            connect,
        ),
    ] {
        let proxy = TunnelProxy::start("127.0.0.1", 200, b"welcome;")
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("tcp.log");
        let w = world(
            &proxy,
            tunnel,
            http_options(protocol),
            log.to_str().unwrap(),
        )
        .await;
        assert_eq!(answer(&w, b"welcome;hello").await, b"welcome;hello");
        assert_eq!(proxy.requests().last(), Some(&want));
    }
}

#[tokio::test]
async fn a_proxy_refusing_the_tunnel_closes_it_logged_as_upstream_failure() {
    // The proxy answers 403: the tunnel ends with nothing relayed, logged `UF` (Envoy's TCP
    // proxy treats a non-2xx tunnel answer as an upstream connection failure).
    let proxy = TunnelProxy::start("127.0.0.1", 403, b"").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("tcp.log");
    let w = world(
        &proxy,
        json!({"hostname": "db.example.com:5432"}),
        json!({}),
        log.to_str().unwrap(),
    )
    .await;
    let want = format!("TCP UF 0 0 {TCP_CLUSTER}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = Instant::now();
        let back = tcp_round_trip(&w).await;
        assert!(back.is_empty(), "relayed {back:?}");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().any(|l| l == want) {
            assert!(started.elapsed() < Duration::from_secs(5));
            break;
        }
        assert!(Instant::now() < deadline, "no {want:?} in:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(proxy.requests().iter().any(|r| r.method == "CONNECT"));
}

#[tokio::test]
async fn a_proxy_that_never_answers_fails_the_tunnel_at_the_connect_timeout() {
    // The proxy reads the CONNECT and stays silent: the attempt fails once the cluster's
    // connect_timeout (DestinationRule connectionPool.tcp.connectTimeout, here 1s) has
    // passed, logged `UF` (the waypoint bounds the wait for the proxy's answer by it).
    let proxy = TunnelProxy::start("127.0.0.1", 0, b"").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("tcp.log");
    let w = world(
        &proxy,
        json!({"hostname": "db.example.com:5432"}),
        json!({"connect_timeout": "1s"}),
        log.to_str().unwrap(),
    )
    .await;
    let want = format!("TCP UF 0 0 {TCP_CLUSTER}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let started = Instant::now();
        let back = tcp_round_trip(&w).await;
        assert!(back.is_empty(), "relayed {back:?}");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().any(|l| l == want) {
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(900) && took < Duration::from_secs(4),
                "ended after {took:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no {want:?} in:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
