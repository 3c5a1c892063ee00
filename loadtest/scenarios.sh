#!/usr/bin/env bash
# Issue 2's and issue 3's performance scenarios, each against a fresh server pinned to core 0
# with the generator pinned to core 1 (see docs/performance.md). One JSON line per run in
# $OUT/*.jsonl.
#
#   loadtest/scenarios.sh [SCENARIO...]   default: n100 n1000 n5000 conns overload1000 overload5000
#
# In-memory broker: n100 n1000 n5000 conns overload1000 overload5000.
# Redis broker (a fresh redis-server per run, appendonly yes, pinned to REDIS_CORE):
#   redis-n100 redis-n1000 redis-n5000        one worker
#   redis2-n100 redis2-n1000 redis2-n5000     `--workers 2` on one port (SO_REUSEPORT), both
#                                             workers pinned to SERVER_CORE unless WORKER_CORES
#   redis-n1000r50 redis2-n1000r50            N=1000 at R=50 (efficiency below saturation)
#   redis-restart                             N=100 R=20 30 s, Redis restarted 10 s in
#                                             (fanout.py only: wsbench has no event hook)
#   redis2-restart redis-restart-n1000        the same with 2 workers; with N=1000 R=100
#
# Environment:
#   OUT=/tmp/webchat-perf   where results and server logs go
#   PORT=8091               server port (loopback only)
#   REPEAT=1                runs per scenario and tool
#   WSBENCH=/tmp/wsbench    also run wsbench (cp -r ../shared/bench /tmp/wsbench && npm install)
#   PYTHON=.venv/bin/python the interpreter for fanout.py (one with uvloop is cheaper per frame)
#   SERVER_CORE=0 GEN_CORE=1
#   REDIS_PORT=6391 REDIS_CORE=$GEN_CORE   Redis scenarios (REDIS_CORE= leaves it unpinned)
#   WORKER_CORES="0 1"      redis2-*: pin worker i to the i-th core instead (taskset -p)
#   RESTART_DOWN_S=0 RESTART_SIGNAL=TERM   redis-restart: time kept down, stop signal
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/webchat-perf}
PORT=${PORT:-8091}
REPEAT=${REPEAT:-1}
WSBENCH=${WSBENCH:-}
PYTHON=${PYTHON:-.venv/bin/python}
SERVER_CORE=${SERVER_CORE:-0}
GEN_CORE=${GEN_CORE:-1}
WEBCHAT=${WEBCHAT:-.venv/bin/webchat}
URL="ws://127.0.0.1:${PORT}/ws?room=bench"
TEMPLATE='{"type":"message","text":"%TEXT%"}'
mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# Redis (used when BROKER=redis; the redis* scenarios set it).
export REDIS_PORT=${REDIS_PORT:-6391}
export REDIS_DIR="$OUT/redis"
export REDIS_CORE=${REDIS_CORE-$GEN_CORE}
BROKER=memory
WORKERS=1
REDIS_PID=""

SERVER_PID=""   # the process started (with WORKERS > 1, the supervising parent)
SERVER_PIDS=""  # the processes that serve (the workers), comma-separated, for CPU readings
start_server() {
    local broker=()
    if [ "$BROKER" = redis ]; then
        REDIS_FRESH=1 loadtest/redis_ctl.sh start >/dev/null
        REDIS_PID=$(loadtest/redis_ctl.sh pid)
        broker=(--redis-url "redis://127.0.0.1:${REDIS_PORT}/0" --workers "$WORKERS")
    fi
    # The publishers' own rate limit is not under test here: raise it so it never interferes.
    taskset -c "$SERVER_CORE" "$WEBCHAT" --port "$PORT" --rate 1000 --burst 1000 "${broker[@]}" \
        >>"$OUT/server.log" 2>&1 &
    SERVER_PID=$!
    SERVER_PIDS=$SERVER_PID
    for _ in $(seq 100); do
        if curl -fsS "http://127.0.0.1:${PORT}/readyz" >/dev/null 2>&1; then
            if [ "$WORKERS" -gt 1 ]; then find_workers; fi
            return 0
        fi
        kill -0 "$SERVER_PID" || { echo "server exited; see $OUT/server.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "server did not answer /readyz" >&2
    exit 1
}
find_workers() {  # the parent's children, except multiprocessing's resource tracker
    local pids=() pid cores i=0
    for _ in $(seq 50); do
        pids=()
        for pid in $(cat /proc/"$SERVER_PID"/task/*/children 2>/dev/null); do
            grep -q resource_tracker "/proc/$pid/cmdline" 2>/dev/null || pids+=("$pid")
        done
        [ ${#pids[@]} -ge "$WORKERS" ] && break
        sleep 0.1
    done
    # Every worker must be ready, not just the one that answered.
    for _ in $(seq 20); do curl -fsS "http://127.0.0.1:${PORT}/readyz" >/dev/null 2>&1 || true; done
    SERVER_PIDS=$(IFS=,; echo "${pids[*]}")
    if [ -n "${WORKER_CORES:-}" ]; then
        read -r -a cores <<<"$WORKER_CORES"
        for pid in "${pids[@]}"; do
            taskset -p -c "${cores[i % ${#cores[@]}]}" "$pid" >/dev/null
            i=$((i + 1))
        done
    fi
}
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
    if [ "$BROKER" = redis ]; then
        loadtest/redis_ctl.sh stop >/dev/null
        REDIS_PID=""
    fi
}
trap stop_server EXIT

# CPU of Redis, when there is one: fanout.py --redis-pid, wsbench --other-pids.
redis_args() { if [ -n "$REDIS_PID" ]; then echo "--redis-pid $REDIS_PID"; fi; }
other_args() { if [ -n "$REDIS_PID" ]; then echo "--other-pids $REDIS_PID"; fi; }

note() {
    echo "== $* [$BROKER, $WORKERS worker(s): $SERVER_PIDS${REDIS_PID:+, redis $REDIS_PID}]" \
        "| $(uptime | sed 's/.*load/load/')" | tee -a "$OUT/notes.txt" >&2
}

# fanout.py and wsbench take the same shape of arguments.
fanout() {  # name subs pubs rate duration
    local name=$1 subs=$2 pubs=$3 rate=$4 duration=$5
    for _ in $(seq "$REPEAT"); do
        start_server
        note "$name fanout.py N=$subs P=$pubs R=$rate"
        # shellcheck disable=SC2046  # redis_args: no word or nothing
        taskset -c "$GEN_CORE" "$PYTHON" loadtest/fanout.py --url "$URL" --subs "$subs" \
            --pubs "$pubs" --rate "$rate" --duration "$duration" --server-pid "$SERVER_PIDS" \
            $(redis_args) --label "$name" --out "$OUT/fanout.jsonl" >/dev/null
        stop_server
        if [ -n "$WSBENCH" ]; then
            start_server
            note "$name wsbench N=$subs P=$pubs R=$rate"
            # shellcheck disable=SC2046
            taskset -c "$GEN_CORE" node "$WSBENCH/wsbench.js" fanout --url "$URL" \
                --template "$TEMPLATE" --subs "$subs" --pubs "$pubs" --rate "$rate" \
                --duration "$duration" --server-pids "$SERVER_PIDS" $(other_args) \
                --label "$name load=$(cut -d' ' -f1-3 /proc/loadavg)" \
                --out "$OUT/wsbench.jsonl" >/dev/null
            stop_server
        fi
    done
}

conns() {
    local count=${CONNS:-10000}
    for _ in $(seq "$REPEAT"); do
        start_server
        note "conns fanout.py K=$count"
        taskset -c "$GEN_CORE" "$PYTHON" loadtest/fanout.py --url "$URL" --conns "$count" \
            --server-pid "$SERVER_PID" --label conns --out "$OUT/fanout.jsonl" >/dev/null
        stop_server
        if [ -n "$WSBENCH" ]; then
            start_server
            note "conns wsbench K=$count"
            taskset -c "$GEN_CORE" node "$WSBENCH/wsbench.js" conns --url "$URL" --template "$TEMPLATE" \
                --conns "$count" --server-pids "$SERVER_PID" \
                --label "conns load=$(cut -d' ' -f1-3 /proc/loadavg)" \
                --out "$OUT/wsbench.jsonl" >/dev/null
            stop_server
        fi
    done
}

overload() {  # name subs pubs rates: ramp on the same connections, on past failed steps
    local name=$1 subs=$2 pubs=$3 rates=$4
    for _ in $(seq "$REPEAT"); do
        start_server
        note "$name fanout.py N=$subs P=$pubs rates=$rates"
        taskset -c "$GEN_CORE" "$PYTHON" loadtest/fanout.py --url "$URL" --subs "$subs" \
            --pubs "$pubs" --ramp "$rates" --step-duration 10 --p99-max 1000 --keep-going \
            --server-pid "$SERVER_PID" --label "$name" --out "$OUT/fanout.jsonl" >/dev/null
        stop_server
        if [ -n "$WSBENCH" ]; then
            start_server
            note "$name wsbench N=$subs P=$pubs rates=$rates"
            # wsbench's ramp stops at the first step with loss or p99 > 1 s.
            taskset -c "$GEN_CORE" node "$WSBENCH/wsbench.js" ramp --url "$URL" \
                --template "$TEMPLATE" --subs "$subs" --pubs "$pubs" --rates "$rates" \
                --step-duration 10 --p99-max 1000 --server-pids "$SERVER_PID" \
                --label "$name load=$(cut -d' ' -f1-3 /proc/loadavg)" \
                --out "$OUT/wsbench.jsonl" >/dev/null
            stop_server
        fi
    done
}

restart() {  # Redis restarted during delivery: outage, resume time, loss (fanout.py)
    local name=$1 subs=$2 pubs=$3 rate=$4 duration=$5 at=$6
    for _ in $(seq "$REPEAT"); do
        start_server
        note "$name fanout.py N=$subs P=$pubs R=$rate, restart at ${at}s" \
            "(down ${RESTART_DOWN_S:-0}s, SIG${RESTART_SIGNAL:-TERM})"
        REDIS_DOWN_S=${RESTART_DOWN_S:-0} REDIS_STOP_SIGNAL=${RESTART_SIGNAL:-TERM} \
            taskset -c "$GEN_CORE" "$PYTHON" loadtest/fanout.py --url "$URL" --subs "$subs" \
            --pubs "$pubs" --rate "$rate" --duration "$duration" --server-pid "$SERVER_PIDS" \
            --event-cmd "loadtest/redis_ctl.sh restart" --event-at "$at" \
            --readyz "http://127.0.0.1:${PORT}/readyz" \
            --label "$name down=${RESTART_DOWN_S:-0}s sig=${RESTART_SIGNAL:-TERM}" \
            --out "$OUT/fanout.jsonl" >/dev/null
        stop_server
    done
}

redis() {  # workers scenario...: the same scenarios on the Redis broker
    BROKER=redis WORKERS=$1
    shift
    "$@"
    BROKER=memory WORKERS=1
}

scenarios=("$@")
[ ${#scenarios[@]} -gt 0 ] || scenarios=(n100 n1000 n5000 conns overload1000 overload5000)
for s in "${scenarios[@]}"; do
    case $s in
        n100) fanout n100 100 4 10 10 ;;
        n1000) fanout n1000 1000 25 100 10 ;;
        n5000) fanout n5000 5000 1 2 10 ;;
        conns) conns ;;
        overload1000) overload overload1000 1000 50 "${OVERLOAD1000_RATES:-100,200,300,400}" ;;
        overload5000) overload overload5000 5000 10 "${OVERLOAD5000_RATES:-5,10,20,40}" ;;
        redis-n100) redis 1 fanout redis-n100 100 4 10 10 ;;
        redis-n1000) redis 1 fanout redis-n1000 1000 25 100 10 ;;
        redis-n1000r50) redis 1 fanout redis-n1000r50 1000 25 50 10 ;;
        redis-n5000) redis 1 fanout redis-n5000 5000 1 2 10 ;;
        redis2-n100) redis 2 fanout redis2-n100 100 4 10 10 ;;
        redis2-n1000) redis 2 fanout redis2-n1000 1000 25 100 10 ;;
        redis2-n1000r50) redis 2 fanout redis2-n1000r50 1000 25 50 10 ;;
        redis2-n5000) redis 2 fanout redis2-n5000 5000 1 2 10 ;;
        redis-restart) redis 1 restart redis-restart 100 4 20 30 10 ;;
        redis2-restart) redis 2 restart redis2-restart 100 4 20 30 10 ;;
        redis-restart-n1000) redis 1 restart redis-restart-n1000 1000 25 100 30 10 ;;
        *) echo "unknown scenario $s (see the comment at the top)" >&2
           exit 2 ;;
    esac
done
"$PYTHON" loadtest/summarize.py "$OUT"/*.jsonl
