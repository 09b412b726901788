//! `waypoint-bench demo`: everything on loopback, in one command.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
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

/// Issues the waypoint's certificates into `dir` and names the two identities.
fn issue_identities(dir: &Path) -> anyhow::Result<(DevCa, Identity, Identity)> {
    let ca = DevCa::new("demo")?;
    let waypoint_id = Identity::new("cluster.local", "demo", "waypoint");
    let client_id = Identity::new("cluster.local", "demo", "sleep");
    let wp_certs = ca.issue(&waypoint_id)?;
    wp_certs.write(dir)?;
    println!("1. dev CA issued {waypoint_id} and {client_id}");
    Ok((ca, waypoint_id, client_id))
}

/// The mesh with the `echo` service at `vip`, port 80 to 8080, and no pods yet.
fn echo_service_mesh(vip: IpAddr) -> MeshYaml {
    MeshYaml::new("demo", "waypoint").service(
        "demo",
        "echo",
        vip,
        "echo",
        &[Port {
            name: "http",
            port: 80,
            target: 8080,
        }],
    )
}

/// Starts two fake echo pods that accept only the waypoint, and adds them to `mesh`.
async fn start_pods(
    ca: &DevCa,
    waypoint_id: &Identity,
    mut mesh: MeshYaml,
) -> anyhow::Result<(Vec<FakeZtunnel>, MeshYaml)> {
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
    Ok((pods, mesh))
}

/// Writes `mesh` to `dir`, runs the waypoint as a child process and waits until it is ready.
async fn start_waypoint(dir: &Path, mesh: &MeshYaml) -> anyhow::Result<WaypointProcess> {
    let config = dir.join("mesh.yaml");
    std::fs::write(&config, mesh.render())?;

    let exe = crate::launcher::this_executable(dir)?;
    let mut wp = WaypointProcess::spawn(
        &exe,
        &config,
        &CertFiles::in_dir(dir),
        &["--log-level", "warn"],
    )?;
    wp.wait_ready(Duration::from_secs(20))
        .await
        .map_err(anyhow::Error::msg)?;
    println!(
        "3. waypoint ready: HBONE on {}, admin on {}",
        wp.hbone, wp.admin
    );
    Ok(wp)
}

/// Prints how many TLS handshakes and CONNECTs the destination pods saw in total.
fn print_destination_counts(pods: &[FakeZtunnel], requests: usize) {
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
    println!("5. destination ztunnels saw {handshakes} TLS handshakes and {connects} CONNECTs for {requests} requests");
}

/// Sends SIGTERM to the waypoint and prints how it exited.
async fn shut_down(wp: &mut WaypointProcess) {
    wp.terminate();
    let code = wp.wait_exit(Duration::from_secs(10)).await;
    println!("6. SIGTERM: waypoint exited with {code:?}");
}

/// The quickstart: dev CA, two fake pods, the waypoint, requests through it, a summary
/// and a graceful shutdown.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ca, waypoint_id, client_id) = issue_identities(dir.path())?;

    let vip = "127.96.0.10".parse()?;
    let (pods, mesh) = start_pods(&ca, &waypoint_id, echo_service_mesh(vip)).await?;
    let mut wp = start_waypoint(dir.path(), &mesh).await?;

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
    let mut counted = None;
    for i in 0..args.requests {
        if i == 1 {
            // After the first request (connections open, caches warm): the count, and the
            // allocations one reading of it costs, to subtract.
            let a = crate::bench::allocations::allocations(&wp).await?;
            let b = crate::bench::allocations::allocations(&wp).await?;
            counted = Some((b, b.saturating_sub(a)));
        }
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
    if let Some((before, reading)) = counted {
        let after = crate::bench::allocations::allocations(&wp).await?;
        let measured = args.requests - 1;
        let per_request = after.saturating_sub(before + reading) as f64 / measured as f64;
        println!(
            "   allocations in the waypoint: {per_request:.1} per request (over the last {measured})"
        );
    }
    print_destination_counts(&pods, args.requests);
    shut_down(&mut wp).await;
    Ok(())
}
