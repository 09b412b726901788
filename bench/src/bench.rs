//! `waypoint-bench bench`: the side-by-side benchmark. One run, same backend, scenarios
//! interleaved over several rounds; medians reported.
//!
//! - direct: the client talks HBONE straight to the destination (the latency floor);
//! - relay: as direct, through a byte relay on the proxy's core ([`relay`]): the CPU floor
//!   of any proxy in the path, before TLS and HTTP;
//! - tcp: the waypoint relaying the same requests as bytes, through a Service port declared
//!   TCP: HBONE in and out (TLS and HTTP/2 on both legs) without HTTP, the floor of the
//!   waypoint's transport;
//! - waypoint: HBONE in, an HTTPRoute and an AuthorizationPolicy, HBONE out;
//! - istiod: the same proxy configured over xDS with istiod's resources ([`istiod`]);
//! - nginx (when installed): the peer, an mTLS-terminating reverse proxy with an mTLS
//!   upstream to the same echo app served over TLS ([`nginx`]).
//!
//! For each: the proxy's CPU per request (scheduler time from /proc), its peak RSS, and
//! latency percentiles at a fixed rate (default 1000 req/s over 4 tunnels) and at
//! saturation (closed loop); plus RSS with many idle tunnels and HBONE handshakes per
//! second. With `--baseline <binary>` a second build runs as the scenario `baseline` in
//! the same rounds, for an A/B of two builds measured in one run. The proxy is pinned to
//! one core; this process (load generator, fake destination, echo apps) runs on one thread
//! pinned to another.

pub mod allocations;
mod cpu;
mod fixture;
mod istiod;
mod nginx;
mod proxies;
mod record_crypto;
mod relay;
mod report;
mod tls_floor;

pub use relay::{serve as serve_relay, RelayArgs};

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use cpu::cpu_seconds;
use fixture::{set_up_mesh, Fixture};
use hbone::tls::{client_config, CertStore};
use proxies::{start_proxies, stop_proxies, Proxies};
use report::{render, Handshakes, Memory, RecordFloor, Row};
use testkit::client::HboneClient;
use testkit::echo::EchoIdentity;
use testkit::loadgen::{self, LoadConfig, LoadReport};
use testkit::process::{CertFiles, WaypointProcess};
use testkit::tls_echo::TlsEcho;

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
        default_value = "direct,relay,tcp,waypoint,istiod,nginx"
    )]
    scenarios: Vec<String>,
    /// Istio's httpbin waypoint config dump, served over xDS in the `istiod` scenario
    /// (default: the shared test data beside this checkout).
    #[arg(long)]
    xds_dump: Option<PathBuf>,
    /// In the `istiod` scenario, give the measured Service's cluster what istiod writes for
    /// a DestinationRule with least request, outlier detection and connection-pool limits
    /// (issue 16's cost check: compare instructions per request with and without).
    #[arg(long)]
    istiod_destination_rule: bool,
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
    let fx = set_up_mesh(dir.path()).await?;
    let mut proxies = start_proxies(&mut a, &fx, dir.path()).await?;
    let clients = build_clients(&a, &fx, &proxies, dir.path()).await?;

    let duration = Duration::from_secs_f64(a.duration);
    let rounds = measure_rounds(&a, &fx, &proxies, &clients, duration).await?;
    let peer_note = peer_note(&clients.peer, a.proxy_core, rounds.nginx_peak_kib);
    drop(clients.peer);
    drop(clients.relay);
    let wp = &proxies.wp;
    let mut memory = Memory {
        peak_fixed_kib: rounds.peak_fixed_kib,
        rss_fixed_kib: rounds.rss_fixed_kib,
        peak_all_kib: wp.peak_rss_kib().unwrap_or(0),
        rss_before_idle: wp.rss_kib().unwrap_or(0),
        rss_idle: 0,
    };
    memory.rss_idle = idle_rss(&a, wp, &clients.via_waypoint, fx.vip).await?;
    let hs = measure_handshakes(
        &a,
        &fx,
        wp_pid(wp),
        &clients.via_waypoint,
        &clients.certs,
        duration,
    )
    .await?;
    let allocations = count_allocations(&a, &fx, &proxies, dir.path()).await;
    stop_proxies(&mut proxies).await;
    let record_floor = measure_record_floor(&a, &fx, &clients.certs);

    let md = render(
        &a,
        &rounds.rows,
        &memory,
        &hs,
        &allocations,
        &record_floor,
        duration,
        &peer_note,
    );
    write_report(&a.out, &md, &rounds.rows)?;
    println!("{md}");
    Ok(())
}

/// Allocations per request in the waypoint (local configuration) and, when that scenario
/// runs, the istiod-configured one: `(scenario, per request or why not)`.
async fn count_allocations(
    a: &BenchArgs,
    fx: &Fixture,
    proxies: &Proxies,
    dir: &Path,
) -> Vec<(&'static str, Result<f64, String>)> {
    let mut out = Vec::new();
    for scenario in ["waypoint", "istiod"] {
        let source = match scenario {
            "waypoint" => vec!["--config".to_string(), fx.config.display().to_string()],
            _ => match &proxies._istiod_xds {
                Some(x) => x.source_args(),
                None => continue,
            },
        };
        if !a.scenarios.iter().any(|s| s == scenario) {
            continue;
        }
        let load = load_config(a, fx, scenario, 1024, true, Duration::ZERO);
        let target = allocations::Target {
            authority: load.authority,
            host: load.host,
            path: load.path,
        };
        let counted = allocations::per_request(fx, dir, &source, &target).await;
        out.push((scenario, counted.map_err(|e| format!("{e:#}"))));
    }
    out
}

/// The record-crypto floor per response size and the cost of a 16 KiB copy
/// ([`record_crypto`]), timed on a thread pinned to the proxy core once the proxies are
/// stopped, with the AEAD of the suite the HBONE handshake negotiates.
fn measure_record_floor(a: &BenchArgs, fx: &Fixture, client_certs: &Arc<CertStore>) -> RecordFloor {
    let suite = fx
        .ca
        .issue(&fx.waypoint_id)
        .and_then(|c| c.certs())
        .map_err(anyhow::Error::from)
        .and_then(|certs| {
            tls_floor::negotiated_suite(
                Arc::new(CertStore::fixed(certs)),
                client_certs.clone(),
                &fx.waypoint_id,
            )
        });
    let suite = match suite {
        Ok(s) => s.suite(),
        Err(e) => return RecordFloor::unmeasured(format!("no handshake: {e:#}")),
    };
    let Some(alg) = record_crypto::aead_of(suite) else {
        return RecordFloor::unmeasured(format!("no ring AEAD known for {suite:?}"));
    };
    // Bounded by a count and by wall time per measure (a quick run stays quick).
    let (rounds, copies, cap) = if a.quick {
        (200, 2_000, Duration::from_millis(100))
    } else {
        (5_000, 100_000, Duration::from_secs(1))
    };
    let sizes = a.sizes.clone();
    let core = a.proxy_core;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                pin_self(core);
                let per_size = sizes
                    .iter()
                    .map(|&size| {
                        let m = record_crypto::per_request(alg, size, rounds, cap);
                        (size, m.map_err(|e| format!("{e:#}")))
                    })
                    .collect();
                let copy =
                    record_crypto::copy(16 * 1024, copies, cap).map_err(|e| format!("{e:#}"));
                RecordFloor {
                    suite: format!("{suite:?}"),
                    per_size,
                    copy,
                }
            })
            .join()
            .unwrap_or_else(|_| RecordFloor::unmeasured("the measuring thread panicked".into()))
    })
}

/// The nginx peer: the server, the TLS echo app upstream of it, and nginx's version.
type Peer = (nginx::Nginx, TlsEcho, String);

/// The load generator's clients, one per scenario, with the relay and nginx peer they use.
struct Clients {
    certs: Arc<CertStore>,
    via_waypoint: HboneClient,
    via_istiod: Option<HboneClient>,
    via_baseline: Option<HboneClient>,
    direct: HboneClient,
    relay: Option<(relay::Relay, HboneClient)>,
    /// The nginx peer, or why it does not run.
    peer: Result<Peer, String>,
    /// TLS to the nginx peer (HTTP/1.1).
    https: Arc<rustls::ClientConfig>,
}

/// Builds each scenario's client, starting the relay and the nginx peer when selected.
async fn build_clients(
    a: &BenchArgs,
    fx: &Fixture,
    proxies: &Proxies,
    dir: &Path,
) -> anyhow::Result<Clients> {
    let certs = Arc::new(CertStore::fixed(fx.ca.issue(&fx.client_id)?.certs()?));
    let via_waypoint = HboneClient::new(proxies.wp.hbone, certs.clone(), fx.waypoint_id.clone());
    let via_istiod = proxies
        .istiod
        .as_ref()
        .map(|p| HboneClient::new(p.hbone, certs.clone(), fx.waypoint_id.clone()));
    let via_baseline = proxies
        .baseline
        .as_ref()
        .map(|b| HboneClient::new(b.hbone, certs.clone(), fx.waypoint_id.clone()));
    let direct = HboneClient::new(
        SocketAddr::new(fx.pod.ip, 15008),
        certs.clone(),
        fx.pod_id.clone(),
    );
    // The byte relay runs this executable (a baseline build need not have the command).
    let relay = if a.scenarios.iter().any(|s| s == "relay") {
        let r = relay::Relay::start(
            &std::env::current_exe()?,
            proxies.pin,
            SocketAddr::new(fx.pod.ip, 15008),
        )?;
        let client = HboneClient::new(r.addr, certs.clone(), fx.pod_id.clone());
        Some((r, client))
    } else {
        None
    };
    let peer = start_peer(a, fx, proxies.pin, dir).await?;
    if let Err(why) = &peer {
        eprintln!("skipping the nginx peer scenario: {why}");
    }
    let mut https = (*client_config(certs.clone(), fx.waypoint_id.clone())).clone();
    https.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Clients {
        certs,
        via_waypoint,
        via_istiod,
        via_baseline,
        direct,
        relay,
        peer,
        https: Arc::new(https),
    })
}

/// Starts the nginx peer when selected and installed, else says why it does not run.
async fn start_peer(
    a: &BenchArgs,
    fx: &Fixture,
    pin: Option<usize>,
    dir: &Path,
) -> anyhow::Result<Result<Peer, String>> {
    // HTTPS in with the waypoint's certificate, HTTPS out to the echo app over TLS (a pod
    // certificate that also names a host).
    let want_nginx = a.scenarios.iter().any(|s| s == "nginx");
    Ok(match nginx::find().filter(|_| want_nginx) {
        None if !want_nginx => Err("not selected (--scenarios)".to_string()),
        None => Err("nginx is not installed (apt-get install nginx-light)".to_string()),
        Some(bin) => {
            let echo_certs = fx
                .ca
                .issue_with_dns(&fx.pod_id, nginx::UPSTREAM_NAME)?
                .certs()?;
            let echo = TlsEcho::start(
                &echo_certs,
                EchoIdentity {
                    pod: "echo-0".into(),
                    namespace: "default".into(),
                },
            )
            .await?;
            let files = CertFiles::in_dir(dir);
            let files = nginx::NginxFiles {
                chain: &files.chain,
                key: &files.key,
                root: &files.root,
            };
            match nginx::Nginx::start(&bin, dir, pin, &files, echo.addr).await {
                Ok(n) => Ok((n, echo, nginx::version(&bin))),
                Err(e) => Err(format!("nginx did not start: {e}")),
            }
        }
    })
}

/// What the measured rounds produce: a row per phase, and peak RSS in fixed-rate phases.
#[derive(Default)]
struct Rounds {
    rows: Vec<Row>,
    /// The waypoint's peak RSS after its fixed-rate phases.
    peak_fixed_kib: u64,
    /// The most the waypoint had resident at the end of one of its fixed-rate phases.
    rss_fixed_kib: u64,
    /// nginx's peak RSS after its fixed-rate phases.
    nginx_peak_kib: u64,
}

/// Runs the rounds: every selected size, scenario and mode, interleaved within each round.
async fn measure_rounds(
    a: &BenchArgs,
    fx: &Fixture,
    proxies: &Proxies,
    clients: &Clients,
    duration: Duration,
) -> anyhow::Result<Rounds> {
    let mut out = Rounds::default();
    for round in 0..a.rounds {
        for &size in &a.sizes {
            for scenario in SCENARIOS {
                if !a.scenarios.iter().any(|s| s == scenario) {
                    continue;
                }
                let nginx = match (scenario, &clients.peer) {
                    ("nginx", Ok((n, _, _))) => Some(n),
                    ("nginx", Err(_)) => continue,
                    _ => None,
                };
                for mode in ["fixed", "saturation"] {
                    if !a.modes.iter().any(|m| m == mode) {
                        continue;
                    }
                    let fixed = mode == "fixed";
                    let cfg = load_config(a, fx, scenario, size, fixed, duration);
                    let before = proxy_cpu(scenario, nginx, proxies, clients);
                    let Some(report) = run_load(scenario, nginx, clients, cfg).await? else {
                        continue;
                    };
                    let cpu_us_per_req =
                        match (before, proxy_cpu(scenario, nginx, proxies, clients)) {
                            (Some(b), Some(a)) if report.requests > 0 => {
                                Some((a - b) * 1e6 / report.requests as f64)
                            }
                            _ => None,
                        };
                    if fixed && scenario == "waypoint" {
                        out.peak_fixed_kib = out
                            .peak_fixed_kib
                            .max(proxies.wp.peak_rss_kib().unwrap_or(0));
                        out.rss_fixed_kib =
                            out.rss_fixed_kib.max(proxies.wp.rss_kib().unwrap_or(0));
                    }
                    if let (true, Some(n)) = (fixed, nginx) {
                        out.nginx_peak_kib = out.nginx_peak_kib.max(n.peak_rss_kib());
                    }
                    eprintln!("round {round} {scenario} {size}B {mode}: {report} cpu/req {cpu_us_per_req:?}us");
                    out.rows.push(Row {
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
    Ok(out)
}

/// The load of one phase: the scenario's authority and host, fixed rate or closed loop.
fn load_config(
    a: &BenchArgs,
    fx: &Fixture,
    scenario: &str,
    size: usize,
    fixed: bool,
    duration: Duration,
) -> LoadConfig {
    LoadConfig {
        authority: match scenario {
            "direct" | "relay" => SocketAddr::new(fx.pod.ip, 8080),
            "istiod" => istiod::Istiod::authority(),
            "tcp" => SocketAddr::new(fx.tcp_vip, 80),
            _ => SocketAddr::new(fx.vip, 80),
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
    }
}

/// CPU seconds used so far by the proxy of `scenario` (`None` without one).
fn proxy_cpu(
    scenario: &str,
    nginx: Option<&nginx::Nginx>,
    proxies: &Proxies,
    clients: &Clients,
) -> Option<f64> {
    match (scenario, nginx) {
        ("waypoint" | "tcp", _) => Some(cpu_seconds(wp_pid(&proxies.wp))),
        ("baseline", _) => proxies.baseline.as_ref().map(|b| cpu_seconds(b.pid())),
        ("relay", _) => clients.relay.as_ref().map(|(r, _)| r.cpu_seconds()),
        ("istiod", _) => proxies.istiod.as_ref().map(|p| cpu_seconds(p.pid())),
        (_, Some(n)) => Some(n.cpu_seconds()),
        _ => None,
    }
}

/// Drives one phase's load through the client of `scenario` (`None` when it has none).
async fn run_load(
    scenario: &str,
    nginx: Option<&nginx::Nginx>,
    clients: &Clients,
    cfg: LoadConfig,
) -> anyhow::Result<Option<LoadReport>> {
    Ok(Some(match (scenario, nginx) {
        ("direct", _) => loadgen::run(clients.direct.clone(), cfg).await?,
        ("relay", _) => match &clients.relay {
            Some((_, c)) => loadgen::run(c.clone(), cfg).await?,
            None => return Ok(None),
        },
        ("istiod", _) => match &clients.via_istiod {
            Some(c) => loadgen::run(c.clone(), cfg).await?,
            None => return Ok(None),
        },
        (_, Some(n)) => loadgen::run_https(n.addr, clients.https.clone(), cfg).await?,
        ("baseline", _) => match &clients.via_baseline {
            Some(c) => loadgen::run(c.clone(), cfg).await?,
            None => return Ok(None),
        },
        _ => loadgen::run(clients.via_waypoint.clone(), cfg).await?,
    }))
}

/// The report's note on the nginx peer: how it ran and its peak RSS, or why it was skipped.
fn peer_note(peer: &Result<Peer, String>, proxy_core: usize, nginx_peak_kib: u64) -> String {
    match peer {
        Ok((_, _, version)) => format!(
            "nginx peer: {version}, `worker_processes 1` pinned to core {}; TLS 1.3 in with a client certificate required and verified against the dev CA; `proxy_pass https://` with keepalive to the same echo app served over TLS 1.3 (nginx presents its certificate and verifies the upstream's chain and name); driven by the same load generator over plain HTTPS with a client certificate (fixed: 4 connections; saturation: 8). Its CPU is master + worker, its peak RSS the sum of their VmHWM: {:.1} MB during fixed-rate phases.",
            proxy_core,
            nginx_peak_kib as f64 / 1024.0
        ),
        Err(why) => format!("nginx peer: skipped: {why}."),
    }
}

/// The waypoint's RSS with `--idle-tunnels` idle tunnels open through it (0 with `--no-idle`).
async fn idle_rss(
    a: &BenchArgs,
    wp: &WaypointProcess,
    via_waypoint: &HboneClient,
    vip: IpAddr,
) -> anyhow::Result<u64> {
    if a.no_idle {
        return Ok(0);
    }
    let authority = SocketAddr::new(vip, 80);
    let idle = loadgen::idle_tunnels(via_waypoint, authority, a.idle_tunnels, 100).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = wp.rss_kib().unwrap_or(0);
    drop(idle);
    Ok(rss)
}

/// HBONE handshakes per second through the waypoint, their CPU, and the TLS floor.
async fn measure_handshakes(
    a: &BenchArgs,
    fx: &Fixture,
    pid: u32,
    via_waypoint: &HboneClient,
    client_certs: &Arc<CertStore>,
    duration: Duration,
) -> anyhow::Result<Handshakes> {
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
        let server = Arc::new(CertStore::fixed(fx.ca.issue(&fx.waypoint_id)?.certs()?));
        let n = if a.quick { 20 } else { 500 };
        Some(tls_floor::server_handshake_cpu(
            server,
            client_certs.clone(),
            &fx.waypoint_id,
            n,
        )?)
    };
    Ok(Handshakes {
        rate: hs_rate,
        cpu: hs_cpu,
        floor,
    })
}

/// Writes the Markdown report to `out` and the rows as JSON beside it.
fn write_report(out: &Path, md: &str, rows: &[Row]) -> anyhow::Result<()> {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, md)?;
    std::fs::write(
        out.with_extension("json"),
        serde_json::to_string_pretty(rows)?,
    )?;
    Ok(())
}

/// Scenarios in the order each round runs them.
const SCENARIOS: [&str; 7] = [
    "direct", "relay", "tcp", "waypoint", "istiod", "baseline", "nginx",
];

fn wp_pid(wp: &WaypointProcess) -> u32 {
    // Under the taskset wrapper `exec` keeps the pid.
    wp.pid()
}
