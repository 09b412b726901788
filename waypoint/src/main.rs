//! The `waypoint` command line.

mod cli;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = cli::Cli::parse();
    cli::init_logging(&args.log_level);
    cli::dispatch(args)
}
