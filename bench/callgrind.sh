#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: repeatable on a noisy
# machine, unlike times. Runs a benchmark scenario (default waypoint, 1 KiB; fixed rate) twice
# under callgrind, for SHORT and LONG seconds at RATE req/s, and divides the difference in
# instructions by the difference in requests, so startup and idle work cancel out.
# Prints the total and the functions that grew most (exclusive, per request).
#
#   bench/callgrind.sh [RATE] [SHORT] [LONG] [SCENARIO] [SIZE]
#                                 (defaults: 100 10 30 waypoint 1024; needs valgrind)
# BENCH_ARGS adds benchmark flags, e.g. BENCH_ARGS=--istiod-destination-rule for the istiod
# scenario with a DestinationRule.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-100}
short=${2:-10}
long=${3:-30}
scenario=${4:-waypoint}
size=${5:-1024}
out=$(mktemp -d)
# The process counted: the istiod scenario's, else the local-file waypoint (which also
# serves the tcp scenario).
case "$scenario" in
  istiod) process=istiod ;;
  *) process=waypoint ;;
esac
# WAYPOINT_BIN counts a given build (for example a baseline) instead of building this one.
bin=${WAYPOINT_BIN:-}
cargo build --release -q -p waypoint-bench
if [ -z "$bin" ]; then
  cargo build --release -q -p waypoint
  bin=$PWD/target/release/waypoint
fi
# Only the measured scenario's process runs under callgrind (the bench always starts the
# local-file waypoint too; the istiod one is the process given --xds-address).
cat > "$out/vg.sh" <<EOF
#!/bin/sh
case "\$*" in
  *--xds-address*) this=istiod ;;
  *) this=waypoint ;;
esac
if [ "\$this" = "$process" ]; then
  exec valgrind --tool=callgrind --callgrind-out-file=$out/cg.\$CG_TAG.out $bin "\$@"
fi
exec $bin "\$@"
EOF
chmod +x "$out/vg.sh"
for d in "$short" "$long"; do
  CG_TAG=$d target/release/waypoint-bench bench --waypoint "$out/vg.sh" --out "$out/b$d.md" \
    --sizes "$size" --rounds 1 --duration "$d" --rate "$rate" --scenarios "$scenario" \
    --modes fixed --no-idle --no-handshakes --log-level warn ${BENCH_ARGS:-} > "$out/log$d" 2>&1 &
done
wait
total() { callgrind_annotate --auto=no "$1" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'; }
requests=$(( rate * (long - short) ))
a=$(total "$out/cg.$short.out")
b=$(total "$out/cg.$long.out")
echo "instructions per request: $(( (b - a) / requests )) (over $requests requests)"
echo "largest per-request growth by function (exclusive):"
callgrind_annotate --auto=no --threshold=100 "$out/cg.$short.out" > "$out/short.txt"
callgrind_annotate --auto=no --threshold=100 "$out/cg.$long.out" > "$out/long.txt"
python3 - "$out/short.txt" "$out/long.txt" "$requests" <<'PY'
import re, sys
def load(path):
    costs = {}
    for line in open(path):
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(.*)$", line)
        if m and "PROGRAM TOTALS" not in line:
            name = re.sub(r" \[[^\]]*\]$", "", m.group(2).strip())
            name = re.sub(r"^\S*?:(?=[A-Za-z_<])", "", name, count=1)
            costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs
a, b, n = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3])
rows = sorted(((b.get(k, 0) - a.get(k, 0)) / n, k) for k in set(a) | set(b))
for cost, name in reversed(rows[-25:]):
    print(f"{cost:9.0f}  {name[:150]}")
PY
echo "callgrind files: $out"
