//! The `waypoint` command line: `run`, `check`, `explain`, `dev-ca`; and Envoy's command line
//! ([`envoy`]) when started by pilot-agent. The binary (`main.rs`) calls [`main`]; the
//! development tools (`waypoint-bench`) call it too, to run this same proxy in a child
//! process of their own.

mod check;
mod dev_ca;
pub mod envoy;
mod explain;
mod istiod;
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
    Run(Box<run::RunArgs>),
    /// Validate a configuration and print the status of every route.
    Check(check::CheckArgs),
    /// Explain why a request gets its answer: authority, JWT, policies, route, backends.
    Explain(Box<explain::ExplainArgs>),
    /// Write a development root CA and SPIFFE certificates.
    DevCa(dev_ca::DevCaArgs),
}

/// The whole command line, from `argv` (program name first): Envoy's when pilot-agent
/// starts the binary as `envoy`, else the subcommands.
pub fn main(argv: Vec<String>) -> anyhow::Result<()> {
    if envoy::is_envoy_invocation(&argv) {
        return envoy::run(argv);
    }
    let args = Cli::parse_from(argv);
    if matches!(args.command, Command::Explain(_)) {
        // The explanation is the output: logs go to stderr, warnings only unless asked.
        let level = if args.log_level == "info" {
            "warn"
        } else {
            &args.log_level
        };
        init_logging_to(level, std::io::stderr);
    } else {
        init_logging(&args.log_level);
    }
    dispatch(args)
}

/// Installs the tracing subscriber (also capturing Pingora's `log` records); the admin
/// `/logging` endpoint can change its filter later.
pub fn init_logging(filter: &str) {
    init_logging_to(filter, std::io::stdout);
}

/// [`init_logging`], writing to `writer`.
fn init_logging_to<W>(filter: &str, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let current = filter.to_string();
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_writer(writer),
        )
        .try_init()
        .is_ok();
    if installed {
        crate::admin::logging::install(
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
        Command::Run(a) => run::run(*a),
        Command::Check(a) => check::run(a),
        Command::Explain(a) => explain::run(*a),
        Command::DevCa(a) => dev_ca::run(a),
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
    /// The files as a [`hbone::tls::CertPaths`].
    pub fn paths(&self) -> hbone::tls::CertPaths {
        hbone::tls::CertPaths {
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone(),
            root_cert: self.root_cert.clone(),
        }
    }
}
