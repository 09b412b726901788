//! The `waypoint` binary: the proxy, and nothing else (the test rig and the benchmark are
//! the `testkit` and `waypoint-bench` crates).

use waypoint::alloc::{Allocator, ALLOCATOR};

#[global_allocator]
static GLOBAL: Allocator = ALLOCATOR;

fn main() -> anyhow::Result<()> {
    waypoint::alloc::tune();
    waypoint::cli::main(std::env::args().collect())
}
