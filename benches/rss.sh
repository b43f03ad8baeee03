#!/usr/bin/env bash
# Server memory under steady load: cakelink's RSS sampled while wrk sends clicks at a
# capped rate (half of the peak measured first, unless --rate is given) for --duration
# seconds. Prints the samples and the change from the first sample after the warm-up to
# the last.
#
#   benches/rss.sh [--store embedded|redis] [--duration SECS] [--rate REQ_PER_SEC] [--every SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh

STORE=embedded
DURATION=300
RATE=""
EVERY=15
WARMUP=${WARMUP:-30}
bench_options "store duration rate every" "$@"

need_tools wrk redis-server curl
build_release
PORT=$(free_port)
start_cakelink "$PORT" "$(store_toml "$STORE" "$PORT")"

if [ -z "$RATE" ]; then
  peak=$(wrk_result "$PORT" 10 64 benches/wrk-clicks.lua /go/cake/demo | sed -E 's/.*rps=([0-9]+).*/\1/')
  RATE=$((peak / 2))
  echo "peak: $peak req/s; running at half: $RATE req/s" >&2
fi
# Each connection pauses 2 ms between requests: connections = rate * 2 / 1000.
CONNS=$(( (RATE * 2 + 999) / 1000 ))
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$CAKELINK_PID/status"; }

taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"$((DURATION + WARMUP))s" --timeout 10s \
  -s benches/wrk-clicks-paced.lua "http://127.0.0.1:$PORT" -- /go/cake/demo with-fbclid 2 > "$WORK/wrk.out" &
WRK=$!
sleep "$WARMUP"
echo "| seconds | RSS (MiB) |"
echo "|---|---|"
first=""
samples=()
for t in $(seq 0 "$EVERY" "$DURATION"); do
  [ "$t" -gt 0 ] && sleep "$EVERY"
  kib=$(rss_kib)
  samples+=("$kib")
  [ -z "$first" ] && first=$kib
  awk -v t="$t" -v k="$kib" 'BEGIN { printf "| %s | %.1f |\n", t, k / 1024 }'
done
last=$(rss_kib)
wait "$WRK" || true
line=$(grep '^RESULT' "$WORK/wrk.out")
echo
echo "load: ${line#RESULT } over $((DURATION + WARMUP)) s with $CONNS connections"
python3 - "$first" "$last" "${samples[@]}" <<'PY'
import statistics, sys
first, last, *samples = (int(x) / 1024 for x in sys.argv[1:])
mean = statistics.mean(samples)
print(f"RSS change after the warm-up: {(last - first) / first * 100:+.1f}% ({first:.1f} MiB to {last:.1f} MiB)")
print(f"RSS samples: mean {mean:.1f} MiB, min {min(samples):.1f} ({(min(samples) - mean) / mean * 100:+.1f}%), "
      f"max {max(samples):.1f} ({(max(samples) - mean) / mean * 100:+.1f}%)")
PY
