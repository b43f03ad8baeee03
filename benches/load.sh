#!/usr/bin/env bash
# Redirect load benchmark: cakelink (embedded store, Redis store) beside nginx's static
# `return 302`, same load, same pinning, in one run. Prints one table of medians.
#
#   benches/load.sh [--runs N] [--duration SECS] [--conns "64 256"] [--targets "nginx embedded redis redis-aof"]
#
# Pinning: the server under test on core 0; wrk and redis-server on core 1.
# Needs nginx, wrk and redis-server (installed from Debian's packages when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=3
DURATION=10
CONNS="64 256"
TARGETS="nginx embedded redis"
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --targets) TARGETS=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --quiet
BIN=target/release/cakelink
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$1${2:-/}" && return 0; sleep 0.1; done; echo "server on $1 did not start" >&2; exit 1; }
OFFER="https://offers.example.com/?a=200&c=761&s1=yes"

start_nginx() {
  local port=$1
  mkdir -p "$WORK/nginx"
  cat > "$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
error_log $WORK/nginx/error.log error;
pid $WORK/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/nginx;
  server {
    listen 127.0.0.1:$port reuseport backlog=4096;
    location / { return 302 "${OFFER}&s2=static-click-id-0000000000000000"; }
  }
}
CONF
  taskset -c 0 "$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
  PIDS+=($!)
  wait_up "$port" /
}

start_redis() {
  local port=$1; shift
  mkdir -p "$WORK/redis-$port"
  taskset -c 1 redis-server --port "$port" --dir "$WORK/redis-$port" --save '' "$@" >/dev/null &
  PIDS+=($!)
  for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "redis did not start" >&2; exit 1
}

start_cakelink() {
  local port=$1 store=$2
  cat > "$WORK/cakelink-$port.toml" <<CONF
[server]
listen = "127.0.0.1:$port"
[store]
$store
[security]
secret = "bench-secret-0123456789abcdef"
admin_token = "bench-admin-token-0123456789"
postback_key = "bench-postback-key-0123456789"
[[links]]
slug = "demo"
offer = "$OFFER"
CONF
  RUST_LOG=warn taskset -c 0 "$BIN" serve --config "$WORK/cakelink-$port.toml" 2>"$WORK/cakelink-$port.log" &
  PIDS+=($!)
  wait_up "$port" /healthz
}

declare -A PORT
for t in $TARGETS; do
  p=$(free_port)
  PORT[$t]=$p
  case $t in
    nginx) start_nginx "$p" ;;
    embedded) start_cakelink "$p" "backend = \"embedded\"
path = \"$WORK/embedded-db\"" ;;
    redis) rp=$(free_port); start_redis "$rp" --appendonly no
      start_cakelink "$p" "backend = \"redis\"
url = \"redis://127.0.0.1:$rp/\"" ;;
    redis-aof) rp=$(free_port); start_redis "$rp" --appendonly yes --appendfsync everysec
      start_cakelink "$p" "backend = \"redis\"
url = \"redis://127.0.0.1:$rp/\"" ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
done

RESULTS="$WORK/results"
: > "$RESULTS"
for run in $(seq 1 "$RUNS"); do
  for c in $CONNS; do
    for t in $TARGETS; do
      path=/go/cake/demo
      [ "$t" = nginx ] && path=/go/cake/demo
      # Warm up briefly, then measure.
      taskset -c 1 wrk -t1 -c"$c" -d2s -s benches/wrk-clicks.lua "http://127.0.0.1:${PORT[$t]}" -- "$path" >/dev/null
      line=$(taskset -c 1 wrk -t1 -c"$c" -d"${DURATION}s" -s benches/wrk-clicks.lua "http://127.0.0.1:${PORT[$t]}" -- "$path" | grep '^RESULT')
      echo "$run $c $t $line" >> "$RESULTS"
      echo "run $run  conns $c  $t: ${line#RESULT }" >&2
    done
  done
done

python3 - "$RESULTS" "$RUNS" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    parts = line.split()
    run, conns, target = parts[0], int(parts[1]), parts[2]
    kv = dict(p.split("=") for p in parts[4:])
    rows[(conns, target)].append({k: float(v) for k, v in kv.items()})
def med(lst, k): return statistics.median(x[k] for x in lst)
print(f"medians of {sys.argv[2]} run(s); latency in ms")
print("| conns | target | req/s | p50 | p99 | p99.9 | errors | req/s vs nginx | p99 vs nginx |")
print("|---|---|---|---|---|---|---|---|---|")
for conns in sorted({c for c, _ in rows}):
    base = rows.get((conns, "nginx"))
    for (c, t), lst in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1] != "nginx", kv[0][1])):
        if c != conns: continue
        rps, p50, p99, p999 = med(lst, "rps"), med(lst, "p50")/1000, med(lst, "p99")/1000, med(lst, "p999")/1000
        err = int(sum(x["errors"] for x in lst))
        r = f"{rps/med(base,'rps'):.2f}x" if base else "-"
        q = f"{p99/(med(base,'p99')/1000):.2f}x" if base else "-"
        print(f"| {c} | {t} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {p999:.3f} | {err} | {r} | {q} |")
PY
