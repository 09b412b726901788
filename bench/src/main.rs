//! `waypoint-bench`: the development tools around the proxy, kept out of the shipped
//! binary: the quickstart demo, a one-request HBONE client, the load generator and the
//! side-by-side benchmark.
//!
//! The proxy these tools start is a real `waypoint` process: the binary named by
//! `--waypoint`, else the `waypoint` binary beside this one (`cargo build -p waypoint`),
//! else this executable running the same proxy code (`waypoint-bench waypoint run ...`,
//! [`launcher`]), so `cargo run -p waypoint-bench -- demo` works on a fresh checkout.

mod bench;
mod demo;
mod launcher;
mod load;
mod request;

use clap::{Parser, Subcommand};
use waypoint::alloc::Counting;

/// mimalloc, as the shipped binary, with a count of allocations: the demo reports them
/// per request. Benchmarks measure the `waypoint` binary beside this one, which does not
/// count (see [`launcher`]).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: Counting = Counting(waypoint::alloc::ALLOCATOR);

/// With `--features system-allocator`: the same count over the system allocator, so that
/// valgrind's dhat sees every allocation and where it comes from (README, Performance).
#[cfg(feature = "system-allocator")]
#[global_allocator]
static GLOBAL: Counting<std::alloc::System> = Counting(std::alloc::System);

/// Development tools for the waypoint: demo, request, load, bench.
#[derive(Debug, Parser)]
#[command(name = "waypoint-bench", version)]
struct Cli {
    /// Log filter (`info`, `debug`, ...).
    #[arg(long, global = true, default_value = "info", env = "WAYPOINT_LOG")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a self-contained demo: CA, waypoint, two fake pods, requests.
    Demo(demo::DemoArgs),
    /// Send one HTTP request through an HBONE server (a waypoint or a ztunnel).
    Request(request::RequestArgs),
    /// Generate HBONE load against a waypoint or ztunnel and report latency percentiles.
    Load(load::LoadArgs),
    /// Run the side-by-side benchmark (direct vs waypoint) and write a Markdown table.
    Bench(bench::BenchArgs),
    /// The benchmark's byte relay (its `relay` scenario starts it).
    #[command(hide = true)]
    Relay(bench::RelayArgs),
}

fn main() -> anyhow::Result<()> {
    waypoint::alloc::tune();
    Counting::enable();
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(launcher::SELF_EXEC) {
        // `waypoint-bench waypoint <args>`: this process is the proxy.
        let mut proxy = vec!["waypoint".to_string()];
        proxy.extend(argv.into_iter().skip(2));
        return waypoint::cli::main(proxy);
    }
    let cli = Cli::parse_from(argv);
    waypoint::cli::init_logging(&cli.log_level);
    match cli.command {
        Command::Demo(a) => runtime()?.block_on(demo::run(a)),
        Command::Request(a) => runtime()?.block_on(request::run(a)),
        Command::Load(a) => runtime()?.block_on(load::run(a)),
        Command::Bench(a) => runtime()?.block_on(bench::run(a)),
        Command::Relay(a) => bench::serve_relay(a),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
