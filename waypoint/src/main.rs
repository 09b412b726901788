//! The `waypoint` command line.

mod cli;

use clap::Parser;

/// mimalloc: per-request allocations (headers, frames, futures) were a tenth of the
/// instructions under the system allocator (callgrind, `bench/`). Transparent huge pages
/// are off for its arenas (`no_thp`): with them the resident set doubled.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (not among the crate's constants).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// Milliseconds freed memory stays committed before it goes back to the OS. mimalloc's
/// default (1 s) let 64 MiB streamed each way leave up to 51 MiB resident; 0 cost a fifth
/// more CPU per request at saturation; 100 ms keeps both near the default-free baseline.
const PURGE_DELAY_MS: std::ffi::c_long = 100;

fn main() -> anyhow::Result<()> {
    // SAFETY: sets a process-wide allocator option before any thread is started; mimalloc
    // reads it at each purge decision.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    let argv: Vec<String> = std::env::args().collect();
    if cli::envoy::is_envoy_invocation(&argv) {
        return cli::envoy::run(argv);
    }
    let args = cli::Cli::parse();
    cli::init_logging(&args.log_level);
    cli::dispatch(args)
}
