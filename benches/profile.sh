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

STORE=embedded
LINK=demo
DURATION=20
CONNS=16
TOP=40
BIN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --store) STORE=$2; shift 2 ;;
    --link) LINK=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --top) TOP=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

need=()
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
[ "$STORE" = redis ] && ! command -v redis-server >/dev/null 2>&1 && need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ -z "$BIN" ]; then
  cargo build --release --quiet
  BIN=target/release/cakelink
fi
OUT=target/profile
mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
case $STORE in
  embedded) STORE_TOML="backend = \"embedded\"
path = \"$WORK/db\"" ;;
  redis)
    RPORT=$(free_port)
    redis-server --port "$RPORT" --dir "$WORK" --save '' --appendonly no >/dev/null &
    PIDS+=($!)
    for _ in $(seq 1 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    STORE_TOML="backend = \"redis\"
url = \"redis://127.0.0.1:$RPORT/\"" ;;
  *) echo "unknown store $STORE" >&2; exit 2 ;;
esac
case $LINK in demo|split) ;; *) echo "unknown link $LINK (demo or split)" >&2; exit 2 ;; esac
OFFER="https://offers.example.com/?a=200&c=761&s1=yes"
cat > "$WORK/cakelink.toml" <<CONF
[server]
listen = "127.0.0.1:$PORT"
[store]
$STORE_TOML
[security]
secret = "bench-secret-0123456789abcdef"
admin_token = "bench-admin-token-0123456789"
postback_key = "bench-postback-key-0123456789"
[[links]]
slug = "demo"
offer = "$OFFER"
[[links]]
slug = "split"
offer = "$OFFER"
  [[links.offers]]
  id = "a"
  url = "$OFFER&c=11"
  weight = 70
  [[links.offers]]
  id = "b"
  url = "$OFFER&c=12"
  weight = 30
  [[links.rules]]
  device = ["mobile"]
  offers = ["a", "b"]
CONF

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
