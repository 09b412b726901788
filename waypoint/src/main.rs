//! The `waypoint` command line.

mod cli;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if cli::envoy::is_envoy_invocation(&argv) {
        return cli::envoy::run(argv);
    }
    let args = cli::Cli::parse();
    cli::init_logging(&args.log_level);
    cli::dispatch(args)
}
