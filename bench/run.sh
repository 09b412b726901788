#!/usr/bin/env bash
# The side-by-side benchmark, one command: builds the release binary and runs
# `waypoint bench` (direct vs waypoint, fixed rate and saturation, idle tunnels,
# handshakes), writing bench/results/latest.md and .json. Extra arguments go to
# `waypoint bench` (for example --rounds 5 --duration 20, or --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p waypoint
exec target/release/waypoint bench --out bench/results/latest.md "$@"
