#!/usr/bin/env bash
# Stalls on the server's core: while wrk sends the realistic mix to the embedded store,
# `perf sched` records every thread switch on the server's core for 3 s. For each of
# cakelink's threads the table gives its longest stretch on the core; a thread that holds
# the core for milliseconds holds up every redirect in flight for as long. Same request
# mix and pinning as benches/load.sh; needs `perf` (Debian's linux-perf) and the right to
# trace the scheduler (root, or kernel.perf_event_paranoid <= -1).
#
#   benches/stalls.sh [--runs N] [--duration SECS] [--conns "64 256"] [--bin PATH] [--base-bin PATH]
#
# --bin measures that binary instead of this tree's; --base-bin measures another one too,
# alternating with it run by run. Columns: the runtime's worker thread, the store's
# writer and housekeeping, tokio's blocking threads (the fsync tick), and how many of the
# writer's stretches passed 1 ms.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh

RUNS=3
DURATION=8
CONNS="64 256"
ab_options "$@"
if [ "$DURATION" -lt 6 ]; then echo "--duration must be at least 6 (the recording starts 2 s in and lasts 3 s)" >&2; exit 2; fi

need_tools wrk curl
command -v perf >/dev/null 2>&1 || need_tools linux-perf
own_binary

declare -A PORT SERVER
start_each_bin "$BIN" ${BASE_BIN:+"$BASE_BIN"}

echo "| run | conns | binary | req/s | p99 (ms) | p99.9 (ms) | longest on the core (ms): runtime | writer | housekeeping | blocking | writer stretches > 1 ms |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
# measure RUN CONNS BINARY PORT: one row of the table.
measure() {
  local recorder line
  (sleep 2; taskset -c "$LOAD_CPU" perf sched record -C "$SERVER_CPU" -o "$WORK/sched.data" -- sleep 3 >/dev/null 2>&1) &
  recorder=$!
  line=$(wrk_run "$4" "$DURATION" "$2" benches/wrk-clicks.lua /go/cake/demo)
  wait "$recorder"
  perf sched timehist -i "$WORK/sched.data" --cpu "$SERVER_CPU" 2>/dev/null \
    | python3 -c '
import re, sys
run, conns, binary, pid, result = sys.argv[1:]
kv = dict(p.split("=") for p in result.split()[1:])
longest = {"runtime": 0.0, "writer": 0.0, "housekeeping": 0.0, "blocking": 0.0}
writer_over = 0
rows = []
for line in sys.stdin:
    m = re.match(r"\s*[\d.]+\s+\[\d+\]\s+(\S+)\[(\d+)/(\d+)\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", line)
    if m and m.group(3) == pid:
        rows.append((m.group(1), int(m.group(2)), float(m.group(6))))
# The runtime worker is the tokio thread that runs most often; the other tokio threads
# are the blocking pool.
counts = {}
for comm, tid, _ in rows:
    if comm == "tokio-rt-worker":
        counts[tid] = counts.get(tid, 0) + 1
worker = max(counts, key=counts.get) if counts else None
for comm, tid, ran in rows:
    kind = ("runtime" if tid == worker else "blocking") if comm == "tokio-rt-worker" else \
        {"store-writer": "writer", "store-housekeep": "housekeeping"}.get(comm)
    if kind:
        longest[kind] = max(longest[kind], ran)
    if kind == "writer" and ran > 1.0:
        writer_over += 1
rps, p99, p999 = int(kv["rps"]), int(kv["p99"]) / 1000, int(kv["p999"]) / 1000
cols = " | ".join(f"{longest[k]:.2f}" for k in ("runtime", "writer", "housekeeping", "blocking"))
print(f"| {run} | {conns} | {binary} | {rps:,} | {p99:.2f} | {p999:.2f} | {cols} | {writer_over} |")
' "$1" "$2" "$3" "${SERVER[$3]}" "$line"
}
each_ab_run measure
