#!/usr/bin/env bash
# Server CPU per redirect on the embedded store: the CPU time (user + system, all of the
# process's threads, from /proc) cakelink spends during a wrk run, divided by the
# requests answered. Same request mix and pinning as benches/load.sh.
#
#   benches/cpu.sh [--runs N] [--duration SECS] [--conns "64 256"] [--bin PATH] [--base-bin PATH]
#
# --bin measures that binary instead of this tree's; --base-bin measures another one too,
# alternating with it run by run.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh

RUNS=3
DURATION=5
CONNS="64 256"
ab_options "$@"

need_tools wrk curl
own_binary
TICK=$(getconf CLK_TCK)

declare -A PORT SERVER
start_each_bin "$BIN" ${BASE_BIN:+"$BASE_BIN"}

echo "| run | conns | binary | req/s | requests | server CPU (s) | CPU per request (µs) |"
echo "|---|---|---|---|---|---|---|"
# measure RUN CONNS BINARY PORT: one row of the table.
measure() {
  local before after line requests rps
  before=$(cpu_ticks "${SERVER[$3]}")
  line=$(wrk_run "$4" "$DURATION" "$2" benches/wrk-clicks.lua /go/cake/demo)
  after=$(cpu_ticks "${SERVER[$3]}")
  requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
  rps=$(sed -E 's/.*rps=([0-9]+).*/\1/' <<<"$line")
  python3 -c "import sys; r,c,b,rps,n,a,z,t=sys.argv[1:]; s=(int(z)-int(a))/int(t); print(f'| {r} | {c} | {b} | {int(rps):,} | {int(n):,} | {s:.2f} | {s/int(n)*1e6:.1f} |')" \
    "$1" "$2" "$3" "$rps" "$requests" "$before" "$after" "$TICK"
}
each_ab_run measure
