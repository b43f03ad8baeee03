#!/usr/bin/env bash
# Postback throughput: cakelink on the embedded store resolves CAKE postbacks, each for a
# real click and with a transaction id of its own, so every one records a new conversion
# (click lookup, conversion write, counters, event log). Prints one table of medians.
#
#   benches/postback.sh [--runs N] [--duration SECS] [--conns "64"] [--clicks N] [--targets "embedded redis"]
#
# Pinning as in benches/load.sh: cakelink on core 0, wrk, the click collector and
# redis-server on core 1.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh

RUNS=3
DURATION=10
CONNS="64"
CLICKS=20000
TARGETS="embedded"
bench_options "runs duration conns clicks targets" "$@"

need_tools wrk redis-server curl
build_release

RESULTS="$WORK/results"
: > "$RESULTS"
declare -A PORT
for t in $TARGETS; do
  p=$(free_port)
  PORT[$t]=$p
  start_cakelink "$p" "$(store_toml "$t" "$p")"
  collect_ids "$p" "$CLICKS" "$WORK/ids-$t"
done
for run in $(seq 1 "$RUNS"); do
  for c in $CONNS; do
    for t in $TARGETS; do
      line=$(wrk_result "${PORT[$t]}" "$DURATION" "$c" benches/wrk-postbacks.lua "/collect/cake/$POSTBACK_KEY" "$WORK/ids-$t")
      echo "$run $c $t $line" >> "$RESULTS"
      echo "run $run  conns $c  $t: ${line#RESULT }" >&2
    done
  done
done
median_table "$RESULTS" none
