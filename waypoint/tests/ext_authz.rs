//! CUSTOM AuthorizationPolicies end to end: a real waypoint asks in-test gRPC and HTTP
//! ext_authz servers (Envoy's protocol) and applies their answers.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use testkit::ext_authz::{GrpcAuthz, HttpAuthz};
use testkit::free_loopback_ip;
use testkit::mesh::{MeshYaml, Port};

const GW: &str = "{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}";

fn svc_ref(name: &str) -> String {
    format!("{{group: \"\", kind: Service, name: {name}}}")
}

fn policy(name: &str, target: &str, spec: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  targetRefs:\n  - {target}\n{spec}")
}

fn mesh_config(providers: &str) -> String {
    let indented: String = providers.lines().map(|l| format!("    {l}\n")).collect();
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: istio\n  namespace: istio-system\ndata:\n  mesh: |\n    extensionProviders:\n{indented}")
}

/// A Service `name` in `ns` at `vip` backed by a pod outside the mesh at `ip`.
fn plain_service(
    ns: &str,
    name: &str,
    vip: &str,
    port_name: &'static str,
    port: u16,
    ip: IpAddr,
) -> Vec<String> {
    let yaml = MeshYaml::default()
        .service(
            ns,
            name,
            vip.parse().unwrap(),
            name,
            &[Port {
                name: port_name,
                port,
                target: port,
            }],
        )
        .pod(ns, &format!("{name}-0"), ip, name, name, false)
        .render();
    vec![yaml]
}

/// Another Service over the echo pods.
fn echo_alias(name: &str, vip: &str) -> String {
    MeshYaml::default()
        .service(
            NS,
            name,
            vip.parse().unwrap(),
            "echo",
            &[Port {
                name: "http",
                port: 80,
                target: 8080,
            }],
        )
        .render()
}

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: bytes::Bytes,
}

async fn send(h: &Harness, vip: &str, req: http::Request<filters::body::Body>) -> Reply {
    let addr = SocketAddr::new(vip.parse().unwrap(), 80);
    let fut = async {
        let conn = h.client().connect().await.unwrap();
        let mut http = conn.http1(addr).await.unwrap();
        let resp = http.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        Reply {
            status,
            headers,
            body: body_bytes(resp).await,
        }
    };
    tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .expect("answered in time")
}

fn request(path: &str, verdict: Option<&str>) -> http::request::Builder {
    let mut b = http::Request::get(path).header("host", "echo.default.svc.cluster.local");
    if let Some(v) = verdict {
        b = b.header("x-ext-authz", v);
    }
    b
}

fn empty(b: http::request::Builder) -> http::Request<filters::body::Body> {
    b.body(filters::body::empty()).unwrap()
}

#[tokio::test]
async fn grpc_provider_allows_denies_and_rewrites() {
    let ip = free_loopback_ip(9000);
    let authz = GrpcAuthz::start(SocketAddr::new(ip, 9000)).await.unwrap();
    let mut yaml = plain_service(
        "authz-system",
        "ext-authz-grpc",
        "127.96.1.1",
        "grpc",
        9000,
        ip,
    );
    yaml.push(mesh_config("- name: grpc\n  envoyExtAuthzGrpc:\n    service: ext-authz-grpc.authz-system.svc.cluster.local\n    port: 9000\n    timeout: 5s\n    includeRequestBodyInCheck: {maxRequestBytes: 64}\n"));
    yaml.push(policy("ext", &svc_ref("echo"), "  action: CUSTOM\n  provider: {name: grpc}\n  rules:\n  - to: [{operation: {paths: [\"/secure*\", \"/echo-body\"]}}]\n"));
    yaml.push(policy(
        "deny-admin",
        GW,
        "  action: DENY\n  rules:\n  - to: [{operation: {paths: [\"/secure/admin*\"]}}]\n",
    ));
    let h = Harness::start(Spec {
        extra_yaml: yaml,
        ..Spec::default()
    })
    .await;

    let r = send(&h, VIP, empty(request("/public", None))).await;
    assert_eq!(r.status, 200);
    assert_eq!(authz.calls(), 0, "not asked when no CUSTOM rule matches");

    let r = send(
        &h,
        VIP,
        empty(request("/secure/x?a=1", Some("allow")).header("x-ext-authz-remove-me", "1")),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.headers["x-ext-authz-down"], "yes",
        "response_headers_to_add reach the client"
    );
    let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        seen["headers"]["X-Ext-Authz-Check-Result"][0], "allowed",
        "OK headers reach the backend"
    );
    assert!(
        seen["headers"].get("X-Ext-Authz-Remove-Me").is_none(),
        "headers_to_remove removed"
    );
    assert_eq!(
        seen["path"], "/secure/x?a=1&authz=ok",
        "query_parameters_to_set applied"
    );
    let check = authz.log.lock().unwrap()[0].clone();
    assert_eq!(check.method, "GET");
    assert_eq!(check.path, "/secure/x?a=1");
    assert_eq!(
        check.source_principal,
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
    assert_eq!(
        check.destination_principal,
        "spiffe://cluster.local/ns/default/sa/waypoint"
    );
    assert_eq!(check.headers["x-ext-authz"], "allow");
    assert_eq!(check.headers["host"], "echo.default.svc.cluster.local");
    assert!(
        check.source_address.contains("127.0.0.1"),
        "{}",
        check.source_address
    );

    let r = send(&h, VIP, empty(request("/secure/x", None))).await;
    assert_eq!(r.status, 401, "the server's denied status");
    assert_eq!(r.body, "denied by ext_authz");
    assert_eq!(r.headers["x-ext-authz-reason"], "denied");

    let before = authz.calls();
    let r = send(&h, VIP, empty(request("/secure/admin", Some("allow")))).await;
    assert_eq!(
        (r.status, r.body.as_ref()),
        (403, b"RBAC: access denied".as_ref()),
        "DENY still applies after ext_authz allows"
    );
    assert_eq!(authz.calls(), before + 1, "CUSTOM is evaluated first");

    let post = http::Request::post("/echo-body")
        .header("host", "echo.default.svc.cluster.local")
        .header("x-ext-authz", "allow")
        .header("content-length", "5")
        .body(filters::body::full("hello"))
        .unwrap();
    let r = send(&h, VIP, post).await;
    assert_eq!(
        (r.status, r.body.as_ref()),
        (200, b"hello".as_ref()),
        "the body still goes upstream"
    );
    let last = authz.log.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.body, "hello", "includeRequestBodyInCheck");
    assert_eq!(last.headers["x-envoy-auth-partial-body"], "false");
}

#[tokio::test]
async fn bodies_buffered_for_checks_are_bounded_by_the_global_limit() {
    let ip = free_loopback_ip(9000);
    let authz = GrpcAuthz::start(SocketAddr::new(ip, 9000)).await.unwrap();
    let mut yaml = plain_service(
        "authz-system",
        "ext-authz-grpc",
        "127.96.1.1",
        "grpc",
        9000,
        ip,
    );
    // Each request may send up to 4 MiB to the check; all together may hold 1 MiB.
    yaml.push(mesh_config("- name: grpc\n  envoyExtAuthzGrpc:\n    service: ext-authz-grpc.authz-system.svc.cluster.local\n    port: 9000\n    includeRequestBodyInCheck: {maxRequestBytes: 4194304}\n"));
    yaml.push(policy("ext", &svc_ref("echo"), "  action: CUSTOM\n  provider: {name: grpc}\n  rules:\n  - to: [{operation: {paths: [\"/echo-body\"]}}]\n"));
    let h = Harness::start(Spec {
        extra_yaml: yaml,
        extra_args: vec!["--body-buffer-limit-mib", "1"],
        ..Spec::default()
    })
    .await;
    let post = |body: Vec<u8>| {
        http::Request::post("/echo-body")
            .header("host", "echo.default.svc.cluster.local")
            .header("x-ext-authz", "allow")
            .header("content-length", body.len().to_string())
            .body(filters::body::full(body))
            .unwrap()
    };
    let r = send(&h, VIP, post(vec![b'x'; 2 * 1024 * 1024])).await;
    assert_eq!(r.status, 503, "{:?}", r.body);
    assert_eq!(r.body, "buffered request bodies over the limit");
    assert_eq!(authz.calls(), 0, "not checked, not queued");
    assert_eq!(h.connects(), 0, "nothing reached a pod");
    // Within the limit the body is checked and forwarded, and the budget was given back.
    for _ in 0..3 {
        let r = send(&h, VIP, post(vec![b'y'; 600 * 1024])).await;
        assert_eq!((r.status, r.body.len()), (200, 600 * 1024));
    }
    assert_eq!(authz.calls(), 3);
}

#[tokio::test]
async fn http_provider_allows_and_denies_with_listed_headers() {
    let ip = free_loopback_ip(8000);
    let authz = HttpAuthz::start(SocketAddr::new(ip, 8000)).await.unwrap();
    let mut yaml = plain_service(
        "authz-system",
        "ext-authz-http",
        "127.96.1.2",
        "http",
        8000,
        ip,
    );
    yaml.push(mesh_config("- name: http\n  envoyExtAuthzHttp:\n    service: ext-authz-http.authz-system.svc.cluster.local\n    port: \"8000\"\n    pathPrefix: /check\n    includeRequestHeadersInCheck: [x-ext-authz]\n    includeAdditionalHeadersInCheck: {x-from-waypoint: \"yes\"}\n    headersToUpstreamOnAllow: [x-ext-authz-check-result, \"x-user*\"]\n    headersToDownstreamOnAllow: [x-ext-authz-down]\n    headersToDownstreamOnDeny: [x-ext-authz-reason]\n"));
    yaml.push(policy("ext-http", GW, "  action: CUSTOM\n  provider: {name: http}\n  rules:\n  - to: [{operation: {paths: [\"/secure*\"]}}]\n"));
    let h = Harness::start(Spec {
        extra_yaml: yaml,
        ..Spec::default()
    })
    .await;

    assert_eq!(
        send(&h, VIP, empty(request("/public", None))).await.status,
        200
    );
    assert_eq!(authz.calls(), 0, "not asked when no CUSTOM rule matches");

    let r = send(
        &h,
        VIP,
        empty(
            request("/secure/x?q=1", Some("allow"))
                .header("cookie", "session=1")
                .header("authorization", "Basic eA=="),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.headers["x-ext-authz-down"], "yes",
        "headersToDownstreamOnAllow"
    );
    assert!(!r.headers.contains_key("x-unlisted"));
    let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        seen["headers"]["X-User"][0], "alice",
        "headersToUpstreamOnAllow"
    );
    assert_eq!(seen["headers"]["X-Ext-Authz-Check-Result"][0], "allowed");
    assert!(seen["headers"].get("X-Unlisted").is_none());
    let check = authz.log.lock().unwrap()[0].clone();
    assert_eq!(check.method, "GET");
    assert_eq!(
        check.path, "/check/secure/x?q=1",
        "pathPrefix + original path"
    );
    assert_eq!(check.headers["x-ext-authz"], "allow");
    assert_eq!(check.headers["host"], "echo.default.svc.cluster.local");
    assert_eq!(check.headers["authorization"], "Basic eA==", "always sent");
    assert_eq!(
        check.headers["x-from-waypoint"], "yes",
        "includeAdditionalHeadersInCheck"
    );
    assert_eq!(check.headers["content-length"], "0");
    assert!(
        !check.headers.contains_key("cookie"),
        "unlisted request headers are not sent"
    );

    let r = send(&h, VIP, empty(request("/secure/x", Some("no")))).await;
    assert_eq!(r.status, 403, "the server's status");
    assert_eq!(r.body, "denied by http ext_authz", "the server's body");
    assert_eq!(
        r.headers["x-ext-authz-reason"], "denied",
        "headersToDownstreamOnDeny"
    );
    assert!(
        !r.headers.contains_key("x-unlisted"),
        "unlisted reply headers stay behind"
    );
}

#[tokio::test]
async fn failures_timeouts_and_invalid_providers() {
    let ip = free_loopback_ip(9000);
    let authz = GrpcAuthz::start(SocketAddr::new(ip, 9000)).await.unwrap();
    let [closed_port] = testkit::free_ports::<1>();
    let mut yaml = plain_service(
        "authz-system",
        "ext-authz-grpc",
        "127.96.1.1",
        "grpc",
        9000,
        ip,
    );
    yaml.push(mesh_config(&format!(
        "- name: slow\n  envoyExtAuthzGrpc: {{service: ext-authz-grpc.authz-system.svc.cluster.local, port: 9000, timeout: 300ms, statusOnError: \"503\"}}\n- name: down-closed\n  envoyExtAuthzGrpc: {{service: 127.0.0.1, port: {closed_port}, timeout: 2s}}\n- name: down-open\n  envoyExtAuthzHttp: {{service: 127.0.0.1, port: {closed_port}, timeout: 2s, failOpen: true}}\n- name: broken\n  envoyExtAuthzGrpc: {{service: x, port: 70000}}\n"
    )));
    let custom = |provider: &str| {
        format!("  action: CUSTOM\n  provider: {{name: {provider}}}\n  rules:\n  - to: [{{operation: {{paths: [\"/secure*\"]}}}}]\n")
    };
    yaml.push(policy("slow", &svc_ref("echo"), &custom("slow")));
    for (svc, vip, provider) in [
        ("echo2", "127.96.0.11", "down-closed"),
        ("echo3", "127.96.0.12", "down-open"),
        ("echo4", "127.96.0.13", "nope"),
        ("echo5", "127.96.0.14", "broken"),
        ("echo6", "127.96.0.15", ""),
    ] {
        yaml.push(echo_alias(svc, vip));
        if !provider.is_empty() {
            yaml.push(policy(
                &format!("custom-{svc}"),
                &svc_ref(svc),
                &custom(provider),
            ));
        }
    }
    let h = Harness::start(Spec {
        extra_yaml: yaml,
        ..Spec::default()
    })
    .await;

    // A slow server: the check times out, statusOnError answers; other traffic is not held up.
    let slow = {
        let client = h.client();
        tokio::spawn(async move {
            let started = Instant::now();
            let conn = client.connect().await.unwrap();
            let mut http = conn.http1(authority(80)).await.unwrap();
            let resp = http
                .send_request(empty(request("/secure/x", Some("slow"))))
                .await
                .unwrap();
            (resp.status().as_u16(), started.elapsed())
        })
    };
    let started = Instant::now();
    assert_eq!(
        send(&h, "127.96.0.15", empty(request("/secure/x", None)))
            .await
            .status,
        200
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "unrelated traffic is not delayed"
    );
    let (status, took) = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 503, "statusOnError after the timeout");
    assert!(
        took < Duration::from_millis(2500),
        "answered at the timeout, not when the server did: {took:?}"
    );
    assert_eq!(
        send(&h, VIP, empty(request("/secure/x", Some("allow"))))
            .await
            .status,
        200,
        "a fast answer within the timeout"
    );
    assert!(authz.calls() >= 2);

    // Unreachable: fails closed with Istio's default 403, or open with failOpen.
    let r = send(
        &h,
        "127.96.0.11",
        empty(request("/secure/x", Some("allow"))),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        send(&h, "127.96.0.11", empty(request("/public", None)))
            .await
            .status,
        200,
        "not asked, so not failing"
    );
    assert_eq!(
        send(&h, "127.96.0.12", empty(request("/secure/x", None)))
            .await
            .status,
        200,
        "failOpen"
    );

    // Unknown or invalid providers: istiod's deny-all for the destination, matching or not.
    for vip in ["127.96.0.13", "127.96.0.14"] {
        for path in ["/secure/x", "/public"] {
            let r = send(&h, vip, empty(request(path, Some("allow")))).await;
            assert_eq!(
                (r.status, r.body.as_ref()),
                (403, b"RBAC: access denied".as_ref()),
                "{vip}{path}"
            );
        }
    }
}

#[tokio::test]
async fn grpc_provider_in_the_mesh_over_hbone_and_for_tcp_tunnels() {
    use std::collections::HashMap;
    use testkit::echo::EchoIdentity;
    use testkit::ztunnel::{App, FakeZtunnel, ZtunnelOptions};

    let authz = GrpcAuthz::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // The authorization server is a pod in the ambient mesh: reached through its ztunnel.
    let h = Harness::start(Spec {
        ports: vec![
            Port {
                name: "http",
                port: 80,
                target: 8080,
            },
            Port {
                name: "tcp-echo",
                port: 9000,
                target: 9000,
            },
        ],
        apps: HashMap::from([(9000, App::TcpEcho)]),
        ..Spec::default()
    })
    .await;
    let authz_pod = FakeZtunnel::start_fresh(|ip| ZtunnelOptions {
        ip,
        certs: h
            .ca
            .issue(&filters::model::Identity::new(
                "cluster.local",
                "authz-system",
                "ext-authz",
            ))
            .unwrap()
            .certs()
            .unwrap(),
        allowed_caller: Some(h.waypoint_id.clone()),
        who: EchoIdentity {
            pod: "ext-authz-0".into(),
            namespace: "authz-system".into(),
        },
        apps: HashMap::from([(9191, App::Forward(authz.addr))]),
    })
    .await
    .unwrap();
    let services = MeshYaml::default()
        .service(
            "authz-system",
            "ext-authz",
            "127.96.1.3".parse().unwrap(),
            "ext-authz",
            &[Port {
                name: "grpc",
                port: 9191,
                target: 9191,
            }],
        )
        .pod(
            "authz-system",
            "ext-authz-0",
            authz_pod.ip,
            "ext-authz",
            "ext-authz",
            true,
        )
        .render();
    let config = h
        .mesh
        .clone()
        .raw(&services)
        .raw(&mesh_config("- name: grpc\n  envoyExtAuthzGrpc: {service: ext-authz.authz-system.svc.cluster.local, port: 9191, timeout: 5s}\n"))
        .raw(&policy("ext", &svc_ref("echo"), "  action: CUSTOM\n  provider: {name: grpc}\n  rules:\n  - to: [{operation: {paths: [\"/secure*\"]}}]\n  - to: [{operation: {ports: [\"9000\"]}}]\n"))
        .render();
    h.write_config(&config);
    // The configuration is watched: wait (bounded) until the policy is in force.
    let mut in_force = false;
    for _ in 0..100 {
        if send(&h, VIP, empty(request("/secure/x", None)))
            .await
            .status
            == 401
        {
            in_force = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(in_force, "the CUSTOM policy never applied");
    let r = send(&h, VIP, empty(request("/secure/x", Some("allow")))).await;
    assert_eq!(r.status, 200);
    assert!(
        authz_pod
            .counters
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "the check went through the authorization pod's ztunnel"
    );

    // A TCP tunnel on the port a CUSTOM rule names is checked with connection attributes
    // only; this server denies what carries no `x-ext-authz: allow`, so the tunnel closes.
    let before = authz.calls();
    let conn = h.client().connect().await.unwrap();
    let mut tunnel = conn.tunnel(authority(9000), &[]).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tunnel.write_all(b"hello").await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut buf))
        .await
        .expect("closed promptly");
    assert!(
        read.is_err() || buf.is_empty(),
        "a denied TCP tunnel carries nothing back"
    );
    assert_eq!(authz.calls(), before + 1);
    let tcp_check = authz.log.lock().unwrap().last().cloned().unwrap();
    assert_eq!(tcp_check.path, "", "no HTTP attributes for TCP");
    assert_eq!(
        tcp_check.source_principal,
        "spiffe://cluster.local/ns/default/sa/sleep"
    );
}
