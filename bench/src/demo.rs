//! `waypoint-bench demo`: everything on loopback, in one command.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use filters::model::Identity;
use hbone::tls::{CertStore, DevCa};
use http::Request;
use http_body_util::BodyExt;
use testkit::client::HboneClient;
use testkit::echo::EchoIdentity;
use testkit::free_loopback_ip;
use testkit::mesh::{MeshYaml, Port};
use testkit::process::{CertFiles, WaypointProcess};
use testkit::ztunnel::{FakeZtunnel, ZtunnelOptions};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Requests to send.
    #[arg(long, default_value_t = 6)]
    requests: usize,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = DevCa::new("demo")?;
    let waypoint_id = Identity::new("cluster.local", "demo", "waypoint");
    let client_id = Identity::new("cluster.local", "demo", "sleep");
    let wp_certs = ca.issue(&waypoint_id)?;
    wp_certs.write(dir.path())?;
    println!("1. dev CA issued {waypoint_id} and {client_id}");

    let vip = "127.96.0.10".parse()?;
    let mut mesh = MeshYaml::new("demo", "waypoint").service(
        "demo",
        "echo",
        vip,
        "echo",
        &[Port {
            name: "http",
            port: 80,
            target: 8080,
        }],
    );
    let mut pods = Vec::new();
    for i in 1..=2 {
        let ip = free_loopback_ip(15008);
        let name = format!("echo-{i}");
        let pod_id = Identity::new("cluster.local", "demo", "echo");
        pods.push(
            FakeZtunnel::start(ZtunnelOptions {
                ip,
                certs: ca.issue(&pod_id)?.certs()?,
                allowed_caller: Some(waypoint_id.clone()),
                who: EchoIdentity {
                    pod: name.clone(),
                    namespace: "demo".into(),
                },
                apps: HashMap::new(),
            })
            .await?,
        );
        mesh = mesh.pod("demo", &name, ip, "echo", "echo", true);
        println!("2. fake pod {name} at {ip}:15008 (HBONE) serving the echo app on 8080");
    }
    let config = dir.path().join("mesh.yaml");
    std::fs::write(&config, mesh.render())?;

    let exe = crate::launcher::this_executable(dir.path())?;
    let mut wp = WaypointProcess::spawn(
        &exe,
        &config,
        &CertFiles::in_dir(dir.path()),
        &["--log-level", "warn"],
    )?;
    wp.wait_ready(Duration::from_secs(20))
        .await
        .map_err(anyhow::Error::msg)?;
    println!(
        "3. waypoint ready: HBONE on {}, admin on {}",
        wp.hbone, wp.admin
    );

    let client_store = Arc::new(CertStore::fixed(ca.issue(&client_id)?.certs()?));
    let client = HboneClient::new(wp.hbone, client_store, waypoint_id.clone());
    let conn = client
        .connect()
        .await
        .context("HBONE connect to the waypoint")?;
    let mut http = conn.http1(std::net::SocketAddr::new(vip, 80)).await?;
    println!(
        "4. {client_id} opened CONNECT {vip}:80 through the waypoint; sending {} requests",
        args.requests
    );
    for i in 0..args.requests {
        let req = Request::get(format!("/hello?n={i}"))
            .header("host", "echo.demo.svc.cluster.local")
            .body(filters::body::empty())?;
        // The previous response must be fully read before HTTP/1.1 can send the next request.
        http.ready().await?;
        let resp = http.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        println!(
            "   GET /hello?n={i} -> {status} from pod {} (path {})",
            v["pod"], v["path"]
        );
    }
    let handshakes: usize = pods
        .iter()
        .map(|p| {
            p.counters
                .handshakes
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    let connects: usize = pods
        .iter()
        .map(|p| {
            p.counters
                .connects
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    println!("5. destination ztunnels saw {handshakes} TLS handshakes and {connects} CONNECTs for {} requests", args.requests);
    wp.terminate();
    let code = wp.wait_exit(Duration::from_secs(10)).await;
    println!("6. SIGTERM: waypoint exited with {code:?}");
    Ok(())
}
