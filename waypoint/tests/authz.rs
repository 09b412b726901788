//! AuthorizationPolicy enforcement end to end over HBONE.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use testkit::mesh::Port;
use testkit::ztunnel::App;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn policy(name: &str, target: &str, body: &str) -> String {
    format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: {NS}\n{body}spec:\n  targetRefs:\n  - {target}\n")
}

async fn start(policies: Vec<String>) -> Harness {
    Harness::start(Spec {
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
        extra_yaml: policies,
        ..Spec::default()
    })
    .await
}

/// A DENY policy on `/admin*` of the echo Service.
fn deny_admin() -> String {
    policy("deny-admin", "{group: \"\", kind: Service, name: echo}", "").replace(
        "spec:\n",
        "spec:\n  action: DENY\n  rules:\n  - to: [{operation: {paths: [\"/admin*\"]}}]\n",
    )
}

/// Waits (at most 5 s) until `path` answers `want`.
async fn until_status(h: &Harness, path: &str, want: u16, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while status(h, path).await != want {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status(h: &Harness, path: &str) -> u16 {
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    http.send_request(get(path))
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn deny_and_allow_policies_on_gateway_and_service() {
    let deny_admin = policy(
        "deny-admin",
        "{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}",
        "",
    )
    .replace(
        "spec:\n",
        "spec:\n  action: DENY\n  rules:\n  - to: [{operation: {paths: [\"/admin*\"]}}]\n",
    );
    let allow_sleep = policy("allow-sleep", "{group: \"\", kind: Service, name: echo}", "")
        .replace("spec:\n", "spec:\n  rules:\n  - from: [{source: {principals: [\"cluster.local/ns/default/sa/sleep\"]}}]\n");
    let h = start(vec![deny_admin, allow_sleep]).await;
    assert_eq!(status(&h, "/public").await, 200);
    assert_eq!(status(&h, "/admin").await, 403);
    // Normalized before matching: these are /admin too.
    assert_eq!(status(&h, "/%61dmin").await, 403);
    assert_eq!(status(&h, "/public/../admin/x").await, 403);
    assert_eq!(status(&h, "/bad%00path").await, 400);
    // Encoded twice: one decoding gives `/%61dmin`, which an app decoding once reads as
    // `/admin`; refused rather than matched as another path.
    assert_eq!(status(&h, "/%%36%31dmin").await, 400);
    assert_eq!(status(&h, "/%%30%30").await, 400);
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let resp = http.send_request(get("/admin")).await.unwrap();
    assert_eq!(body_bytes(resp).await, "RBAC: access denied");

    // Another identity is not allowed by the Service's ALLOW policy.
    let other =
        h.ca.issue(&filters::model::Identity::new(
            "cluster.local",
            NS,
            "intruder",
        ))
        .unwrap();
    let conn = h
        .client_with(other.certs().unwrap())
        .connect()
        .await
        .unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    assert_eq!(
        http.send_request(get("/public")).await.unwrap().status(),
        403
    );

    // The backend saw the normalized path.
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let resp = http.send_request(get("/a/./b/../c%7e")).await.unwrap();
    assert_eq!(json(resp).await["path"], "/a/c~");

    // Decisions are counted, per policy too.
    assert!(h.stat("authz.denied").await >= 4);
    assert!(h.stat("authz.policy.default/deny-admin.matched").await >= 3);
    assert!(h.stat("authz.allowed").await >= 2);
}

#[tokio::test]
async fn dry_run_and_selector_policies_are_not_enforced() {
    let dry = policy(
        "dry",
        "{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}",
        "  annotations:\n    istio.io/dry-run: \"true\"\n",
    )
    .replace("spec:\n", "spec:\n  action: DENY\n  rules:\n  - {}\n");
    let selector = format!("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: ztunnel-only\n  namespace: {NS}\nspec:\n  selector:\n    matchLabels: {{app: echo}}\n  action: DENY\n  rules:\n  - {{}}\n");
    let h = start(vec![dry, selector]).await;
    assert_eq!(status(&h, "/anything").await, 200);
}

#[tokio::test]
async fn tcp_tunnels_are_denied_by_l4_rules() {
    let deny_tcp = policy("deny-port", "{group: \"\", kind: Service, name: echo}", "").replace(
        "spec:\n",
        "spec:\n  action: DENY\n  rules:\n  - to: [{operation: {ports: [\"9000\"]}}]\n",
    );
    let h = start(vec![deny_tcp]).await;
    let conn = h.client().connect().await.unwrap();
    let mut tunnel = conn.tunnel(authority(9000), &[]).await.unwrap();
    let _ = tunnel.write_all(b"hello").await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut buf))
        .await
        .expect("closed promptly");
    assert!(
        read.is_err() || buf.is_empty(),
        "a denied TCP tunnel carries nothing back"
    );
    // HTTP on the other port is unaffected.
    assert_eq!(status(&h, "/").await, 200);
}

#[tokio::test]
async fn request_authentication_and_request_principals() {
    use testkit::jwt::{now, JwtIssuer};
    let issuer = JwtIssuer::new("https://issuer.example", "k1");
    let stranger = JwtIssuer::new("https://issuer.example", "k1");
    let other = JwtIssuer::new("https://other.example", "k9");
    let jwks = serde_json::to_string(issuer.jwks()).unwrap();
    let ra = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata:\n  name: jwt\n  namespace: {NS}\nspec:\n  targetRefs:\n  - {{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}}\n  jwtRules:\n  - issuer: https://issuer.example\n    audiences: [echo]\n    jwks: {jwks}\n    outputClaimToHeaders:\n    - {{header: x-jwt-sub, claim: sub}}\n"
    );
    let allow = policy("require-jwt", "{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}", "").replace(
        "spec:\n",
        "spec:\n  rules:\n  - to: [{operation: {paths: [\"/public\"]}}]\n  - from: [{source: {requestPrincipals: [\"https://issuer.example/alice\"]}}]\n    to: [{operation: {paths: [\"/secure\"]}}]\n",
    );
    let h = start(vec![ra, allow]).await;
    let call = |path: &'static str, token: Option<String>| {
        let client = h.client();
        async move {
            let conn = client.connect().await.unwrap();
            let mut http = conn.http1(authority(80)).await.unwrap();
            let mut b = http::Request::get(path).header("host", "echo");
            if let Some(t) = token {
                b = b.header("authorization", format!("Bearer {t}"));
            }
            let resp = http
                .send_request(b.body(filters::body::empty()).unwrap())
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, body_bytes(resp).await)
        }
    };
    let exp = now() + 600;
    let good = issuer.token(serde_json::json!({"sub": "alice", "aud": "echo", "exp": exp}));
    assert_eq!(
        call("/public", None).await.0,
        200,
        "no token: unauthenticated, policy allows /public"
    );
    assert_eq!(
        call("/secure", None).await.0,
        403,
        "no token: no request principal"
    );
    let (status, body) = call("/secure", Some(good.clone())).await;
    assert_eq!(status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["headers"]["X-Jwt-Sub"][0], "alice");
    assert!(
        seen["headers"].get("Authorization").is_none(),
        "the token is not forwarded"
    );
    let bob = issuer.token(serde_json::json!({"sub": "bob", "aud": "echo", "exp": exp}));
    assert_eq!(
        call("/secure", Some(bob)).await.0,
        403,
        "valid token, other principal"
    );
    let forged = stranger.token(serde_json::json!({"sub": "alice", "aud": "echo", "exp": exp}));
    let (status, body) = call("/public", Some(forged)).await;
    assert_eq!(
        status, 401,
        "a present but invalid token is 401 even where policy allows"
    );
    assert_eq!(body, "Jwt verification fails");
    let expired =
        issuer.token(serde_json::json!({"sub": "alice", "aud": "echo", "exp": now() - 3600}));
    assert_eq!(call("/secure", Some(expired)).await.0, 401);
    let wrong_aud = issuer.token(serde_json::json!({"sub": "alice", "aud": "other", "exp": exp}));
    assert_eq!(call("/secure", Some(wrong_aud)).await.0, 401);
    let unknown = other.token(serde_json::json!({"sub": "alice", "exp": exp}));
    let (status, body) = call("/public", Some(unknown)).await;
    assert_eq!(
        (status, body.as_ref()),
        (401, b"Jwt issuer is not configured".as_ref())
    );
    // The default locations include the access_token query parameter.
    let url: &'static str = Box::leak(format!("/secure?access_token={good}").into_boxed_str());
    assert_eq!(call(url, None).await.0, 200);
}

#[tokio::test]
async fn a_file_written_in_chunks_is_never_applied_half_written() {
    let deny_admin = deny_admin();
    let h = start(vec![deny_admin]).await;
    assert_eq!(status(&h, "/admin").await, 403);
    // The same file written in place in two chunks, the DENY policy last, with a pause
    // between them longer than one poll (100 ms), shorter than the settle time (500 ms).
    let full = std::fs::read_to_string(&h.config).unwrap();
    let cut = full.find("kind: AuthorizationPolicy").unwrap();
    let prefix = full[..full[..cut].rfind("---").unwrap()].to_string();
    let writer = {
        let path = h.config.clone();
        let full = full.clone();
        tokio::spawn(async move {
            use std::io::Write;
            let mut f = std::fs::File::create(&path).unwrap();
            f.write_all(prefix.as_bytes()).unwrap();
            f.flush().unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            f.write_all(&full.as_bytes()[prefix.len()..]).unwrap();
            f.flush().unwrap();
        })
    };
    // Requests to the denied path during and after the write: never allowed.
    let started = std::time::Instant::now();
    let mut tries = 0;
    while started.elapsed() < Duration::from_millis(1200) && tries < 2000 {
        assert_eq!(
            status(&h, "/admin").await,
            403,
            "a half-written file was applied"
        );
        tries += 1;
    }
    writer.await.unwrap();
    assert_eq!(status(&h, "/admin").await, 403);
    assert_eq!(status(&h, "/ok").await, 200);
}

#[tokio::test]
async fn deeply_nested_yaml_is_refused_quickly_at_start_and_at_run_time() {
    // At start-up: the process exits with an error within 2 s.
    let h = start(vec![]).await;
    let nested = h.dir().join("nested.yaml");
    std::fs::write(&nested, "[".repeat(200_000)).unwrap();
    let started = std::time::Instant::now();
    let out = std::process::Command::new(bin())
        .args(["check", "--config"])
        .arg(&nested)
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // At run time: the nested file is refused and the last good configuration keeps
    // serving; the next valid change is applied.
    assert_eq!(status(&h, "/admin").await, 200);
    let good = std::fs::read_to_string(&h.config).unwrap();
    h.write_config(&"[".repeat(200_000));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while h.stat("config.rejected").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the nested file was never refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status(&h, "/admin").await,
        200,
        "the last good configuration serves"
    );
    // A certificate rotation while nested files keep arriving (each refused) is served.
    let served = || async {
        let conn = h.client().connect().await.unwrap();
        conn.peer_certificate().unwrap().to_vec()
    };
    let before = served().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (config, stop) = (h.config.clone(), stop.clone());
        tokio::spawn(async move {
            for i in 0..100 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                std::fs::write(&config, "[".repeat(200_000 + i)).unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let rotated = h.ca.issue(&h.waypoint_id).unwrap();
    std::fs::write(h.dir().join("cert-chain.pem"), &rotated.chain_pem).unwrap();
    std::fs::write(h.dir().join("key.pem"), &rotated.key_pem).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while served().await == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated certificate was not served while nested files were refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    assert_eq!(status(&h, "/admin").await, 200, "still the last good one");
    let deny_admin = deny_admin();
    h.write_config(&format!("{good}\n---\n{deny_admin}"));
    until_status(&h, "/admin", 403, "the valid change was not applied").await;
}

#[tokio::test]
async fn config_history_lists_versions_what_changed_and_why_one_was_refused() {
    let h = start(vec![]).await;
    let good = std::fs::read_to_string(&h.config).unwrap();
    let deny_admin = deny_admin();
    h.write_config(&format!("{good}\n---\n{deny_admin}"));
    until_status(&h, "/admin", 403, "the policy was not applied").await;
    h.write_config("apiVersion: v1\nkind: Service\nmetadata: {name: broken\n");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let entries = loop {
        let (code, body) = h.admin("/config_history").await;
        assert_eq!(code, 200);
        let entries: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
        if entries.iter().any(|e| e["accepted"] == false) {
            break entries;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no rejected entry: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let accepted: Vec<&serde_json::Value> =
        entries.iter().filter(|e| e["accepted"] == true).collect();
    assert!(accepted.len() >= 2, "{entries:?}");
    // The policy change: authorization changed, nothing else.
    let change = accepted.last().unwrap();
    let changes = change["changes"].as_object().unwrap();
    assert!(changes.contains_key("authz"), "{change}");
    assert!(!changes.contains_key("services"), "{change}");
    let refused = entries.iter().find(|e| e["accepted"] == false).unwrap();
    assert!(
        refused["source"].as_str().unwrap().starts_with("file:"),
        "{refused}"
    );
    assert!(!refused["reason"].as_str().unwrap().is_empty(), "{refused}");
    // The refused file changed nothing: the policy still applies.
    assert_eq!(status(&h, "/admin").await, 403);
}
