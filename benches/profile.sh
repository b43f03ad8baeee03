#!/usr/bin/env bash
# Where the time goes per redirect, in instructions: runs the release binary under
# callgrind, drives it with the same request mix as benches/load.sh, and prints the
# instructions per request (in total and per function, inclusive). Instruction counts do
# not depend on what else the machine is doing, so they compare builds reliably.
#
#   benches/profile.sh [--store embedded|redis] [--link demo|split] [--duration SECS] [--conns N]
#                      [--top N] [--bin PATH]
#
# --bin profiles that binary (another build, the main branch say) instead of building
# this tree's. --link split sends the clicks to a link with a 70/30 split of two offers
# behind a mobile-device rule (the load bench's `embedded-split`) instead of the
# one-offer link.
#
# Needs valgrind, wrk and (for --store redis) redis-server; installed from Debian's
# packages when missing. The callgrind output is left in target/profile/ for
# callgrind_annotate or kcachegrind.
set -euo pipefail
cd "$(dirname "$0")/.."

source benches/lib.sh

STORE=embedded
LINK=demo
DURATION=20
CONNS=16
TOP=40
OWN_BIN=""
bench_options "store link duration conns top bin:OWN_BIN" "$@"
case $STORE in embedded|redis) ;; *) echo "unknown store $STORE" >&2; exit 2 ;; esac
case $LINK in demo|split) ;; *) echo "unknown link $LINK (demo or split)" >&2; exit 2 ;; esac

tools=(valgrind wrk curl)
[ "$STORE" = redis ] && tools+=(redis-server)
need_tools "${tools[@]}"
own_binary
OUT=target/profile
mkdir -p "$OUT"

PORT=$(free_port)
bench_config "$PORT" "$(store_toml "$STORE" "$PORT")" > "$WORK/cakelink.toml"

PROFILE="$OUT/callgrind.$STORE.out"
rm -f "$PROFILE"
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$PROFILE" --dump-instr=no \
  "$BIN" serve --config "$WORK/cakelink.toml" 2>"$WORK/valgrind.log" &
VG=$!
PIDS+=($VG)
for _ in $(seq 1 300); do curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 0.2; done

line=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" -s benches/wrk-clicks.lua "http://127.0.0.1:$PORT" -- "/go/cake/$LINK" | grep '^RESULT')
requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
kill -TERM "$VG"
wait "$VG" || true

total=$(callgrind_annotate "$PROFILE" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done { gsub(",", "", $1); print $1; done = 1 }')
echo "store: $STORE   link: $LINK   requests: $requests   instructions: $total   per request: $((total / requests))"
echo
echo "inclusive instructions per request, by function (startup and shutdown included in the totals):"
callgrind_annotate --inclusive=yes --threshold=100 "$PROFILE" 2>/dev/null |
  awk -v n="$requests" -v top="$TOP" '
    /^-+$/ { sep++; next }
    sep >= 3 && $1 ~ /^[0-9,]+$/ {
      ir = $1; gsub(",", "", ir);
      $1 = ""; if ($2 ~ /^\(/) $2 = "";
      sub(/^ +/, ""); fn = $0; sub(/ \[.*$/, "", fn);
      printf "%10.0f  %s\n", ir / n, substr(fn, 1, 150);
      if (++shown >= top) sep = -100
    }'
