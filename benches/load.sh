#!/usr/bin/env bash
# Redirect load benchmark: cakelink (embedded store, Redis store, Redis with AOF) beside
# nginx's static `return 302`, same load, same pinning, in one run. Prints one table of
# medians with ratios to nginx.
#
#   benches/load.sh [--runs N] [--duration SECS] [--conns "64 256"] [--targets "nginx embedded redis redis-aof"]
#                   [--bin PATH] [--base-bin PATH]
#
# A target may carry a suffix naming the link it is measured on: `embedded-split` is the
# embedded store on a link with two weighted offers behind a rule, `embedded-split-capped`
# the same with daily caps, and `embedded-healthz` sends every request to `/healthz`: the
# server and its router with no click behind them (see `target_path` in lib.sh). A
# `-fsync<ms>` suffix (`embedded-fsync200`) sets the embedded store's `fsync_ms`.
# `redis-unix` is the `redis` target reached over a unix socket instead of loopback TCP.
#
# --bin runs that binary instead of building this tree. With --base-bin, a target ending in
# `-base` (`embedded-base`) runs that binary: another build (the main branch, say)
# measured in the same runs.
#
# `floor` is hyper and tokio alone (`examples/hyper_floor.rs`): cakelink's 302 with none of
# its work, on cakelink's settings. A suffix changes one setting: `floor-current` (tokio's
# current-thread runtime), `floor-h1` (HTTP/1.1 only, no protocol sniffing), `floor-nodate`
# (no `Date` header), `floor-writev` and `floor-flat` (write vectoring forced on, off),
# `floor-notimeout` (no header read timeout, so no timer armed per request).
#
# Pinning: the server under test on core 0; wrk and redis-server on core 1. Needs nginx,
# wrk and redis-server (installed from Debian's packages when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh

RUNS=3
DURATION=10
CONNS="64 256"
TARGETS="nginx embedded redis redis-aof"
ab_options "$@"

need_tools nginx wrk redis-server curl
own_binary
case " $TARGETS " in *" floor"*) cargo build --release --quiet --example hyper_floor ;; esac
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

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
  taskset -c "$SERVER_CPU" "$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" &
  PIDS+=($!)
  wait_up "$port" /
}

start_floor() {
  local port=$1 flags
  case $2 in
    floor) flags=() ;;
    floor-current) flags=(--runtime current) ;;
    floor-h1) flags=(--http1-only) ;;
    floor-nodate) flags=(--no-date) ;;
    floor-writev) flags=(--writev on) ;;
    floor-flat) flags=(--writev off) ;;
    floor-notimeout) flags=(--no-header-timeout) ;;
    *) echo "unknown target $2" >&2; exit 2 ;;
  esac
  taskset -c "$SERVER_CPU" target/release/examples/hyper_floor "$port" "${flags[@]}" &
  PIDS+=($!)
  wait_up "$port" /
}

declare -A PORT
for t in $TARGETS; do
  p=$(free_port)
  PORT[$t]=$p
  case $t in
    nginx) start_nginx "$p" ;;
    floor*) start_floor "$p" "$t" ;;
    *-base) own=$BIN; BIN=${BASE_BIN:?--base-bin names the binary of the -base targets}
      start_cakelink "$p" "$(store_toml "${t%-base}" "$p")"; BIN=$own ;;
    *) start_cakelink "$p" "$(store_toml "$t" "$p")" ;;
  esac
done

RESULTS="$WORK/results"
: > "$RESULTS"
for run in $(seq 1 "$RUNS"); do
  for c in $CONNS; do
    for t in $TARGETS; do
      line=$(wrk_result "${PORT[$t]}" "$DURATION" "$c" benches/wrk-clicks.lua "$(target_path "$t")")
      echo "$run $c $t $line" >> "$RESULTS"
      echo "run $run  conns $c  $t: ${line#RESULT }" >&2
    done
  done
done
median_table "$RESULTS" nginx
