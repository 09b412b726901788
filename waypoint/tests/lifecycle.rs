//! Configuration reloads, certificate reloads, readiness and admin, graceful shutdown.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hbone::tls::{Certs, DevCa};
use http::Request;
use testkit::mesh::Port;

async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn config_changes_under_load_lose_nothing_and_bad_changes_are_rejected() {
    let h = Harness::start(Spec::default()).await;
    let client = h.client();
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..4 {
        let (client, failures, done, stop) =
            (client.clone(), failures.clone(), done.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let conn = client.connect().await.unwrap();
            let started = Instant::now();
            // Bounded: at most 5,000 requests or 20 s per worker.
            for i in 0..5_000 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(20) {
                    break;
                }
                // Every 10th request opens a new tunnel, resolved against the newest snapshot.
                let ok = async {
                    let mut http = conn.http1(authority(80)).await.ok()?;
                    for _ in 0..10 {
                        http.ready().await.ok()?;
                        let resp = http.send_request(get(&format!("/w{w}/{i}"))).await.ok()?;
                        if resp.status() != 200 {
                            return None;
                        }
                        body_bytes(resp).await;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(())
                }
                .await;
                if ok.is_none() {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let base = h.mesh.clone();
    let v0 = h.stat("config.version").await;
    for i in 0..5u8 {
        let changed = base.clone().service(
            NS,
            &format!("extra-{i}"),
            format!("127.96.1.{}", i + 1).parse().unwrap(),
            "echo",
            &[Port {
                name: "http",
                port: 80,
                target: 8080,
            }],
        );
        h.write_config(&changed.render());
        let want = v0 + u64::from(i) + 1;
        wait_for("config version bump", || async {
            h.stat("config.version").await >= want
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let good_version = h.stat("config.version").await;
    // The newest change is live: its VIP is served.
    let conn = client.connect().await.unwrap();
    let mut http = conn.http1("127.96.1.5:80".parse().unwrap()).await.unwrap();
    assert_eq!(http.send_request(get("/new")).await.unwrap().status(), 200);

    // An invalid change is rejected and the old configuration stays.
    let bad = base.clone().raw(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: broken\n  namespace: default\nspec:\n  clusterIP: 127.96.2.1\n  ports:\n  - port: not-a-number\n",
    );
    let rejected = h.stat("config.rejected").await;
    h.write_config(&bad.render());
    wait_for("rejection", || async {
        h.stat("config.rejected").await > rejected
    })
    .await;
    assert_eq!(h.stat("config.version").await, good_version);
    let mut http = conn.http1("127.96.1.5:80".parse().unwrap()).await.unwrap();
    assert_eq!(
        http.send_request(get("/still")).await.unwrap().status(),
        200
    );

    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let done = done.load(Ordering::Relaxed);
    eprintln!("{done} requests during 5 reloads");
    assert!(done > 100, "load ran ({done} requests)");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    let mut h = Harness::start(Spec::default()).await;
    let conn = h.client().connect().await.unwrap();
    let mut inflight = Vec::new();
    for i in 0..10 {
        let conn = conn.clone();
        inflight.push(tokio::spawn(async move {
            let mut http = conn.http1(authority(80)).await.unwrap();
            let resp = http
                .send_request(get(&format!("/slow/{i}?delay=1s")))
                .await
                .unwrap();
            let status = resp.status();
            let body = body_bytes(resp).await;
            (status, body.len())
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    h.wp.terminate();
    for t in inflight {
        let (status, len) = t.await.unwrap();
        assert_eq!(status, 200);
        assert!(len > 0);
    }
    let code = h.wp.wait_exit(Duration::from_secs(9)).await;
    assert_eq!(code, Some(0), "waypoint exits cleanly after draining");
    eprintln!("drained and exited {:?} after SIGTERM", start.elapsed());
    // The listener is gone.
    assert!(h.client().connect().await.is_err());
}

#[tokio::test]
async fn invalid_configuration_at_start_names_object_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("t").unwrap();
    ca.issue(&filters::model::Identity::new(
        "cluster.local",
        NS,
        "waypoint",
    ))
    .unwrap()
    .write(dir.path())
    .unwrap();
    let config = dir.path().join("mesh.yaml");
    let text = testkit::mesh::MeshYaml::new(NS, "waypoint")
        .raw("apiVersion: v1\nkind: Service\nmetadata:\n  name: echo\n  namespace: default\nspec:\n  clusterIP: 127.96.0.10\n  ports:\n  - port: 80\n    targetPort: 0\n")
        .render();
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--cert-chain")
        .arg(dir.path().join("cert-chain.pem"))
        .arg("--key")
        .arg(dir.path().join("key.pem"))
        .arg("--root-cert")
        .arg(dir.path().join("root-cert.pem"))
        .args([
            "--hbone-addr",
            "127.0.0.1:0",
            "--ready-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Service default/echo (document 3): spec.ports[0].targetPort: must be between 1 and 65535"),
        "{stderr}"
    );
}

#[tokio::test]
async fn readiness_admin_and_quitquitquit() {
    let mut h = Harness::start(Spec::default()).await;
    let (status, _) = testkit::process::http_get(h.wp.ready, "/healthz/ready")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(h.admin("/ready").await.0, 200);
    let (status, dump) = h.admin("/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["waypoint"]["gateway"], "default/waypoint");
    let echo = &dump["services"]["default/echo"];
    assert_eq!(echo["vips"][0], VIP);
    assert_eq!(echo["ports"][0]["protocol"], "http");
    assert_eq!(
        echo["ports"][0]["endpoints"][0]["workload"],
        "default/echo-0"
    );
    let (status, _) = testkit::process::http_call(h.wp.admin, "POST", "/quitquitquit")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(h.wp.wait_exit(Duration::from_secs(9)).await, Some(0));
}

/// Pingora's "fast timeout" starts a clock thread that wakes every 10 ms for the life of the
/// process. The waypoint puts Pingora's timeouts on tokio's timer, so even after connections
/// (whose TLS handshakes run under Pingora's timeout) there is no such thread.
#[tokio::test]
async fn no_clock_thread_after_connections() {
    let h = Harness::start(Spec::default()).await;
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let resp = http.send_request(get("/clock")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut threads = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", h.wp.pid())).unwrap() {
        let comm = std::fs::read_to_string(task.unwrap().path().join("comm")).unwrap_or_default();
        threads.push(comm.trim().to_string());
    }
    assert!(threads.iter().any(|t| t == "hbone"), "{threads:?}");
    assert!(!threads.iter().any(|t| t == "Timer thread"), "{threads:?}");
}

#[tokio::test]
async fn certificate_files_are_reloaded() {
    let h = Harness::start(Spec::default()).await;
    let other = DevCa::new("second").unwrap();
    // A client whose certificate comes from a second CA: refused until the waypoint trusts it.
    let issued = other.issue(&h.client_id).unwrap();
    let client_certs = || {
        Certs::from_pem(
            issued.chain_pem.as_bytes(),
            issued.key_pem.as_bytes(),
            h.ca.root_pem().as_bytes(),
        )
        .unwrap()
    };
    let refused = |c: testkit::client::HboneClient| async move {
        match c.connect().await {
            Err(_) => true,
            Ok(conn) => conn.tunnel(authority(80), &[]).await.is_err(),
        }
    };
    assert!(refused(h.client_with(client_certs())).await);

    // Rotate: new leaf for the waypoint, roots now include the second CA.
    let rotated = h.ca.issue(&h.waypoint_id).unwrap();
    std::fs::write(h.dir().join("cert-chain.pem"), &rotated.chain_pem).unwrap();
    std::fs::write(h.dir().join("key.pem"), &rotated.key_pem).unwrap();
    std::fs::write(
        h.dir().join("root-cert.pem"),
        format!("{}{}", h.ca.root_pem(), other.root_pem()),
    )
    .unwrap();
    wait_for("trust of the second CA", || async {
        !refused(h.client_with(client_certs())).await
    })
    .await;
    // Existing clients keep working after the rotation.
    let conn = h.client().connect().await.unwrap();
    let mut http = conn.http1(authority(80)).await.unwrap();
    let req = Request::get("/after-rotation")
        .header("host", "echo")
        .body(filters::body::empty())
        .unwrap();
    assert_eq!(http.send_request(req).await.unwrap().status(), 200);

    // A broken file keeps the current certificates.
    std::fs::write(h.dir().join("key.pem"), "garbage").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !refused(h.client()).await,
        "a broken key file must not replace working certificates"
    );
}

#[tokio::test]
async fn dev_ca_subcommand() {
    let h = Harness::start(Spec::default()).await;
    // `waypoint dev-ca` writes loadable SPIFFE certificates and keeps its root on re-runs.
    let ca_dir = h.dir().join("ca");
    let run = |id: &str| {
        std::process::Command::new(bin())
            .args(["dev-ca", "--out"])
            .arg(&ca_dir)
            .args(["--identity", id])
            .output()
            .unwrap()
    };
    assert!(run("spiffe://cluster.local/ns/a/sa/one").status.success());
    let root = std::fs::read(ca_dir.join("root-cert.pem")).unwrap();
    assert!(run("spiffe://cluster.local/ns/b/sa/two").status.success());
    assert_eq!(std::fs::read(ca_dir.join("root-cert.pem")).unwrap(), root);
    let store = hbone::tls::CertStore::load(hbone::tls::CertPaths {
        cert_chain: ca_dir.join("b.two/cert-chain.pem"),
        key: ca_dir.join("b.two/key.pem"),
        root_cert: ca_dir.join("root-cert.pem"),
    })
    .unwrap();
    assert_eq!(
        store.current().identity.to_string(),
        "spiffe://cluster.local/ns/b/sa/two"
    );
    let bad = run("cluster.local/ns/a/sa/one");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("missing spiffe:// scheme"));
}
