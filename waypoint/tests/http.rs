//! HTTP through the waypoint: request and response fidelity, h2c, gRPC trailers,
//! WebSocket upgrades, protocol detection, large bodies, pods outside the mesh.

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::BodyExt;
use testkit::mesh::Port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn request_and_response_pass_through() {
    let h = Harness::start(Spec::default()).await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();

    let req = Request::get("/some/path?x=1&y=two")
        .header("host", "echo.default.svc.cluster.local")
        .header("x-custom", "a")
        .header("x-echo-set-header", "x-reply:yes")
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-reply"], "yes");
    let v = json(resp).await;
    assert_eq!(v["path"], "/some/path?x=1&y=two");
    assert_eq!(v["host"], "echo.default.svc.cluster.local");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["headers"]["X-Custom"][0], "a");
    assert_eq!(v["pod"], "echo-0");

    let req = Request::post("/echo-body")
        .header("host", "echo")
        .body(filters::body::full("hello body"))
        .unwrap();
    http.ready().await.unwrap();
    let resp = http.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body_bytes(resp).await, Bytes::from("hello body"));

    http.ready().await.unwrap();
    let resp = http.send_request(get("/status/418")).await.unwrap();
    assert_eq!(resp.status(), 418);
}

#[tokio::test]
async fn h2c_and_grpc_trailers() {
    let h = Harness::start(Spec {
        ports: vec![
            Port {
                name: "http",
                port: 80,
                target: 8080,
            },
            Port {
                name: "grpc",
                port: 9090,
                target: 9090,
            },
        ],
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();

    // h2c with prior knowledge on an http port: answered in HTTP/2, sent to the app in
    // HTTP/1.1 (istiod's `http` ports).
    let mut h2 = conn.h2c(authority(80)).await.unwrap();
    let req = Request::get("http://echo.default.svc.cluster.local/h2?q=1")
        .body(filters::body::empty())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let v = json(resp).await;
    assert_eq!(v["path"], "/h2?q=1");
    assert_eq!(v["host"], "echo.default.svc.cluster.local");
    assert_eq!(v["proto"], "HTTP/1.1");

    // A gRPC unary call: the response trailers must reach the client.
    let mut grpc = conn.h2c(authority(9090)).await.unwrap();
    let message = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    let req = Request::post("http://echo.default.svc.cluster.local/test.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(filters::body::full(message.clone()))
        .unwrap();
    let resp = grpc.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-echo-trailer"], "present");
    // One length-prefixed message: the echo's description of the call it received.
    let data = collected.to_bytes();
    assert_eq!(data[0], 0);
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    assert_eq!(data.len(), len + 5);
    let v: serde_json::Value = serde_json::from_slice(&data[5..]).unwrap();
    assert_eq!(v["path"], "/test.Echo/Say");
    assert_eq!(v["headers"]["Te"][0], "trailers");
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    let h = Harness::start(Spec::default()).await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let req = Request::get("/ws")
        .header("host", "echo")
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    let upgraded = hyper::upgrade::on(resp).await.unwrap();
    let mut io = hyper_util::rt::TokioIo::new(upgraded);
    io.write_all(b"ping over upgrade").await.unwrap();
    let mut buf = [0u8; 17];
    io.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping over upgrade");
}

#[tokio::test]
async fn unknown_protocol_port_detects_http() {
    let h = Harness::start(Spec {
        ports: vec![Port {
            name: "web",
            port: 8000,
            target: 8080,
        }],
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(8000)).await.unwrap();
    let resp = http.send_request(get("/detected")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["path"], "/detected");
    let mut h2 = conn.h2c(authority(8000)).await.unwrap();
    let req = Request::get("http://echo/detected-h2")
        .body(filters::body::empty())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(json(resp).await["proto"], "HTTP/2.0");
}

#[tokio::test]
async fn sixty_four_mib_both_ways_with_bounded_memory() {
    const SIZE: usize = 64 * 1024 * 1024;
    let h = Harness::start(Spec::default()).await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    // Warm up so the baseline includes the connection buffers.
    let resp = http.send_request(get("/bytes?n=1024")).await.unwrap();
    assert_eq!(resp.headers()["content-length"], "1024");
    assert_eq!(body_bytes(resp).await.len(), 1024);
    let baseline = h.wp.rss_kib().unwrap();

    // Upload 64 MiB while the echo streams it back: both directions at once.
    let chunk = Bytes::from(vec![7u8; 256 * 1024]);
    let stream = futures::stream::iter(
        (0..SIZE / chunk.len())
            .map(move |_| Ok::<_, filters::body::BoxError>(http_body::Frame::data(chunk.clone()))),
    );
    let body = filters::body::Body::new(http_body_util::StreamBody::new(stream));
    let req = Request::post("/echo-body")
        .header("host", "echo")
        .header("content-length", SIZE.to_string())
        .body(body)
        .unwrap();
    http.ready().await.unwrap();
    let resp = http.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = 0usize;
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            assert!(data.iter().all(|b| *b == 7));
            got += data.len();
        }
    }
    assert_eq!(got, SIZE);

    // Download 64 MiB, chunked (no length known ahead), on the same keep-alive connection.
    http.ready()
        .await
        .expect("connection reusable after the upload");
    let resp = http
        .send_request(get(&format!("/bytes?n={SIZE}&chunked=1")))
        .await
        .unwrap();
    assert!(resp.headers().get("content-length").is_none());
    let mut got = 0usize;
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            got += data.len();
        }
    }
    assert_eq!(got, SIZE);

    let peak = h.wp.peak_rss_kib().unwrap();
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!("baseline RSS {baseline} KiB, peak {peak} KiB, growth {growth_mib} MiB");
    assert!(
        growth_mib < 48,
        "waypoint memory grew by {growth_mib} MiB for 64 MiB bodies"
    );
}

#[tokio::test]
async fn pods_outside_the_mesh_get_plain_http() {
    let plain_ip = testkit::free_loopback_ip(8080);
    let _server = testkit::echo::serve_plain(
        std::net::SocketAddr::new(plain_ip, 8080),
        testkit::echo::EchoIdentity {
            pod: "plain".into(),
            namespace: NS.into(),
        },
    )
    .await
    .unwrap();
    let plain_pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: plain\n  namespace: {NS}\n  labels:\n    app: plain\nspec:\n  serviceAccountName: plain\nstatus:\n  phase: Running\n  podIP: {plain_ip}\n"
    );
    let plain_svc = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: plain\n  namespace: {NS}\nspec:\n  clusterIP: 127.96.0.20\n  selector:\n    app: plain\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n"
    );
    let h = Harness::start(Spec {
        extra_yaml: vec![plain_pod, plain_svc],
        apps: HashMap::new(),
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1("127.96.0.20:80".parse().unwrap()).await.unwrap();
    let resp = http.send_request(get("/plain")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["pod"], "plain");
}

/// A client that goes away while its request is still upstream leaves no request counted
/// in flight: the request is counted done whether or not a response was ever sent.
#[tokio::test]
async fn abandoned_request_is_not_left_in_flight() {
    let h = Harness::start(Spec::default()).await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let total_before = h.stat("downstream.requests_total").await;
    let pending =
        tokio::spawn(async move { http.send_request(get("/slow/abandoned?delay=3s")).await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while h.stat("downstream.requests_in_flight").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The client gives up: its request, its tunnel and its HBONE connection go away.
    pending.abort();
    drop(conn);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while h.stat("downstream.requests_in_flight").await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned request stayed in flight"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(h.stat("downstream.requests_total").await, total_before + 1);
}

#[tokio::test]
async fn only_websocket_upgrades_are_spliced() {
    let h = Harness::start(Spec::default()).await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    // h2c: the upgrade is removed and the request served as a plain HTTP/1.1 request.
    let req = Request::get("/h2c")
        .header("host", "echo")
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA")
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let v = json(resp).await;
    assert_eq!(v["path"], "/h2c");
    assert!(v["headers"].get("Upgrade").is_none(), "{v}");
    assert!(v["headers"].get("Http2-Settings").is_none(), "{v}");
    http.ready().await.unwrap();
    // Any other protocol: 403, and the connection stays an HTTP connection.
    let req = Request::get("/ws")
        .header("host", "echo")
        .header("connection", "upgrade")
        .header("upgrade", "made-up-protocol")
        .body(filters::body::empty())
        .unwrap();
    let resp = http.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 403);
    let _ = body_bytes(resp).await;
    http.ready().await.unwrap();
    let resp = http.send_request(get("/after")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["path"], "/after");
}

#[tokio::test]
async fn duplicate_host_headers_are_refused_before_anything_is_forwarded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start(Spec::default()).await;
    let conn = h.client().connect().await.unwrap();
    // Raw HTTP/1.1 inside the tunnel: a client library would not send two Host headers.
    let mut tunnel = conn.tunnel(authority(80), &[]).await.unwrap();
    tunnel
        .write_all(b"GET /smuggled HTTP/1.1\r\nHost: echo\r\nHost: admin.internal\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = tunnel.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert_eq!(h.connects(), 0, "nothing reached a pod");
}

#[tokio::test]
async fn headers_sent_too_slowly_are_cut_off() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start(Spec {
        extra_args: vec!["--request-header-timeout", "500ms"],
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut tunnel = conn.tunnel(authority(80), &[]).await.unwrap();
    // One byte every 200 ms: the headers would take seconds to arrive.
    let slow = async {
        for b in b"GET /slowloris HTTP/1.1\r\nHost: echo\r\n" {
            if tunnel.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(1500), slow).await;
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(3), tunnel.read(&mut buf)).await;
    match read {
        Ok(Ok(n)) => {
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(n == 0 || head.starts_with("HTTP/1.1 408"), "{head}");
        }
        Ok(Err(_)) => {}
        Err(_) => panic!("the slow tunnel is still open"),
    }
    assert_eq!(h.connects(), 0, "nothing reached a pod");
    // Normal requests are unaffected.
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    assert_eq!(http.send_request(get("/fine")).await.unwrap().status(), 200);
}

/// Reads the tunnel until the waypoint ends it; false if it is still open after `within`.
async fn ends_within(
    tunnel: &mut (impl AsyncReadExt + Unpin),
    within: std::time::Duration,
) -> bool {
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match tunnel.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_all).await.is_ok()
}

#[tokio::test]
async fn an_h2c_request_whose_headers_arrive_too_slowly_is_cut_off() {
    use std::time::Duration;
    let h = Harness::start(Spec {
        extra_args: vec!["--request-header-timeout", "500ms"],
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut tunnel = conn.tunnel(authority(80), &[]).await.unwrap();
    // The preface, empty SETTINGS, then a HEADERS frame without END_HEADERS (:method GET,
    // :scheme http, :path / from HPACK's static table): the block must go on in
    // CONTINUATION frames, which come a byte every 200 ms.
    tunnel
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    tunnel
        .write_all(b"\0\0\x03\x01\x01\0\0\0\x01\x82\x86\x84")
        .await
        .unwrap();
    let dribble = async {
        for b in b"\0\0\x10\x09\x04\0\0\0\x01\x41\x0eecho.default.svc" {
            if tunnel.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(1500), dribble).await;
    assert!(
        ends_within(&mut tunnel, Duration::from_secs(3)).await,
        "the slow HTTP/2 tunnel is still open"
    );
    assert_eq!(h.connects(), 0, "nothing reached a pod");
}

#[tokio::test]
async fn a_tunnel_to_an_http_port_that_never_sends_a_request_is_closed() {
    use std::time::Duration;
    let h = Harness::start(Spec {
        extra_args: vec!["--request-header-timeout", "500ms"],
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    // Silent, and the h2c preface a byte at a time: both wait on protocol detection.
    let mut silent = conn.tunnel(authority(80), &[]).await.unwrap();
    let mut preface = conn.tunnel(authority(80), &[]).await.unwrap();
    let dribble = async {
        for b in b"PRI * HTTP/2.0\r\n" {
            if preface.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(1500), dribble).await;
    assert!(
        ends_within(&mut preface, Duration::from_secs(3)).await,
        "preface tunnel open"
    );
    assert!(
        ends_within(&mut silent, Duration::from_secs(1)).await,
        "silent tunnel open"
    );
}

#[tokio::test]
async fn an_h2c_request_slower_than_the_header_timeout_still_completes() {
    use std::time::Duration;
    let h = Harness::start(Spec {
        extra_args: vec!["--request-header-timeout", "500ms"],
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut h2 = conn.h2c(authority(80)).await.unwrap();
    // In flight for three times the timeout: the connection is busy, not idle.
    let resp = h2.send_request(get("/slow?delay=1500ms")).await.unwrap();
    assert_eq!(resp.status(), 200);
    body_bytes(resp).await;
    // Idle for less than the timeout, then another request on the same connection.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = h2.send_request(get("/again")).await.unwrap();
    assert_eq!(resp.status(), 200);
    // Idle past the timeout: the waypoint closes the connection with GOAWAY.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        h2.send_request(get("/late")).await.is_err(),
        "idle h2c connection still open"
    );
}

/// An app that speaks only HTTP/1.1 and answers with the version it was spoken to in.
async fn http1_only_app() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = format!("{:?}", req.version());
                        Ok::<_, std::convert::Infallible>(http::Response::new(filters::body::full(
                            body,
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_http2_client_reaches_an_http_port_over_http1() {
    // The port is named `http`: istiod's clusters send HTTP/1.1 to it, whatever the client
    // speaks; an app that only speaks HTTP/1.1 must not see an HTTP/2 preface.
    let app = http1_only_app().await;
    let h = Harness::start(Spec {
        apps: [(8080, testkit::ztunnel::App::Forward(app))].into(),
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let mut h2 = conn.h2c(authority(80)).await.unwrap();
    let req = Request::get("http://echo.default.svc.cluster.local/")
        .body(filters::body::empty())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.version(),
        http::Version::HTTP_2,
        "the client still speaks HTTP/2"
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"HTTP/1.1", "the app was spoken to in HTTP/1.1");
}

#[tokio::test]
async fn request_id_and_forwarded_proto_are_added_and_client_cert_headers_removed() {
    // As Envoy's connection manager does with istiod's waypoint settings:
    // generate_request_id (kept when present), x-forwarded-proto for the plaintext internal
    // listener, forward_client_cert_details SANITIZE.
    let h = Harness::start(Spec::default()).await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let req = Request::get("/get")
        .header("host", "echo.default.svc.cluster.local")
        .header(
            "x-forwarded-client-cert",
            "By=spiffe://evil;URI=spiffe://forged",
        )
        .body(filters::body::empty())
        .unwrap();
    let seen = json(http.send_request(req).await.unwrap()).await;
    let headers = &seen["headers"];
    let id = headers["X-Request-Id"][0].as_str().unwrap_or_default();
    assert_eq!(id.len(), 36, "a UUID: {headers}");
    assert_eq!(headers["X-Forwarded-Proto"][0], "http", "{headers}");
    assert!(
        headers.get("X-Forwarded-Client-Cert").is_none(),
        "{headers}"
    );
    let req = Request::get("/get")
        .header("host", "echo.default.svc.cluster.local")
        .header("x-request-id", "keep-me")
        .body(filters::body::empty())
        .unwrap();
    let seen = json(http.send_request(req).await.unwrap()).await;
    assert_eq!(seen["headers"]["X-Request-Id"][0], "keep-me");
}

#[tokio::test]
async fn the_upstream_http_version_follows_the_port_protocol() {
    // istiod's setUpstreamProtocol: `http` ports go upstream in HTTP/1.1, `http2` (and
    // `grpc`) in HTTP/2, ports of unknown protocol in the client's version.
    let h = Harness::start(Spec {
        ports: vec![
            Port {
                name: "http",
                port: 80,
                target: 8080,
            },
            Port {
                name: "http2-api",
                port: 81,
                target: 8080,
            },
            Port {
                name: "web",
                port: 82,
                target: 8080,
            },
        ],
        ..Spec::default()
    })
    .await;
    let conn = h.client().connect().await.unwrap();
    let cases = [
        (80, false, "HTTP/1.1"),
        (80, true, "HTTP/1.1"),
        (81, false, "HTTP/2.0"),
        (81, true, "HTTP/2.0"),
        (82, false, "HTTP/1.1"),
        (82, true, "HTTP/2.0"),
    ];
    for (port, client_h2, upstream) in cases {
        let resp = if client_h2 {
            let mut h2 = conn.h2c(authority(port)).await.unwrap();
            let req = Request::get("http://echo.default.svc.cluster.local/proto")
                .body(filters::body::empty())
                .unwrap();
            h2.send_request(req).await.unwrap()
        } else {
            let mut h1 = conn.http1(authority(port)).await.unwrap();
            h1.send_request(get("/proto")).await.unwrap()
        };
        assert_eq!(resp.status(), 200, "port {port}");
        let seen = json(resp).await;
        assert_eq!(
            seen["proto"], upstream,
            "port {port}, client HTTP/2 {client_h2}"
        );
    }
}
