#!/usr/bin/env bash
# Bytes on disk per click on the embedded store, by part: the click log (`clicklog/`),
# fjall's tables and fjall's journal, for clicks without an ad-platform click id and with
# a typical fbclid. Sends at least M clicks with wrk, stops the server with SIGTERM (so
# what it buffers is written), and divides by the clicks the store counted.
#
#   benches/disk.sh [--disk-clicks M] [--bin PATH]
#
# --bin measures that binary (another build, the main branch say) instead of this tree's.
# benches/memory.sh measures Redis's memory and the embedded store's total the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh

DISK_CLICKS=1000000
OWN_BIN=""
bench_options "disk-clicks bin:OWN_BIN" "$@"

need_tools wrk curl
own_binary

# Sends clicks until at least $3 have been answered with a 302.
send_clicks() {
  local port=$1 mode=$2 want=$3 sent=0 line
  while [ "$sent" -lt "$want" ]; do
    line=$(wrk_run "$port" 2 32 benches/wrk-clicks.lua /go/cake/demo "$mode")
    sent=$((sent + $(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")))
  done
}

sum_sizes() { { [ ! -e "$1" ] || find "$1" -type f -printf '%s\n'; } | awk '{ n += $1 } END { print n + 0 }'; }

echo "| fbclid | clicks stored | click log (bytes) | tables (bytes) | journal (bytes) | log per click | tables per click | journal per click | all per click |"
echo "|---|---|---|---|---|---|---|---|---|"
for mode in no-fbclid with-fbclid; do
  p=$(free_port)
  start_cakelink "$p" "$(store_toml embedded "$mode")"
  send_clicks "$p" "$mode" "$DISK_CLICKS"
  stored=$(stored_today "$p")
  kill -TERM "$CAKELINK_PID"; wait "$CAKELINK_PID" || true
  dir="$WORK/embedded-$mode"
  log=$(sum_sizes "$dir/clicklog")
  journal=$(find "$dir" -name '*.jnl' -printf '%s\n' | awk '{ n += $1 } END { print n + 0 }')
  all=$(du -sb "$dir" | cut -f1)
  tables=$((all - log - journal))
  echo "| ${mode%-fbclid} | $stored | $log | $tables | $journal | $((log / stored)) | $((tables / stored)) | $((journal / stored)) | $((all / stored)) |"
done
