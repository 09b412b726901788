//! DestinationRule from the local configuration, connection settings: HTTP/2 streams
//! per connection, the cap on HTTP/2 connections and keepalive, TCP keepalive, and the limits and hashing of TCP tunnels,
//! as istiod gives them over xDS, over real sockets.

mod common;

use std::collections::HashSet;

use common::*;
use testkit::ztunnel::App;

/// A Harness whose Service `echo` has one `grpc` port (80 → 8080) served by `app`, under
/// a DestinationRule with `connection_pool` (the YAML under `connectionPool:`).
async fn grpc_harness(app: &testkit::h2_app::H2App, connection_pool: &str) -> Harness {
    Harness::start(Spec {
        ports: vec![testkit::mesh::Port {
            name: "grpc",
            port: 80,
            target: 8080,
        }],
        apps: [(8080, App::Forward(app.addr))].into(),
        extra_yaml: vec![destination_rule(&format!(
            "    connectionPool:\n{connection_pool}"
        ))],
        ..Spec::default()
    })
    .await
}

/// GET `path` on the Service's port 80 in its own tunnel: status and body.
async fn fetch(client: testkit::client::HboneClient, path: &str) -> (u16, bytes::Bytes) {
    let conn = client.connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let resp = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        http.send_request(get(path)),
    )
    .await
    .expect("answered in time")
    .unwrap();
    (resp.status().as_u16(), body_bytes(resp).await)
}

#[tokio::test]
async fn max_concurrent_streams_spreads_streams_over_connections() {
    let app = testkit::h2_app::H2App::start(5).await.unwrap();
    let h = grpc_harness(&app, "      http: {maxConcurrentStreams: 2}\n").await;
    let requests: Vec<_> = (0..5)
        .map(|_| tokio::spawn(fetch(h.client(), "/hold")))
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap().0, 200);
    }
    assert_eq!(app.connections(), 3, "5 streams, at most 2 per connection");
    let peaks = app.peaks();
    assert!(peaks.iter().all(|p| *p <= 2), "{peaks:?}");
}

#[tokio::test]
async fn max_connections_caps_http2_connections_and_queues_streams_up_to_pending() {
    let app = testkit::h2_app::H2App::start(1).await.unwrap();
    let h = grpc_harness(
        &app,
        "      tcp: {maxConnections: 1}\n      http: {maxConcurrentStreams: 1, http1MaxPendingRequests: 1, http2MaxRequests: 10}\n",
    )
    .await;
    let first = tokio::spawn(fetch(h.client(), "/gate"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while app.requests() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first request reaches the pod"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // One of the next two waits for the stream; the other overflows while the first is
    // held.
    let mut others = vec![
        tokio::spawn(fetch(h.client(), "/gate")),
        tokio::spawn(fetch(h.client(), "/gate")),
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let i = loop {
        if let Some(i) = others.iter().position(|h| h.is_finished()) {
            break i;
        }
        assert!(std::time::Instant::now() < deadline, "one overflows");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let (status, body) = others.swap_remove(i).await.unwrap();
    assert_eq!(status, 503);
    assert!(body.ends_with(b"reset reason: overflow"), "{body:?}");
    assert_eq!(
        app.requests(),
        1,
        "the waiting request is still at the waypoint"
    );
    app.open_gate();
    assert_eq!(first.await.unwrap().0, 200);
    let (status, body) = others.pop().unwrap().await.unwrap();
    assert_eq!(
        (status, &body[..]),
        (200, &b"0"[..]),
        "served on the first connection"
    );
    assert_eq!(app.connections(), 1);
    assert_eq!(app.peaks(), [1]);
}

#[tokio::test]
async fn http2_keepalive_abandons_a_connection_that_stops_answering() {
    let app = testkit::h2_app::H2App::start(1).await.unwrap();
    let h = grpc_harness(
        &app,
        "      http:\n        http2KeepAlive: {interval: 300ms, timeout: 500ms}\n",
    )
    .await;
    assert_eq!(fetch(h.client(), "/get").await.0, 200);
    app.freeze(0);
    let frozen = std::time::Instant::now();
    while !app.closed(0) {
        assert!(
            frozen.elapsed() < std::time::Duration::from_secs(5),
            "the waypoint kept a connection whose PINGs go unanswered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, body) = fetch(h.client(), "/get").await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"1", "answered on a new connection");
}

#[tokio::test]
async fn an_http2_keepalive_without_a_timeout_is_refused() {
    // On a `grpc` port of its own Service: istiod writes the keepalive only into HTTP/2
    // clusters, and Envoy refuses one without a timeout.
    let (code, stdout) = check_with(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: grpc-svc, namespace: {NS}}}\nspec:\n  clusterIP: 240.240.0.77\n  selector: {{app: echo}}\n  ports: [{{name: grpc, port: 80, protocol: TCP, targetPort: 8080}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: grpc-svc, namespace: {NS}}}\nspec:\n  host: grpc-svc\n  trafficPolicy:\n    connectionPool:\n      http:\n        http2KeepAlive: {{interval: 1s}}\n"
    ))
    .await;
    assert_eq!(code, Some(2), "{stdout}");
    assert!(
        stdout.contains("DestinationRule default/grpc-svc")
            && stdout.contains("connectionPool.http.http2KeepAlive.timeout"),
        "{stdout}"
    );
}

#[tokio::test]
async fn tcp_keepalive_is_set_on_connections_to_pods_outside_the_mesh() {
    // connectionPool.tcp.tcpKeepalive: istiod's setKeepAliveSettings writes
    // `upstream_connection_options.tcp_keepalive`; here the waypoint's own socket to a pod
    // outside the mesh gets SO_KEEPALIVE with these settings.
    let ip = testkit::free_loopback_ip(8080);
    let app = std::net::SocketAddr::new(ip, 8080);
    let _served = testkit::echo::serve_plain(
        app,
        testkit::echo::EchoIdentity {
            pod: "plain-0".into(),
            namespace: NS.into(),
        },
    )
    .await
    .unwrap();
    let pod = testkit::mesh::MeshYaml::default()
        .pod(NS, "plain-0", ip, "echo", "echo", false)
        .render();
    for (rule, keepalive) in [
        (None, false),
        (
            Some("      tcp:\n        tcpKeepalive: {time: 7s, interval: 3s, probes: 2}\n"),
            true,
        ),
    ] {
        let mut extra_yaml = vec![pod.clone()];
        extra_yaml.extend(rule.map(|r| destination_rule(&format!("    connectionPool:\n{r}"))));
        let h = Harness::start(Spec {
            pods: 0,
            extra_yaml,
            ..Spec::default()
        })
        .await;
        let conn = h.client().connect().await.unwrap();
        let mut http = conn.http1(authority(80)).await.unwrap();
        let resp = http.send_request(get("/get")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(json(resp).await["pod"], "plain-0");
        // The waypoint's pooled connection to the app, idle now.
        let timers = testkit::tcp_timers::timers_to(app);
        assert_eq!(timers.len(), 1, "{timers:?}");
        let (kind, when) = timers[0];
        if keepalive {
            assert_eq!(
                kind,
                testkit::tcp_timers::KEEPALIVE,
                "a keepalive timer runs: {timers:?}"
            );
            // USER_HZ is 100 on Linux: the first probe within 7 s.
            assert!(when <= 700, "{timers:?}");
        } else {
            assert_eq!(kind, 0, "no timer on an idle connection: {timers:?}");
        }
        drop(http);
        drop(h);
        // The previous waypoint's connection is gone before the next one starts.
        let since = std::time::Instant::now();
        while !testkit::tcp_timers::timers_to(app).is_empty() {
            assert!(since.elapsed() < std::time::Duration::from_secs(10));
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn tcp_idle_timeout_and_max_connection_duration_close_tcp_tunnels() {
    // connectionPool.tcp.idleTimeout and maxConnectionDuration on a TCP port, as istiod
    // writes them into its tcp_proxy (buildWaypointNetworkFilters, listener_waypoint.go).
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start(Spec {
        ports: vec![testkit::mesh::Port {
            name: "tcp-echo",
            port: 9000,
            target: 9000,
        }],
        apps: [(9000, App::TcpEcho)].into(),
        extra_yaml: vec![destination_rule(
            "    connectionPool:\n      tcp:\n        idleTimeout: 1s\n        maxConnectionDuration: 3s\n",
        )],
        ..Spec::default()
    })
    .await;
    async fn ping(t: &mut hbone::H2Stream) -> bool {
        let mut buf = [0u8; 4];
        t.write_all(b"ping").await.is_ok()
            && matches!(
                tokio::time::timeout(Duration::from_secs(2), t.read_exact(&mut buf)).await,
                Ok(Ok(_)) if &buf == b"ping"
            )
    }
    // Idle: open while there is traffic (every 400 ms for 2 s), closed a second after it
    // stops.
    let conn = h.client().connect().await.unwrap();
    let mut t = conn.tunnel(authority(9000), &[]).await.unwrap();
    for i in 0..5 {
        assert!(ping(&mut t).await, "round trip {i}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(ping(&mut t).await);
    let quiet = Instant::now();
    let mut buf = [0u8; 8];
    let end = tokio::time::timeout(Duration::from_secs(5), t.read(&mut buf)).await;
    assert!(matches!(end, Ok(Ok(0) | Err(_))), "{end:?}");
    assert!(
        quiet.elapsed() >= Duration::from_millis(900),
        "{:?}",
        quiet.elapsed()
    );
    // Duration: a busy tunnel (every 300 ms, bounded) is closed about 3 s after it opened.
    let opened = Instant::now();
    let mut t = conn.tunnel(authority(9000), &[]).await.unwrap();
    let mut rounds = 0;
    while rounds < 40 && ping(&mut t).await {
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let lasted = opened.elapsed();
    assert!(
        rounds < 40 && lasted >= Duration::from_millis(2800) && lasted < Duration::from_secs(7),
        "{rounds} round trips, {lasted:?}"
    );
}

#[tokio::test]
async fn consistent_hash_on_the_source_ip_keeps_each_tcp_client_on_one_pod() {
    // consistentHash.useSourceIp on a TCP port: istiod's tcp_proxy `hash_policy`
    // (maybeSetHashPolicy, networkfilter.go) hashes the client's IP on the port's ring.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start(Spec {
        ports: vec![testkit::mesh::Port {
            name: "tcp-web",
            port: 9000,
            target: 8080,
        }],
        pods: 2,
        extra_yaml: vec![destination_rule(
            "    loadBalancer:\n      consistentHash:\n        useSourceIp: true\n",
        )],
        ..Spec::default()
    })
    .await;
    // An HTTP request carried as TCP bytes: the echo app names its pod.
    let pod_for = |source: String| {
        let client = h.client();
        async move {
            let conn = client.connect().await.unwrap();
            let forwarded = format!("for={source}");
            let mut t = conn
                .tunnel(authority(9000), &[("forwarded", &forwarded)])
                .await
                .unwrap();
            t.write_all(b"GET /who HTTP/1.1\r\nhost: echo\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut got = Vec::new();
            tokio::time::timeout(std::time::Duration::from_secs(5), t.read_to_end(&mut got))
                .await
                .expect("the app answered and closed")
                .unwrap();
            let text = String::from_utf8_lossy(&got).to_string();
            let body: serde_json::Value =
                serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap()).unwrap();
            body["pod"].as_str().unwrap().to_string()
        }
    };
    let mut pods = HashSet::new();
    for c in 1..=12 {
        let source = format!("10.9.0.{c}");
        let first = pod_for(source.clone()).await;
        for _ in 0..3 {
            assert_eq!(pod_for(source.clone()).await, first, "{source} moved");
        }
        pods.insert(first);
    }
    assert_eq!(pods.len(), 2, "clients spread over both pods: {pods:?}");
}

#[tokio::test]
async fn a_tunnel_carries_a_tcp_port_through_an_http_proxy_at_the_endpoint() {
    // trafficPolicy.tunnel on a TCP port, as istiod writes it into the port's tcp_proxy
    // `tunneling_config` (tunnelingconfig.Apply from buildWaypointNetworkFilters): the pod
    // delivers to a tunneling proxy that greets after its response head, then echoes.
    use testkit::tunnel_proxy::{TunnelProxy, TunnelRequest};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A TCP port's cluster has no HTTP options (HTTP/1.1); an unknown-protocol port's has
    // the client's protocol with HTTP/2 options (`setUseDownstreamProtocol`): HTTP/2.
    for (name, protocol, version, method, target) in [
        (
            "tcp-db",
            "CONNECT",
            "HTTP/1.1",
            "CONNECT",
            "db.example.com:5432",
        ),
        ("tcp-db", "POST", "HTTP/1.1", "POST", "/"),
        ("db", "CONNECT", "HTTP/2", "CONNECT", "db.example.com:5432"),
    ] {
        let proxy = TunnelProxy::start("127.0.0.1", 200, b"welcome;")
            .await
            .unwrap();
        let h = Harness::start(Spec {
            ports: vec![testkit::mesh::Port {
                name,
                port: 9000,
                target: 9000,
            }],
            apps: [(9000, App::Forward(proxy.addr))].into(),
            extra_yaml: vec![destination_rule(&format!(
                "    tunnel:\n      protocol: {protocol}\n      targetHost: db.example.com\n      targetPort: 5432\n"
            ))],
            ..Spec::default()
        })
        .await;
        let conn = h.client().connect().await.unwrap();
        let mut t = conn.tunnel(authority(9000), &[]).await.unwrap();
        t.write_all(b"hello").await.unwrap();
        t.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), t.read_to_end(&mut back))
            .await
            .expect("the tunnel ended in time")
            .unwrap();
        assert_eq!(back, b"welcome;hello", "{protocol}");
        assert_eq!(
            proxy.requests(),
            [TunnelRequest {
                version,
                method: method.into(),
                target: target.into(),
                host: "db.example.com:5432".into(),
                scheme: None,
            }]
        );
    }
}

#[tokio::test]
async fn an_invalid_tunnel_is_refused_by_field() {
    // istiod's validateTunnelSettings: protocol CONNECT or POST, a valid target; and not
    // together with proxyProtocol (validateTrafficPolicy).
    for (policy, field) in [
        (
            "    tunnel:\n      protocol: GET\n      targetHost: db\n      targetPort: 1\n",
            "spec.trafficPolicy.tunnel.protocol",
        ),
        (
            "    tunnel:\n      targetHost: db\n      targetPort: 0\n",
            "spec.trafficPolicy.tunnel.targetPort",
        ),
        (
            "    tunnel:\n      targetHost: db\n      targetPort: 1\n    proxyProtocol: {}\n",
            "spec.trafficPolicy.tunnel",
        ),
    ] {
        let (code, stdout) = check_with(&destination_rule(policy)).await;
        assert_eq!(code, Some(2), "{policy}: {stdout}");
        assert!(stdout.contains(field), "{policy}: {stdout}");
    }
}
