#!/usr/bin/env bash
# Postback latency on a big embedded store: fills it with --clicks clicks through /go (the
# realistic mix of benches/load.sh), then times CAKE postbacks for clicks made first (in
# sealed segments of the click log, found by binary search on disk) and last (in the open
# segment, found in memory). Each postback looks its click up and records a conversion.
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
CONNS=8
while [ $# -gt 0 ]; do
  case "$1" in
    --clicks) CLICKS=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

need_tools wrk curl
build_release

# collect_ids PORT N FILE: N clicks through /go, keeping the click id of each.
collect_ids() {
  taskset -c "$LOAD_CPU" python3 - "$1" "$2" "$3" <<'PY'
import http.client, sys, urllib.parse
port, n, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
con = http.client.HTTPConnection("127.0.0.1", port)
ua = {"User-Agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15"}
with open(out, "w") as f:
    for i in range(n):
        con.request("GET", f"/go/cake/demo?utm_source=facebook&fbclid=IwAR{i}", headers=ua)
        res = con.getresponse()
        res.read()
        query = urllib.parse.urlparse(res.getheader("Location")).query
        f.write(urllib.parse.parse_qs(query)["s2"][0] + "\n")
PY
}

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
    line=$(wrk_result "$p" "$DURATION" "$CONNS" benches/wrk-postbacks.lua "/collect/cake/$POSTBACK_KEY" "$WORK/ids-$which")
    echo "$run $CONNS postback-$which $line" >> "$RESULTS"
    echo "run $run  $which: ${line#RESULT }" >&2
  done
done
echo "store of $stored clicks: $bytes bytes on disk ($((bytes / stored)) per click), of which the click log $clickbytes ($((clickbytes / stored)) per click)"
median_table "$RESULTS" none
