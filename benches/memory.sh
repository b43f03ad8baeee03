#!/usr/bin/env bash
# Storage per click: bytes of Redis memory (INFO memory's used_memory, before and after,
# key overhead, counters and interned values included) and bytes on disk of the embedded
# store, for clicks without an ad-platform click id and with a typical fbclid.
#
#   benches/memory.sh [--clicks N] [--disk-clicks M]
#
# At least N clicks (default 100000) are sent to Redis and M (default 1000000) to the
# embedded store, with wrk; the figures divide by the clicks actually stored. The
# embedded store's journal holds what is not yet written to its tables (at most one
# 16 MiB click memtable's worth, a few percent of M) and is recycled after each flush;
# its files are preallocated, so it is shown apart.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh

CLICKS=100000
DISK_CLICKS=1000000
bench_options "clicks disk-clicks" "$@"

need_tools wrk redis-server curl
build_release

# Sends clicks until at least $3 have been answered with a 302.
send_clicks() {
  local port=$1 mode=$2 want=$3 sent=0 line
  while [ "$sent" -lt "$want" ]; do
    line=$(wrk_run "$port" 2 32 benches/wrk-clicks.lua /go/cake/demo "$mode")
    sent=$((sent + $(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")))
  done
}

stored_clicks() { # redis port
  redis-cli -p "$1" --scan --pattern 'cl:ck:*' | while read -r key; do redis-cli -p "$1" hlen "$key"; done |
    awk '{ n += $1 } END { print n + 0 }'
}

used_memory() { redis-cli -p "$1" info memory | tr -d '\r' | awk -F: '/^used_memory:/ { print $2 }'; }

echo "| store | clicks | fbclid | stored clicks | bytes | bytes per click |"
echo "|---|---|---|---|---|---|"
for mode in no-fbclid with-fbclid; do
  rp=$(free_port)
  start_redis "$rp" --appendonly no
  p=$(free_port)
  start_cakelink "$p" "$(printf 'backend = "redis"\nurl = "redis://127.0.0.1:%s/"\n' "$rp")"
  before=$(used_memory "$rp")
  send_clicks "$p" "$mode" "$CLICKS"
  after=$(used_memory "$rp")
  n=$(stored_clicks "$rp")
  echo "| redis | $CLICKS+ | ${mode%-fbclid} | $n | $((after - before)) | $(( (after - before) / n )) |"
  kill "$CAKELINK_PID"

  p=$(free_port)
  start_cakelink "$p" "$(store_toml embedded "$mode")"
  send_clicks "$p" "$mode" "$DISK_CLICKS"
  stored=$(stored_today "$p")
  kill -TERM "$CAKELINK_PID"; wait "$CAKELINK_PID" || true
  bytes=$(du -sb "$WORK/embedded-$mode" | cut -f1)
  journal=$(find "$WORK/embedded-$mode" -name '*.jnl' -printf '%s\n' | awk '{ n += $1 } END { print n + 0 }')
  echo "| embedded (on disk: tables + journal) | $DISK_CLICKS+ | ${mode%-fbclid} | $stored | $((bytes - journal)) + $journal | $(( (bytes - journal) / stored )) + $((journal / stored)) |"
done
