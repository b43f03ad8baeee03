#!/usr/bin/env bash
# Soak test: mixed clicks and postbacks at half of peak load against cakelink on Redis
# (appendfsync always), with redis-server restarted twice in the middle. Reports
# requests, errors (5xx and socket errors), clicks lost (every click id from a 302 is
# looked up through GET /api/clicks/{id} afterwards; must be 0), postback answers, and
# cakelink's RSS at start and end. Not part of the test suite.
#
#   benches/soak.sh [--duration SECS] [--rate REQ_PER_SEC] [--conns N] [--bin PATH]
#
# --duration  length of the loaded run (default 600)
# --rate      requests a second; default: half of a 10-second peak measured first
# --conns     wrk connections (default 32)
# --bin       a cakelink binary to run (default: a release build made here)
#
# Pinning as in benches/load.sh: cakelink on core 0, wrk and redis-server on core 1.
# Exits non-zero when a click was lost.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=600
RATE=""
CONNS=32
BIN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
for tool in wrk redis-server redis-cli python3 curl taskset; do
  command -v "$tool" >/dev/null 2>&1 || { echo "soak needs $tool" >&2; exit 2; }
done
if [ -z "$BIN" ]; then
  cargo build --release --quiet
  BIN=target/release/cakelink
fi

WORK=$(mktemp -d)
CAKELINK_PID=""
REDIS_PID=""
mkdir -p "$WORK/redis" "$WORK/out"
cleanup() {
  # The restarts run in a subshell, so the current redis-server's pid is in a file.
  REDIS_PID=$(cat "$WORK/redis.pid" 2>/dev/null || true)
  for p in "$CAKELINK_PID" "$REDIS_PID"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.3
  [ -n "${SOAK_KEEP:-}" ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kb() { ps -o rss= -p "$CAKELINK_PID" | tr -d ' '; }
ADMIN_TOKEN="soak-admin-token-0123456789"
POSTBACK_KEY="soak-postback-key-0123456789"
REDIS_PORT=$(free_port)
PORT=$(free_port)

start_redis() {
  taskset -c 1 redis-server --port "$REDIS_PORT" --dir "$WORK/redis" --save '' \
    --appendonly yes --appendfsync always >"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  echo "$REDIS_PID" > "$WORK/redis.pid"
  for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "redis did not start" >&2; exit 1
}

restart_redis() {
  echo "$(date -u +%T) stopping redis-server" >&2
  kill "$REDIS_PID"
  while kill -0 "$REDIS_PID" 2>/dev/null; do sleep 0.1; done
  sleep 2
  start_redis
  echo "$(date -u +%T) redis-server is back" >&2
}

start_redis
cat > "$WORK/cakelink.toml" <<CONF
[server]
listen = "127.0.0.1:$PORT"
[store]
backend = "redis"
url = "redis://127.0.0.1:$REDIS_PORT/"
[security]
secret = "soak-secret-0123456789abcdef"
admin_token = "$ADMIN_TOKEN"
postback_key = "$POSTBACK_KEY"
[[links]]
slug = "demo"
offer = "https://offers.example.com/?a=200&c=761&s1=yes"
CONF
RUST_LOG=warn taskset -c 0 "$BIN" serve --config "$WORK/cakelink.toml" 2>"$WORK/cakelink.log" &
CAKELINK_PID=$!
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/healthz" && break; sleep 0.1; done
curl -sf -o /dev/null "http://127.0.0.1:$PORT/healthz" || { echo "cakelink did not start" >&2; cat "$WORK/cakelink.log" >&2; exit 1; }

if [ -z "$RATE" ]; then
  peak=$(taskset -c 1 wrk -t1 -c64 -d10s -s benches/wrk-clicks.lua "http://127.0.0.1:$PORT" -- /go/cake/demo \
    | sed -n 's/^RESULT rps=\([0-9]*\).*/\1/p')
  RATE=$(( peak / 2 ))
  echo "peak ${peak} req/s; soaking at ${RATE} req/s" >&2
fi
RSS_START=$(rss_kb)

# Redis goes down at one third and at two thirds of the run.
(
  sleep $(( DURATION / 3 )); restart_redis
  sleep $(( DURATION / 3 )); restart_redis
) &
RESTARTS=$!

THREADS=2
[ "$CONNS" -lt "$THREADS" ] && THREADS=$CONNS
RESULT=$(taskset -c 1 wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --timeout 10s -s benches/wrk-soak.lua \
  "http://127.0.0.1:$PORT" -- "$WORK/out" "$RATE" "$CONNS" "$POSTBACK_KEY" "$THREADS" | grep '^RESULT')
wait "$RESTARTS"
RSS_END=$(rss_kb)

python3 - "$WORK/out" "$PORT" "$ADMIN_TOKEN" "$RESULT" "$RSS_START" "$RSS_END" "$RATE" <<'PY'
import collections, glob, http.client, sys
from concurrent.futures import ThreadPoolExecutor

out, port, token, result, rss_start, rss_end, rate = sys.argv[1:8]
kv = dict(p.split("=") for p in result.split()[1:])
ids = []
for name in sorted(glob.glob(f"{out}/ids-*.txt")):
    ids += [line.strip() for line in open(name) if line.strip()]
answers = collections.Counter()
for name in glob.glob(f"{out}/postbacks-*.txt"):
    answers.update(line.strip() for line in open(name) if line.strip())

def lost_in(chunk):
    """Looks the ids up on one connection, pipelined in batches; returns those not found."""
    conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=30)
    conn.connect()
    sock = conn.sock
    reader = sock.makefile("rb")
    lost = []
    for start in range(0, len(chunk), 200):
        batch = chunk[start:start + 200]
        sock.sendall(b"".join(
            f"GET /api/clicks/{i} HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
            for i in batch))
        for i in batch:
            status = int(reader.readline().split()[1])
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            reader.read(length)
            if status != 200:
                lost.append((i, status))
    conn.close()
    return lost

workers = 4
chunks = [ids[k::workers] for k in range(workers)]
with ThreadPoolExecutor(workers) as pool:
    lost = [x for part in pool.map(lost_in, chunks) for x in part]

secs = float(kv["secs"])
errors = int(kv["status_errors"]) + int(kv["socket_errors"])
print(f"duration            {secs:.0f} s at a target of {rate} req/s (achieved {int(kv['requests']) / secs:.0f})")
print(f"requests            {kv['requests']}")
print(f"errors              {errors} ({kv['status_errors']} HTTP >= 400, {kv['socket_errors']} socket)")
print(f"latency p50 / p99   {int(kv['p50']) / 1000:.2f} / {int(kv['p99']) / 1000:.2f} ms")
print(f"clicks (302)        {len(ids)}")
print(f"clicks lost         {len(lost)}")
for i, status in lost[:10]:
    print(f"  {i}: {status}")
print("postback answers    " + ", ".join(f"{k}: {v}" for k, v in sorted(answers.items())))
print(f"RSS start / end     {int(rss_start) / 1024:.1f} / {int(rss_end) / 1024:.1f} MiB")
sys.exit(1 if lost else 0)
PY
