//! Subcommands: `run`, `check`, `dev-ca`, `request`, `load`, `bench`, `demo`; and Envoy's
//! command line ([`envoy`]) when started by pilot-agent.

mod bench;
mod check;
mod demo;
mod dev_ca;
pub mod envoy;
mod load;
mod request;
mod run;

use clap::{Parser, Subcommand};

/// L7 waypoint proxy for Istio ambient mesh.
#[derive(Debug, Parser)]
#[command(name = "waypoint", version)]
pub struct Cli {
    /// Log filter (`info`, `debug`, `waypoint=debug,pingora=warn`, ...).
    #[arg(long, global = true, default_value = "info", env = "WAYPOINT_LOG")]
    pub log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the waypoint.
    Run(run::RunArgs),
    /// Validate a configuration and print the status of every route.
    Check(check::CheckArgs),
    /// Write a development root CA and SPIFFE certificates.
    DevCa(dev_ca::DevCaArgs),
    /// Send one HTTP request through an HBONE server (a waypoint or a ztunnel).
    Request(request::RequestArgs),
    /// Generate HBONE load against a waypoint or ztunnel and report latency percentiles.
    Load(load::LoadArgs),
    /// Run the side-by-side benchmark (direct vs waypoint) and write a Markdown table.
    Bench(bench::BenchArgs),
    /// Run a self-contained demo: CA, waypoint, two fake pods, requests.
    Demo(demo::DemoArgs),
    /// The benchmark's byte relay (its `relay` scenario starts it).
    #[command(hide = true)]
    BenchRelay(bench::RelayArgs),
}

/// Installs the tracing subscriber (also capturing Pingora's `log` records); the admin
/// `/logging` endpoint can change its filter later.
pub fn init_logging(filter: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let current = filter.to_string();
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_target(false))
        .try_init()
        .is_ok();
    if installed {
        waypoint::admin::logging::install(
            &current,
            Box::new(move |f| {
                let next = tracing_subscriber::EnvFilter::try_new(f).map_err(|e| e.to_string())?;
                handle.reload(next).map_err(|e| e.to_string())
            }),
        );
    }
}

/// Runs the chosen subcommand.
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(a) => run::run(a),
        Command::Check(a) => check::run(a),
        Command::DevCa(a) => dev_ca::run(a),
        Command::Request(a) => runtime()?.block_on(request::run(a)),
        Command::Demo(a) => runtime()?.block_on(demo::run(a)),
        Command::Load(a) => runtime()?.block_on(load::run(a)),
        Command::Bench(a) => runtime()?.block_on(bench::run(a)),
        Command::BenchRelay(a) => bench::serve_relay(a),
    }
}

/// `--cert-chain`, `--key`, `--root-cert`: PEM files of an identity and the mesh roots.
#[derive(Debug, Clone, clap::Args)]
pub struct CertArgs {
    /// PEM certificate chain (leaf first).
    #[arg(long)]
    pub cert_chain: std::path::PathBuf,
    /// PEM private key.
    #[arg(long)]
    pub key: std::path::PathBuf,
    /// PEM root bundle.
    #[arg(long)]
    pub root_cert: std::path::PathBuf,
}

impl CertArgs {
    /// The files as a [`waypoint::tls::CertPaths`].
    pub fn paths(&self) -> waypoint::tls::CertPaths {
        waypoint::tls::CertPaths {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone(),
            root_cert: self.root_cert.clone(),
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
