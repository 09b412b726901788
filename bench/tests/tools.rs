//! The development tools end to end, over real sockets: `waypoint-bench request` against
//! a destination ztunnel, and the quickstart demo (which runs the proxy as a child of this
//! executable).

use std::collections::HashMap;

use filters::model::Identity;
use hbone::tls::DevCa;
use testkit::echo::EchoIdentity;
use testkit::ztunnel::{FakeZtunnel, ZtunnelOptions};

const TOOL: &str = env!("CARGO_BIN_EXE_waypoint-bench");

#[tokio::test]
async fn request_sends_one_request_through_an_hbone_server() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("tools").unwrap();
    let pod_id = Identity::new("cluster.local", "default", "echo");
    let client_id = Identity::new("cluster.local", "default", "sleep");
    let pod_certs = ca.issue(&pod_id).unwrap();
    let pod = FakeZtunnel::start_fresh(|ip| ZtunnelOptions {
        ip,
        certs: pod_certs.certs().unwrap(),
        allowed_caller: Some(client_id.clone()),
        who: EchoIdentity {
            pod: "echo-0".into(),
            namespace: "default".into(),
        },
        apps: HashMap::new(),
    })
    .await
    .unwrap();
    ca.issue(&client_id).unwrap().write(dir.path()).unwrap();
    let request = |identity: &Identity| {
        tokio::process::Command::new(TOOL)
            .arg("request")
            .args(["--addr", &format!("{}:15008", pod.ip)])
            .args(["--authority", &format!("{}:8080", pod.ip)])
            .args(["--server-identity", &identity.to_string()])
            .arg("--cert-chain")
            .arg(dir.path().join("cert-chain.pem"))
            .arg("--key")
            .arg(dir.path().join("key.pem"))
            .arg("--root-cert")
            .arg(dir.path().join("root-cert.pem"))
            .args(["-H", "x-debug: 1", "--host", "echo.default", "/by/hand?q=1"])
            .output()
    };
    let out = request(&pod_id).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("HTTP/1.1 200 OK"), "{stdout}");
    assert!(stdout.contains(r#""path":"/by/hand?q=1""#), "{stdout}");
    assert!(stdout.contains(r#""pod":"echo-0""#), "{stdout}");

    // A server that is not who we expect is refused, with a reason.
    let stranger = Identity::new("cluster.local", "default", "someone-else");
    let out = request(&stranger).await.unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HBONE connect"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn demo_runs_a_waypoint_and_round_robins_across_two_pods() {
    let out = std::process::Command::new(TOOL)
        .args(["--log-level", "warn", "demo", "--requests", "200"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3. waypoint ready"), "{stdout}");
    for pod in ["echo-1", "echo-2"] {
        assert!(
            stdout.contains(&format!("from pod \"{pod}\"")),
            "no answer from {pod}:\n{stdout}"
        );
    }
    assert!(stdout.contains("waypoint exited with Some(0)"), "{stdout}");
    // The allocations per request are counted (deterministic: the same count run after
    // run) and held under issue 22's target of at most 15: 11.7 with these 200 requests
    // since plain tunnel requests are served by the tunnel's own HTTP/1.1 server (not
    // hyper's: its read buffer and header map) and a tunnel's requests reuse one request log
    // (14.6 before; 20.2 before plain upstream HTTP/1.1 stopped going through hyper's client
    // task, the header timer went and request ids came from a shared block; 29.2 before the
    // filter layers stopped boxing their futures).
    let per_request: f64 = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("allocations in the waypoint: "))
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .expect("allocations per request printed");
    eprintln!("allocations per request: {per_request}");
    assert!((1.0..=12.5).contains(&per_request), "{stdout}");
}
