#!/usr/bin/env bash
# Several cakelink processes on one Redis Cluster (three masters, three replicas): the
# throughput of 1, 2 and 3 processes driven together, and what each click costs in CPU,
# in cakelink and in Redis. Prints one table of medians.
#
#   benches/cluster.sh [--runs N] [--duration SECS] [--conns N] [--processes "1 2 3"] [--replicas-ack N]
#
# `--replicas-ack N` sets `store.replicas_ack = N` (needs a build that has the key: the
# replicas-ack work); without it the key is left out, which is Redis's own asynchronous
# replication, the same as 0.
#
# All on 127.0.0.1. Pinning as in benches/load.sh: every cakelink process on core 0, wrk
# and the six redis-server nodes on core 1. With two cores the processes share one core,
# so more processes cannot mean more clicks per second here: the figures to read are the
# CPU per click (user + system time from /proc, over the measured run only), which say
# how many cores a given click rate needs on a larger machine.
#
# The `--conns` connections are split evenly over the processes driven, one wrk per
# process, all started together; the three processes run throughout and only the first N
# are driven. Redis CPU counts the masters (where a click is written); the replicas'
# share is reported beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
BIN=${CARGO_TARGET_DIR:-target}/release/cakelink

RUNS=3
DURATION=10
CONNS=64
PROCESSES="1 2 3"
ACK=""
bench_options "runs duration conns processes replicas-ack:ACK" "$@"
for n in $PROCESSES; do
  case $n in 1|2|3) ;; *) echo "--processes takes 1, 2 and 3 only" >&2; exit 2 ;; esac
done
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 120 ] || { echo "--duration: 1 to 120 seconds" >&2; exit 2; }
[ "$RUNS" -ge 1 ] && [ "$RUNS" -le 10 ] || { echo "--runs: 1 to 10" >&2; exit 2; }

need_tools wrk redis-server redis-cli curl
build_release
TICK=$(getconf CLK_TCK)

# A build without `store.replicas_ack` refuses the key: say so now, not after a timeout.
if [ -n "$ACK" ]; then
  cat > "$WORK/ack-check.toml" <<CONF
[store]
backend = "redis"
urls = ["redis://127.0.0.1:6379/"]
replicas_ack = $ACK
[security]
secret = "bench-secret-0123456789abcdef"
admin_token = "bench-admin-token-0123456789"
postback_key = "$POSTBACK_KEY"
CONF
  "$BIN" check-config --config "$WORK/ack-check.toml" >/dev/null || {
    echo "this build does not take store.replicas_ack = $ACK (see the error above)" >&2; exit 2; }
fi

start_redis_cluster
MASTERS=(); REPLICAS=()
for port in "${CLUSTER_PORTS[@]}"; do
  if redis-cli -p "$port" role | head -1 | grep -q master; then
    MASTERS+=("$(redis_pid "$port")")
  else
    REPLICAS+=("$(redis_pid "$port")")
  fi
done

PORTS=(); CAKELINK_PIDS=()
ack_line=""
[ -n "$ACK" ] && ack_line="replicas_ack = $ACK"
for i in 1 2 3; do
  p=$(free_port)
  start_cakelink "$p" "$(printf 'backend = "redis"\nurls = %s\nspool_path = "%s"\n%s\n' \
    "$CLUSTER_URLS" "$WORK/spool-$p" "$ack_line")"
  PORTS+=("$p"); CAKELINK_PIDS+=("$CAKELINK_PID")
done

# drive N SECS: one wrk per process for the first N processes, together; prints the
# summed requests, req/s and errors and the worst p99 (µs) as "requests rps errors p99".
drive() {
  local n=$1 secs=$2 i pids=() per=$((CONNS / $1))
  for i in $(seq 0 $((n - 1))); do
    taskset -c "$LOAD_CPU" wrk -t1 -c"$per" -d"${secs}s" -s benches/wrk-clicks.lua \
      "http://127.0.0.1:${PORTS[$i]}" -- /go/cake/demo > "$WORK/wrk-$i.out" &
    pids+=($!)
  done
  wait "${pids[@]}"
  for i in $(seq 0 $((n - 1))); do grep '^RESULT' "$WORK/wrk-$i.out"; done | awk '
    { for (f = 2; f <= NF; f++) { split($f, kv, "="); v[kv[1]] = kv[2] }
      req += v["requests"]; rps += v["rps"]; err += v["errors"]; if (v["p99"] > p99) p99 = v["p99"] }
    END { printf "%d %d %d %d\n", req, rps, err, p99 }'
}

RESULTS="$WORK/results"
: > "$RESULTS"
for run in $(seq 1 "$RUNS"); do
  for n in $PROCESSES; do
    drive "$n" 2 >/dev/null
    driven=("${CAKELINK_PIDS[@]:0:$n}")
    s0=$(cpu_ticks "${driven[@]}"); m0=$(cpu_ticks "${MASTERS[@]}"); r0=$(cpu_ticks "${REPLICAS[@]}")
    read -r req rps err p99 < <(drive "$n" "$DURATION")
    s1=$(cpu_ticks "${driven[@]}"); m1=$(cpu_ticks "${MASTERS[@]}"); r1=$(cpu_ticks "${REPLICAS[@]}")
    line="rps=$rps errors=$err p99=$p99 requests=$req server_ticks=$((s1 - s0)) master_ticks=$((m1 - m0)) replica_ticks=$((r1 - r0))"
    echo "$run $n $line" >> "$RESULTS"
    echo "run $run  processes $n: $line" >&2
  done
done

python3 - "$RESULTS" "$TICK" "${ACK:-unset}" "$CONNS" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
tick = int(sys.argv[2])
for line in open(sys.argv[1]):
    parts = line.split()
    kv = {k: float(v) for k, v in (p.split("=") for p in parts[2:])}
    clicks = kv["requests"]
    us = lambda ticks: ticks / tick * 1e6 / clicks
    rows[int(parts[1])].append({
        "rps": kv["rps"], "p99": kv["p99"] / 1000, "errors": kv["errors"],
        "server": us(kv["server_ticks"]), "master": us(kv["master_ticks"]), "replica": us(kv["replica_ticks"]),
    })
med = lambda lst, k: statistics.median(x[k] for x in lst)
runs = max(len(v) for v in rows.values())
print(f"medians of {runs} run(s); replicas_ack {sys.argv[3]}; {sys.argv[4]} connections split over the processes")
print("| processes | req/s | p99 ms | errors | cakelink CPU µs/click | Redis masters CPU µs/click | replicas CPU µs/click | clicks/day one master can carry (full core) |")
print("|---|---|---|---|---|---|---|---|")
for n in sorted(rows):
    lst = rows[n]
    master = med(lst, "master")
    per_day = 1e6 / master * 86400 if master > 0 else float("nan")
    print(f"| {n} | {med(lst, 'rps'):,.0f} | {med(lst, 'p99'):.2f} | {int(sum(x['errors'] for x in lst))} | "
          f"{med(lst, 'server'):.1f} | {master:.1f} | {med(lst, 'replica'):.1f} | {per_day / 1e9:.1f} billion |")
PY
