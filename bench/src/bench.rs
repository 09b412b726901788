//! `waypoint-bench bench`: the side-by-side benchmark. One run, same backend, scenarios
//! interleaved over several rounds; medians reported.
//!
//! - direct: the client talks HBONE straight to the destination (the latency floor);
//! - relay: as direct, through a byte relay on the proxy's core ([`relay`]): the CPU floor
//!   of any proxy in the path, before TLS and HTTP;
//! - waypoint: HBONE in, an HTTPRoute and an AuthorizationPolicy, HBONE out;
//! - istiod: the same proxy configured over xDS with istiod's resources ([`istiod`]);
//! - nginx (when installed): the peer, an mTLS-terminating reverse proxy with an mTLS
//!   upstream to the same echo app served over TLS ([`nginx`]).
//!
//! For each: the proxy's CPU per request (utime+stime from /proc), its peak RSS, and
//! latency percentiles at a fixed rate (default 1000 req/s over 4 tunnels) and at
//! saturation (closed loop); plus RSS with many idle tunnels and HBONE handshakes per
//! second. With `--baseline <binary>` a second build runs as the scenario `baseline` in
//! the same rounds, for an A/B of two builds measured in one run. The proxy is pinned to
//! one core; this process (load generator, fake destination, echo apps) runs on one thread
//! pinned to another.

mod istiod;
mod nginx;
mod relay;
mod report;
mod tls_floor;

pub use relay::{serve as serve_relay, RelayArgs};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use filters::model::Identity;
use hbone::tls::{client_config, CertStore, DevCa};
use report::{render, Handshakes, Row};
use testkit::client::HboneClient;
use testkit::echo::EchoIdentity;
use testkit::loadgen::{self, LoadConfig};
use testkit::mesh::{MeshYaml, Port};
use testkit::process::{CertFiles, WaypointProcess};
use testkit::tls_echo::TlsEcho;
use testkit::ztunnel::{FakeZtunnel, ZtunnelOptions};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The waypoint binary to measure (default: `waypoint` beside this executable, else
    /// this executable running the proxy).
    #[arg(long)]
    waypoint: Option<PathBuf>,
    /// A second waypoint binary, measured as the scenario `baseline` in the same run and
    /// the same rounds (an A/B of two builds: compare `waypoint/baseline`).
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// Markdown output.
    #[arg(long, default_value = "bench/results/latest.md")]
    out: PathBuf,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Rounds (scenarios are interleaved within each round).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Fixed rate, requests per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Idle tunnels for the memory measurement.
    #[arg(long, default_value_t = 10_000)]
    idle_tunnels: usize,
    /// A few-second smoke run (CI): 1 round, short phases, 500 idle tunnels.
    #[arg(long)]
    quick: bool,
    /// Core for the proxy.
    #[arg(long, default_value_t = 0)]
    proxy_core: usize,
    /// Core for the load generator (this process).
    #[arg(long, default_value_t = 1)]
    load_core: usize,
    /// Scenarios to run (for profiling one of them).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,relay,waypoint,istiod,nginx"
    )]
    scenarios: Vec<String>,
    /// Istio's httpbin waypoint config dump, served over xDS in the `istiod` scenario
    /// (default: the shared test data beside this checkout).
    #[arg(long)]
    xds_dump: Option<PathBuf>,
    /// Response sizes, bytes.
    #[arg(long, value_delimiter = ',', default_value = "1024,16384")]
    sizes: Vec<usize>,
    /// Load modes: `fixed`, `saturation`.
    #[arg(long, value_delimiter = ',', default_value = "fixed,saturation")]
    modes: Vec<String>,
    /// Skip the idle-tunnel memory measurement.
    #[arg(long)]
    no_idle: bool,
    /// Skip the handshake rate measurement.
    #[arg(long)]
    no_handshakes: bool,
}

/// Pins the calling thread (and the threads it spawns later) to `core`.
fn pin_self(core: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A command running `bin`, under `taskset -c core` when a core is given (the proxy-side
/// processes the benchmark starts itself: nginx and the relay).
fn pinned(bin: &std::path::Path, core: Option<usize>) -> Command {
    match core {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c.to_string()).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

/// utime + stime of `pid`, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: state is index 0, utime 11, stime 12.
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

/// Runs the benchmark on one thread pinned to the load core: the caller's multi-threaded
/// runtime would otherwise put load-generator threads on the proxy's core too.
pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        pin_self(a.load_core);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(bench(a))
    })
    .await?
}

async fn bench(mut a: BenchArgs) -> anyhow::Result<()> {
    if a.quick {
        a.duration = a.duration.min(1.5);
        a.rounds = 1;
        a.idle_tunnels = a.idle_tunnels.min(500);
    }
    let dir = tempfile::tempdir()?;
    let ca = DevCa::new("bench")?;
    let waypoint_id = Identity::new("cluster.local", "default", "waypoint");
    let client_id = Identity::new("cluster.local", "default", "sleep");
    let pod_id = Identity::new("cluster.local", "default", "echo");
    ca.issue(&waypoint_id)?.write(dir.path())?;
    let pod_certs = ca.issue(&pod_id)?;
    let pod = FakeZtunnel::start_fresh(|ip| ZtunnelOptions {
        ip,
        certs: pod_certs.certs().expect("pod certs"),
        allowed_caller: None,
        who: EchoIdentity {
            pod: "echo-0".into(),
            namespace: "default".into(),
        },
        apps: HashMap::new(),
    })
    .await?;
    let vip = "127.96.0.10".parse()?;
    let mesh = MeshYaml::new("default", "waypoint")
        .service("default", "echo", vip, "echo", &[Port { name: "http", port: 80, target: 8080 }])
        .pod("default", "echo-0", pod.ip, "echo", "echo", true)
        .raw("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: echo, namespace: default}\nspec:\n  parentRefs: [{group: \"\", kind: Service, name: echo, port: 80}]\n  rules:\n  - matches: [{path: {type: PathPrefix, value: /}}]\n    backendRefs: [{name: echo, port: 80}]\n")
        .raw("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-default, namespace: default}\nspec:\n  targetRefs: [{group: \"\", kind: Service, name: echo}]\n  rules:\n  - from: [{source: {namespaces: [default]}}]\n    to: [{operation: {methods: [GET]}}]\n");
    let config = dir.path().join("mesh.yaml");
    std::fs::write(&config, mesh.render())?;
    let exe = crate::launcher::waypoint(a.waypoint.as_deref(), dir.path())?;
    eprintln!("measuring the waypoint at {}", exe.display());
    // Pin the proxy: run it under taskset when available.
    let taskset = Command::new("taskset").arg("--version").output().is_ok();
    let core = a.proxy_core;
    let start =
        |exe: &std::path::Path, name: &str, source: &[String]| -> anyhow::Result<WaypointProcess> {
            let bin = if taskset {
                let wrapper = dir.path().join(format!("pinned-{name}.sh"));
                std::fs::write(
                    &wrapper,
                    format!(
                        "#!/bin/sh\nexec taskset -c {core} {} \"$@\"\n",
                        exe.display()
                    ),
                )?;
                Command::new("chmod").arg("+x").arg(&wrapper).status()?;
                wrapper
            } else {
                exe.to_path_buf()
            };
            let mut args: Vec<&str> = source.iter().map(String::as_str).collect();
            args.extend(["--concurrency", "1", "--log-level", "error"]);
            Ok(WaypointProcess::spawn_source(
                &bin,
                &CertFiles::in_dir(dir.path()),
                &args,
                None,
            )?)
        };
    let local = ["--config".to_string(), config.display().to_string()];
    let mut wp = start(&exe, "waypoint", &local)?;
    wp.wait_ready(Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    let baseline = match a.baseline.clone() {
        Some(exe) => {
            let mut b = start(&exe, "baseline", &local)?;
            b.wait_ready(Duration::from_secs(30))
                .await
                .map_err(anyhow::Error::msg)?;
            if !a.scenarios.iter().any(|s| s == "baseline") {
                a.scenarios.push("baseline".into());
            }
            Some(b)
        }
        None => None,
    };
    let pid = wp_pid(&wp);
    // The same build configured over xDS with istiod's resources.
    let istiod = if a.scenarios.iter().any(|s| s == "istiod") {
        let dump = a
            .xds_dump
            .clone()
            .unwrap_or_else(testkit::istio_dump::httpbin_dump);
        match istiod::Istiod::start(&ca, &waypoint_id, &dump, dir.path()).await {
            Ok(x) => {
                let mut p = start(&exe, "istiod", &x.source_args())?;
                p.wait_ready(Duration::from_secs(30))
                    .await
                    .map_err(anyhow::Error::msg)?;
                Some((x, p))
            }
            Err(e) => {
                eprintln!("skipping the istiod scenario: {e}");
                None
            }
        }
    } else {
        None
    };

    let client_certs = Arc::new(CertStore::fixed(ca.issue(&client_id)?.certs()?));
    let via_waypoint = HboneClient::new(wp.hbone, client_certs.clone(), waypoint_id.clone());
    let via_istiod = istiod
        .as_ref()
        .map(|(_, p)| HboneClient::new(p.hbone, client_certs.clone(), waypoint_id.clone()));
    let via_baseline = baseline
        .as_ref()
        .map(|b| HboneClient::new(b.hbone, client_certs.clone(), waypoint_id.clone()));
    let direct = HboneClient::new(
        SocketAddr::new(pod.ip, 15008),
        client_certs.clone(),
        pod_id.clone(),
    );
    // The byte relay runs this executable (a baseline build need not have the command).
    let relay = if a.scenarios.iter().any(|s| s == "relay") {
        let r = relay::Relay::start(
            &std::env::current_exe()?,
            taskset.then_some(a.proxy_core),
            SocketAddr::new(pod.ip, 15008),
        )?;
        let client = HboneClient::new(r.addr, client_certs.clone(), pod_id.clone());
        Some((r, client))
    } else {
        None
    };
    // The nginx peer, when nginx is installed: HTTPS in with the waypoint's certificate,
    // HTTPS out to the echo app over TLS (a pod certificate that also names a host).
    let want_nginx = a.scenarios.iter().any(|s| s == "nginx");
    let peer = match nginx::find().filter(|_| want_nginx) {
        None if !want_nginx => Err("not selected (--scenarios)".to_string()),
        None => Err("nginx is not installed (apt-get install nginx-light)".to_string()),
        Some(bin) => {
            let echo_certs = ca.issue_with_dns(&pod_id, nginx::UPSTREAM_NAME)?.certs()?;
            let echo = TlsEcho::start(
                &echo_certs,
                EchoIdentity {
                    pod: "echo-0".into(),
                    namespace: "default".into(),
                },
            )
            .await?;
            let files = CertFiles::in_dir(dir.path());
            let files = nginx::NginxFiles {
                chain: &files.chain,
                key: &files.key,
                root: &files.root,
            };
            let core = taskset.then_some(a.proxy_core);
            match nginx::Nginx::start(&bin, dir.path(), core, &files, echo.addr).await {
                Ok(n) => Ok((n, echo, nginx::version(&bin))),
                Err(e) => Err(format!("nginx did not start: {e}")),
            }
        }
    };
    if let Err(why) = &peer {
        eprintln!("skipping the nginx peer scenario: {why}");
    }
    let mut https = (*client_config(client_certs.clone(), waypoint_id.clone())).clone();
    https.alpn_protocols = vec![b"http/1.1".to_vec()];
    let https = Arc::new(https);

    let duration = Duration::from_secs_f64(a.duration);
    let mut rows: Vec<Row> = Vec::new();
    let mut peak_fixed_kib = 0;
    let mut nginx_peak_kib = 0;
    for round in 0..a.rounds {
        for &size in &a.sizes {
            for scenario in SCENARIOS {
                if !a.scenarios.iter().any(|s| s == scenario) {
                    continue;
                }
                let nginx = match (scenario, &peer) {
                    ("nginx", Ok((n, _, _))) => Some(n),
                    ("nginx", Err(_)) => continue,
                    _ => None,
                };
                for mode in ["fixed", "saturation"] {
                    if !a.modes.iter().any(|m| m == mode) {
                        continue;
                    }
                    let fixed = mode == "fixed";
                    let cfg = LoadConfig {
                        authority: match scenario {
                            "direct" | "relay" => SocketAddr::new(pod.ip, 8080),
                            "istiod" => istiod::Istiod::authority(),
                            _ => SocketAddr::new(vip, 80),
                        },
                        host: if scenario == "istiod" {
                            istiod::HOST.into()
                        } else {
                            "echo.default.svc.cluster.local".into()
                        },
                        path: format!("/bytes?n={size}"),
                        tunnels: if fixed { 4 } else { 8 },
                        connections: 1,
                        http2: false,
                        rate: fixed.then_some(a.rate),
                        max_requests: 5_000_000,
                        duration,
                    };
                    let proxy_cpu = || match (scenario, nginx) {
                        ("waypoint", _) => Some(cpu_seconds(pid)),
                        ("baseline", _) => baseline.as_ref().map(|b| cpu_seconds(b.pid())),
                        ("relay", _) => relay.as_ref().map(|(r, _)| r.cpu_seconds()),
                        ("istiod", _) => istiod.as_ref().map(|(_, p)| cpu_seconds(p.pid())),
                        (_, Some(n)) => Some(n.cpu_seconds()),
                        _ => None,
                    };
                    let before = proxy_cpu();
                    let report = match (scenario, nginx) {
                        ("direct", _) => loadgen::run(direct.clone(), cfg).await?,
                        ("relay", _) => match &relay {
                            Some((_, c)) => loadgen::run(c.clone(), cfg).await?,
                            None => continue,
                        },
                        ("istiod", _) => match &via_istiod {
                            Some(c) => loadgen::run(c.clone(), cfg).await?,
                            None => continue,
                        },
                        (_, Some(n)) => loadgen::run_https(n.addr, https.clone(), cfg).await?,
                        ("baseline", _) => match &via_baseline {
                            Some(c) => loadgen::run(c.clone(), cfg).await?,
                            None => continue,
                        },
                        _ => loadgen::run(via_waypoint.clone(), cfg).await?,
                    };
                    let cpu_us_per_req = match (before, proxy_cpu()) {
                        (Some(b), Some(a)) if report.requests > 0 => {
                            Some((a - b) * 1e6 / report.requests as f64)
                        }
                        _ => None,
                    };
                    if fixed && scenario == "waypoint" {
                        peak_fixed_kib = peak_fixed_kib.max(wp.peak_rss_kib().unwrap_or(0));
                    }
                    if let (true, Some(n)) = (fixed, nginx) {
                        nginx_peak_kib = nginx_peak_kib.max(n.peak_rss_kib());
                    }
                    eprintln!("round {round} {scenario} {size}B {mode}: {report} cpu/req {cpu_us_per_req:?}us");
                    rows.push(Row {
                        scenario: scenario.into(),
                        size,
                        mode: mode.into(),
                        report,
                        cpu_us_per_req,
                    });
                }
            }
        }
    }
    let peer_note = match &peer {
        Ok((_, _, version)) => format!(
            "nginx peer: {version}, `worker_processes 1` pinned to core {}; TLS 1.3 in with a client certificate required and verified against the dev CA; `proxy_pass https://` with keepalive to the same echo app served over TLS 1.3 (nginx presents its certificate and verifies the upstream's chain and name); driven by the same load generator over plain HTTPS with a client certificate (fixed: 4 connections; saturation: 8). Its CPU is master + worker, its peak RSS the sum of their VmHWM: {:.1} MB during fixed-rate phases.",
            a.proxy_core,
            nginx_peak_kib as f64 / 1024.0
        ),
        Err(why) => format!("nginx peer: skipped: {why}."),
    };
    drop(peer);
    drop(relay);
    let peak_all_kib = wp.peak_rss_kib().unwrap_or(0);
    let rss_before_idle = wp.rss_kib().unwrap_or(0);
    let rss_idle = if a.no_idle {
        0
    } else {
        let authority = SocketAddr::new(vip, 80);
        let idle = loadgen::idle_tunnels(&via_waypoint, authority, a.idle_tunnels, 100).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss = wp.rss_kib().unwrap_or(0);
        drop(idle);
        rss
    };
    let hs_before = cpu_seconds(pid);
    let mut hs_tasks = Vec::new();
    for _ in 0..if a.no_handshakes { 0 } else { 4 } {
        let c = via_waypoint.clone();
        hs_tasks.push(tokio::spawn(async move {
            loadgen::handshakes(&c, duration, 1_000_000).await
        }));
    }
    let mut hs_rate = 0.0;
    for t in hs_tasks {
        hs_rate += t.await??;
    }
    let hs_cpu = cpu_seconds(pid) - hs_before;
    let floor = if a.no_handshakes {
        None
    } else {
        let server = Arc::new(CertStore::fixed(ca.issue(&waypoint_id)?.certs()?));
        let n = if a.quick { 20 } else { 500 };
        Some(tls_floor::server_handshake_cpu(
            server,
            client_certs.clone(),
            &waypoint_id,
            n,
        )?)
    };
    let hs = Handshakes {
        rate: hs_rate,
        cpu: hs_cpu,
        floor,
    };
    wp.terminate();
    if let Some((_, mut p)) = istiod {
        p.terminate();
        let _ = p.wait_exit(Duration::from_secs(10)).await;
    }
    if let Some(mut b) = baseline {
        b.terminate();
        let _ = b.wait_exit(Duration::from_secs(10)).await;
    }
    let _ = wp.wait_exit(Duration::from_secs(10)).await;

    let md = render(
        &a,
        &rows,
        peak_fixed_kib,
        peak_all_kib,
        rss_before_idle,
        rss_idle,
        &hs,
        duration,
        &peer_note,
    );
    if let Some(parent) = a.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&a.out, &md)?;
    std::fs::write(
        a.out.with_extension("json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    println!("{md}");
    Ok(())
}

/// Scenarios in the order each round runs them.
const SCENARIOS: [&str; 6] = ["direct", "relay", "waypoint", "istiod", "baseline", "nginx"];

fn wp_pid(wp: &WaypointProcess) -> u32 {
    // Under the taskset wrapper `exec` keeps the pid.
    wp.pid()
}
