//! The `waypoint` command line.

mod cli;

use clap::Parser;

/// mimalloc: per-request allocations (headers, frames, futures) were a tenth of the
/// instructions under the system allocator (callgrind, `bench/`). Transparent huge pages
/// are off for its arenas (`no_thp`): with them the resident set doubled.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if cli::envoy::is_envoy_invocation(&argv) {
        return cli::envoy::run(argv);
    }
    let args = cli::Cli::parse();
    cli::init_logging(&args.log_level);
    cli::dispatch(args)
}
