#!/usr/bin/env bash
# The cost of `--redis-replicas-ack 1` in the fan-out benchmark: one server on a Redis master
# with one replica, run with ack0 (the default: acknowledged once the master has a message) and
# ack1 (once WAIT says the replica has it), interleaved round by round so that other load on
# the machine falls on both alike. Two loads: a big room (SUBS subscribers, RATE msgs/s) and a
# busy small one (SUBS2, RATE2), where the per-message cost shows. One JSON line per run in
# $OUT/replicas_ack.jsonl (fanout.py's), a table at the end.
#
#   loadtest/replicas_ack.sh                  3 rounds
#   ROUNDS=5 OUT=/tmp/x loadtest/replicas_ack.sh
#
# Placement as in docs/performance.md: server on SERVER_CORE, generator, master and replica on
# GEN_CORE. Environment: OUT=/tmp/webchat-replicas-ack ROUNDS=3 PORT=8094 REDIS_PORT=6394
# REPLICA_PORT=6395 PYTHON=.venv/bin/python SUBS=200 PUBS=10 RATE=50 SUBS2=10 PUBS2=10
# RATE2=200 DURATION=10
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=loadtest/_servers.sh
source loadtest/_servers.sh

OUT=${OUT:-/tmp/webchat-replicas-ack}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-8094}
REPLICA_PORT=${REPLICA_PORT:-6395}
PYTHON=${PYTHON:-.venv/bin/python}
SERVER_CORE=${SERVER_CORE:-0}
GEN_CORE=${GEN_CORE:-1}
SUBS=${SUBS:-200} PUBS=${PUBS:-10} RATE=${RATE:-50}
SUBS2=${SUBS2:-10} PUBS2=${PUBS2:-10} RATE2=${RATE2:-200}
DURATION=${DURATION:-10}
export REDIS_PORT=${REDIS_PORT:-6394}
export REDIS_DIR="$OUT/redis"
export REDIS_CORE=$GEN_CORE
export REDIS_APPENDONLY=no
mkdir -p "$OUT/replica"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

SERVER_PID="" REPLICA_PID=""
cleanup() {
    stop_pid "$SERVER_PID"
    stop_pid "$REPLICA_PID"
    loadtest/redis_ctl.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

start_redis() {
    REDIS_FRESH=1 loadtest/redis_ctl.sh start >/dev/null
    REDIS_PID=$(loadtest/redis_ctl.sh pid)
    setsid taskset -c "$GEN_CORE" redis-server --port "$REPLICA_PORT" --bind 127.0.0.1 --save '' \
        --appendonly no --dir "$OUT/replica" --replicaof 127.0.0.1 "$REDIS_PORT" \
        --repl-diskless-sync-delay 0 >>"$OUT/replica/redis.log" 2>&1 </dev/null &
    REPLICA_PID=$!
    for _ in $(seq 200); do
        redis-cli -p "$REPLICA_PORT" info replication 2>/dev/null | grep -q 'master_link_status:up' && return 0
        sleep 0.05
    done
    echo "the replica did not sync; see $OUT/replica/redis.log" >&2
    exit 1
}

start_server() {  # variant
    local acks=${1#ack}
    start_redis
    taskset -c "$SERVER_CORE" "$PYTHON" -m webchat --port "$PORT" --rate 1000 --burst 1000 \
        --redis-url "redis://127.0.0.1:${REDIS_PORT}/0" --redis-replicas-ack "$acks" \
        >>"$OUT/server-$1.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "$SERVER_PID" "$PORT" "$OUT/server-$1.log"
}
stop_server() {
    stop_pid "$SERVER_PID"
    SERVER_PID=""
    stop_pid "$REPLICA_PID"
    REPLICA_PID=""
    loadtest/redis_ctl.sh stop >/dev/null
}

for round in $(seq "$ROUNDS"); do
    order=(ack0 ack1)
    [ $((round % 2)) = 1 ] || order=(ack1 ack0)
    for variant in "${order[@]}"; do
        for load in big busy; do
            subs=$SUBS pubs=$PUBS rate=$RATE
            [ "$load" = big ] || { subs=$SUBS2 pubs=$PUBS2 rate=$RATE2; }
            start_server "$variant"
            echo "== round $round $variant $load | $(uptime | sed 's/.*load/load/')" | tee -a "$OUT/notes.txt" >&2
            taskset -c "$GEN_CORE" "$PYTHON" loadtest/fanout.py --url "ws://127.0.0.1:${PORT}/ws?room=bench" \
                --subs "$subs" --pubs "$pubs" --rate "$rate" --duration "$DURATION" \
                --server-pid "$SERVER_PID" --redis-pid "$REDIS_PID" \
                --label "$variant $load round=$round load=$(cut -d' ' -f1-3 /proc/loadavg)" \
                --out "$OUT/replicas_ack.jsonl" >/dev/null
            stop_server
        done
    done
done

"$PYTHON" - "$OUT/replicas_ack.jsonl" <<'EOF'
import json, statistics, sys
from collections import defaultdict

runs = defaultdict(list)
for line in open(sys.argv[1]):
    run = json.loads(line)
    variant, load = run["label"].split()[:2]
    runs[(load, variant)].append(run)

print("| load | variant | runs | deliveries per server CPU-s, mean | server CPU % | Redis CPU % "
      "| p50 ms (median of runs) | p99 ms (median of runs) | lost |")
print("|---|---|---|---|---|---|---|---|---|")
for (load, variant), rs in sorted(runs.items()):
    eff = [r["deliveries_per_server_cpu_s"] for r in rs if r.get("deliveries_per_server_cpu_s")]
    med = lambda key: statistics.median(r["latency"][key] for r in rs)  # noqa: E731
    cpu = ", ".join(f"{r['server_cpu_pct']:.0f}" for r in rs)
    rcpu = ", ".join(f"{r['redis_cpu_pct']:.0f}" for r in rs if r.get("redis_cpu_pct") is not None)
    print(f"| {load} | {variant} | {len(rs)} | {statistics.mean(eff) / 1000:.1f}k | {cpu} | {rcpu} "
          f"| {med('p50_ms'):.1f} | {med('p99_ms'):.1f} | {sum(r['lost'] for r in rs)} |")
EOF
