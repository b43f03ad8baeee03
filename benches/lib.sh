# Shared by the benchmark scripts: tools, the release build, servers on free ports,
# pinning, and cleanup. Source it from a script that has cd'ed to the project root.
#
# Pinning: the server under test on core 0 (SERVER_CPU); the load generator and
# redis-server on core 1 (LOAD_CPU).

SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
OFFER="https://offers.example.com/?a=200&c=761&s1=yes"
POSTBACK_KEY="bench-postback-key-0123456789"
BIN=target/release/cakelink

# Installs the Debian packages providing the given commands, when missing.
need_tools() {
  local missing=()
  for tool in "$@"; do
    case $tool in
      nginx) command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light) ;;
      redis-server) command -v redis-server >/dev/null 2>&1 || missing+=(redis-server) ;;
      *) command -v "$tool" >/dev/null 2>&1 || missing+=("$tool") ;;
    esac
  done
  if [ ${#missing[@]} -gt 0 ]; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

build_release() {
  cargo build --release --quiet
}

# The binary under test: --bin's (OWN_BIN), or this tree's release build.
own_binary() {
  if [ -n "${OWN_BIN:-}" ]; then BIN=$OWN_BIN; else build_release; fi
}

WORK=$(mktemp -d)
PIDS=()
# Servers started in a command substitution (`store_toml`) are in a subshell, whose PIDS
# are lost: those note their PID in this file instead.
SUBSHELL_PIDS="$WORK/pids"
cleanup() {
  for p in "${PIDS[@]:-}" $(cat "$SUBSHELL_PIDS" 2>/dev/null); do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.5
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_up() {
  for _ in $(seq 1 300); do curl -s -o /dev/null "http://127.0.0.1:$1${2:-/}" && return 0; sleep 0.1; done
  echo "server on port $1 did not start" >&2
  exit 1
}

# start_redis PORT [redis-server options...]
start_redis() {
  local port=$1; shift
  mkdir -p "$WORK/redis-$port"
  taskset -c "$LOAD_CPU" redis-server --port "$port" --dir "$WORK/redis-$port" --save '' "$@" >/dev/null &
  PIDS+=($!)
  echo $! >> "$SUBSHELL_PIDS"
  for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "redis-server did not start" >&2
  exit 1
}

# The [store] section for a target: embedded, redis, redis-unix or redis-aof (starting Redis); a
# suffix (`embedded-split`, `embedded-healthz`) names the path it is measured on, not the store.
store_toml() {
  local rp store=${1%%-split*} fsync=""
  # A `-fsync<ms>` suffix (`embedded-fsync200`) sets the embedded store's fsync_ms.
  if [[ $store =~ -fsync([0-9]+) ]]; then fsync="fsync_ms = ${BASH_REMATCH[1]}"; store=${store%%-fsync*}; fi
  case ${store%-healthz} in
    embedded) printf 'backend = "embedded"\npath = "%s"\n%s\n' "$WORK/embedded-$2" "$fsync" ;;
    redis) rp=$(free_port); start_redis "$rp" --appendonly no; printf 'backend = "redis"\nurl = "redis://127.0.0.1:%s/"\n' "$rp" ;;
    # The same Redis, reached over a unix socket instead of loopback TCP.
    redis-unix) rp=$(free_port); start_redis "$rp" --appendonly no --unixsocket "$WORK/redis-$rp.sock" --unixsocketperm 700
      printf 'backend = "redis"\nurl = "redis+unix://%s"\n' "$WORK/redis-$rp.sock" ;;
    redis-aof) rp=$(free_port); start_redis "$rp" --appendonly yes --appendfsync everysec
      printf 'backend = "redis"\nurl = "redis://127.0.0.1:%s/"\n' "$rp" ;;
    *) echo "unknown store $1" >&2; exit 2 ;;
  esac
}

# The path a target's clicks go to: `/go/cake/demo` (one offer), or for a target named
# `…-split` the link with a 70/30 split of two offers behind a mobile-device rule, and
# for `…-split-capped` the same with a daily cap on each offer too high to be reached
# (so every click takes the capped path without falling back). A target named
# `…-healthz` is sent to `/healthz`: cakelink's server and router with no click behind.
target_path() {
  case $1 in
    *-split-capped) echo /go/cake/split-capped ;;
    *-split) echo /go/cake/split ;;
    *-healthz) echo /healthz ;;
    *) echo /go/cake/demo ;;
  esac
}

# bench_config PORT STORE_TOML: the config every bench's cakelink runs with: its store,
# and the three links the benches send clicks to (see target_path).
bench_config() {
  local port=$1 store=$2
  cat <<CONF
[server]
listen = "127.0.0.1:$port"
[store]
$store
[security]
secret = "bench-secret-0123456789abcdef"
admin_token = "bench-admin-token-0123456789"
postback_key = "$POSTBACK_KEY"
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
[[links]]
slug = "split-capped"
offer = "$OFFER"
  [[links.offers]]
  id = "a"
  url = "$OFFER&c=11"
  weight = 70
  daily_cap = 1000000000
  [[links.offers]]
  id = "b"
  url = "$OFFER&c=12"
  weight = 30
  daily_cap = 1000000000
  [[links.rules]]
  device = ["mobile"]
  offers = ["a", "b"]
CONF
}

# start_cakelink PORT STORE_TOML [wrapper command...]: cakelink on core 0; the PID of
# the server (or of its wrapper) is in CAKELINK_PID.
start_cakelink() {
  local port=$1 store=$2; shift 2
  bench_config "$port" "$store" > "$WORK/cakelink-$port.toml"
  RUST_LOG=warn taskset -c "$SERVER_CPU" "$@" "$BIN" serve --config "$WORK/cakelink-$port.toml" \
    2>"$WORK/cakelink-$port.log" &
  CAKELINK_PID=$!
  PIDS+=($CAKELINK_PID)
  wait_up "$port" /healthz
}

# bench_options "NAME[:VAR] ..." ARGS...: every bench's option parsing. Takes `--NAME VALUE`
# for each NAME listed and sets VAR to VALUE: NAME in capitals with `-` as `_`
# (`--disk-clicks` sets DISK_CLICKS) unless a VAR follows a colon. Variables keep the
# caller's defaults for options not given; any other option is an error.
bench_options() {
  local names=$1 name spec var
  shift
  while [ $# -gt 0 ]; do
    name=${1#--}
    var=""
    for spec in $names; do
      case $spec in
        "$name") var=$(tr 'a-z-' 'A-Z_' <<<"$name") ;;
        "$name":*) var=${spec#*:} ;;
      esac
    done
    if [ "$name" = "$1" ] || [ -z "$var" ]; then echo "unknown option $1" >&2; exit 2; fi
    if [ $# -lt 2 ]; then echo "$1 needs a value" >&2; exit 2; fi
    printf -v "$var" '%s' "$2"
    shift 2
  done
}

# ab_options ARGS...: the options of the benches that may alternate two builds: --runs,
# --duration, --conns, --targets (load.sh's), --bin (measure that binary instead of this
# tree's) and --base-bin (measure another one too). Sets RUNS, DURATION, CONNS, TARGETS,
# OWN_BIN and BASE_BIN; the first four keep the defaults the caller set.
ab_options() {
  OWN_BIN=""
  BASE_BIN=""
  bench_options "runs duration conns targets bin:OWN_BIN base-bin" "$@"
}

# start_each_bin BIN...: one cakelink on the embedded store per binary, for benches that
# alternate builds run by run. Sets BINS to the binaries, and PORT and SERVER (keyed by
# binary; the caller declares them with `declare -A PORT SERVER`) to each one's port and PID.
start_each_bin() {
  BINS=("$@")
  local b p
  for b in "$@"; do
    p=$(free_port)
    BIN=$b start_cakelink "$p" "$(store_toml embedded "$p")"
    PORT[$b]=$p
    SERVER[$b]=$CAKELINK_PID
  done
}

# each_ab_run FUNCTION: for each run, connection count and binary of start_each_bin, in
# that order (so the builds alternate run by run), warms that binary's server up with wrk,
# then calls FUNCTION RUN CONNS BINARY PORT to measure it.
each_ab_run() {
  local run c b
  for run in $(seq 1 "$RUNS"); do
    for c in $CONNS; do
      for b in "${BINS[@]}"; do
        warm_up "${PORT[$b]}" "$c" benches/wrk-clicks.lua /go/cake/demo
        "$1" "$run" "$c" "$b" "${PORT[$b]}"
      done
    done
  done
}

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

# warm_up PORT CONNS SCRIPT ARGS...: 2 s of wrk on core 1, not measured.
warm_up() {
  local port=$1 conns=$2 script=$3; shift 3
  taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d2s -s "$script" "http://127.0.0.1:$port" -- "$@" >/dev/null
}

# wrk_run PORT SECONDS CONNS SCRIPT ARGS...: one measured wrk run on core 1; prints the
# script's RESULT line.
wrk_run() {
  local port=$1 secs=$2 conns=$3 script=$4; shift 4
  taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d"${secs}s" -s "$script" "http://127.0.0.1:$port" -- "$@" | grep '^RESULT'
}

# wrk_result PORT SECONDS CONNS SCRIPT ARGS...: a measured run (wrk_run) after a 2 s warm-up.
wrk_result() {
  warm_up "$1" "$3" "${@:4}"
  wrk_run "$@"
}

# Medians of RESULT lines, "RUN CONNS TARGET RESULT k=v..." one a line in $1, as a table
# with ratios to the target named in $2 (if present).
median_table() {
  python3 - "$1" "$2" <<'PY'
import sys, statistics, collections
rows = collections.defaultdict(list)
runs = set()
for line in open(sys.argv[1]):
    parts = line.split()
    runs.add(parts[0])
    conns, target = int(parts[1]), parts[2]
    kv = dict(p.split("=") for p in parts[4:])
    rows[(conns, target)].append({k: float(v) for k, v in kv.items()})
anchor = sys.argv[2]
def med(lst, k): return statistics.median(x[k] for x in lst)
print(f"medians of {len(runs)} run(s); latency in ms")
print(f"| conns | target | req/s | p50 | p99 | p99.9 | errors | req/s vs {anchor} | p99 vs {anchor} |")
print("|---|---|---|---|---|---|---|---|---|")
for conns in sorted({c for c, _ in rows}):
    base = rows.get((conns, anchor))
    for (c, t), lst in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1] != anchor, kv[0][1])):
        if c != conns: continue
        rps, p50, p99, p999 = med(lst, "rps"), med(lst, "p50")/1000, med(lst, "p99")/1000, med(lst, "p999")/1000
        err = int(sum(x["errors"] for x in lst))
        r = f"{rps/med(base,'rps'):.2f}x" if base else "-"
        q = f"{p99/(med(base,'p99')/1000):.2f}x" if base else "-"
        print(f"| {c} | {t} | {rps:,.0f} | {p50:.3f} | {p99:.3f} | {p999:.3f} | {err} | {r} | {q} |")
PY
}

# start_redis_cluster: six redis-server nodes on core 1 (LOAD_CPU), joined as three
# masters with one replica each; waits until every node says the cluster is ok and
# every replica is in sync. Sets CLUSTER_PORTS (all nodes) and CLUSTER_URLS (a TOML
# array for `store.urls`).
start_redis_cluster() {
  CLUSTER_PORTS=()
  local port bus addrs=() urls=()
  for _ in 1 2 3 4 5 6; do
    port=$(free_port); bus=$(free_port)
    start_redis "$port" --appendonly no --cluster-enabled yes --cluster-config-file nodes.conf \
      --cluster-port "$bus" --cluster-node-timeout 5000 --repl-diskless-sync-delay 0
    CLUSTER_PORTS+=("$port"); addrs+=("127.0.0.1:$port"); urls+=("\"redis://127.0.0.1:$port/\"")
  done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
  local ok
  for _ in $(seq 1 300); do
    ok=1
    for port in "${CLUSTER_PORTS[@]}"; do
      redis-cli -p "$port" cluster info | grep -q '^cluster_state:ok' || ok=0
      if redis-cli -p "$port" info replication | grep -q '^role:slave'; then
        redis-cli -p "$port" info replication | grep -q '^master_link_status:up' || ok=0
      fi
    done
    [ "$ok" = 1 ] && break
    sleep 0.1
  done
  [ "$ok" = 1 ] || { echo "the Redis Cluster did not form" >&2; exit 1; }
  CLUSTER_URLS="[$(IFS=,; echo "${urls[*]}")]"
}

# The process id of the redis-server on port $1.
redis_pid() { redis-cli -p "$1" info server | tr -d '\r' | awk -F: '/^process_id:/ { print $2 }'; }

# CPU time (user + system) of the given process ids, in clock ticks, from /proc.
cpu_ticks() {
  local total=0 pid t
  for pid in "$@"; do
    # Fields 14 and 15 of /proc/PID/stat; the command name (field 2) may hold spaces.
    t=$(sed 's/^.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }')
    total=$((total + t))
  done
  echo "$total"
}

# Clicks and bot hits the cakelink on port $1 counts today (UTC), from /api/stats.
stored_today() {
  curl -s -H "Authorization: Bearer bench-admin-token-0123456789" \
    "http://127.0.0.1:$1/api/stats?from=$(date -u +%F)&to=$(date -u +%F)&group=link" |
    python3 -c 'import json,sys; print(sum(r["clicks"] + r["bot_hits"] for r in json.load(sys.stdin)["rows"]))'
}
