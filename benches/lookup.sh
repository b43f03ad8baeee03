#!/usr/bin/env bash
# Click lookups on a big embedded store: fills it with --clicks clicks through /go (the
# realistic mix of benches/load.sh), then times, for clicks made first (in sealed
# segments of the click log, found by binary search on disk) and last (in the open
# segment, found in memory), the lookup alone (`GET /api/clicks/{id}`) and the CAKE
# postback, which looks its click up and records a conversion.
# One connection by default: each postback's own latency, with no queue in front of it.
# Also prints the store's bytes on disk per click.
#
#   benches/lookup.sh [--clicks N] [--runs N] [--duration SECS] [--conns N]
#
# Pinning as in benches/load.sh: cakelink on core 0, wrk and the id collector on core 1.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh

CLICKS=10000000
RUNS=3
DURATION=10
CONNS=1
bench_options "clicks runs duration conns" "$@"

need_tools wrk curl
build_release

p=$(free_port)
start_cakelink "$p" "$(store_toml embedded "$p")"
collect_ids "$p" 5000 "$WORK/ids-first"
stored=$(stored_today "$p")
while [ "$stored" -lt "$CLICKS" ]; do
  taskset -c "$LOAD_CPU" wrk -t1 -c256 -d20s -s benches/wrk-clicks.lua "http://127.0.0.1:$p" -- /go/cake/demo >/dev/null
  stored=$(stored_today "$p")
  echo "filled: $stored clicks" >&2
done
collect_ids "$p" 5000 "$WORK/ids-last"
stored=$(stored_today "$p")
# Let the last full segments be sealed before measuring, as they would be in a store
# that has been running.
sleep 5
bytes=$(du -sb "$WORK/embedded-$p" | cut -f1)
clickbytes=$(du -sb "$WORK/embedded-$p/clicklog" | cut -f1)

RESULTS="$WORK/results"
: > "$RESULTS"
for run in $(seq 1 "$RUNS"); do
  for which in first last; do
    line=$(wrk_result "$p" "$DURATION" "$CONNS" benches/wrk-postbacks.lua /api/clicks "$WORK/ids-$which")
    echo "$run $CONNS lookup-$which $line" >> "$RESULTS"
    echo "run $run  lookup $which: ${line#RESULT }" >&2
    line=$(wrk_result "$p" "$DURATION" "$CONNS" benches/wrk-postbacks.lua "/collect/cake/$POSTBACK_KEY" "$WORK/ids-$which")
    echo "$run $CONNS postback-$which $line" >> "$RESULTS"
    echo "run $run  postback $which: ${line#RESULT }" >&2
  done
done
echo "store of $stored clicks: $bytes bytes on disk ($((bytes / stored)) per click), of which the click log $clickbytes ($((clickbytes / stored)) per click)"
median_table "$RESULTS" none
