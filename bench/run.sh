#!/usr/bin/env bash
# The side-by-side benchmark, one command: builds the release binaries (the shipped
# `waypoint` and the `waypoint-bench` tools) and runs `waypoint-bench bench` against the
# shipped binary (direct vs waypoint, fixed rate and saturation, idle tunnels, handshakes),
# writing bench/results/latest.md and .json. Extra arguments go to `waypoint-bench bench`
# (for example --rounds 5 --duration 20, or --quick).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p waypoint -p waypoint-bench
exec target/release/waypoint-bench bench --waypoint target/release/waypoint \
  --out bench/results/latest.md "$@"
