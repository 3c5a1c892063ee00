#!/usr/bin/env bash
# The storm scenarios of issue 8 (loadtest/storms.py), each on fresh servers and a fresh Redis,
# servers pinned to SERVER_CORE, generator and Redis to GEN_CORE. One JSON line per run in
# $OUT/storms.jsonl; server logs in $OUT.
#
#   loadtest/storms.sh [SCENARIO...]     default: join-memory join-redis reconnect
#
#   join-memory     CLIENTS (10,000) join one room of one instance on the in-memory broker
#   join-redis      the same on the Redis broker
#   reconnect       two instances on one Redis; CLIENTS in ROOMS (100) on the first, one
#                   publisher per room on the second at RATE (100) msg/s; all clients drop at
#                   once (DROP=abort, or kill: SIGKILL to the first instance) and resume on the
#                   second with since
#   soak            loadtest/soak.py: CLIENTS in ROOMS on one instance on Redis, RATE msg/s,
#                   SOAK_ARGS (e.g. "--duration 1200 --warmup 300 --churn 10"); its samples
#                   and summary in $OUT/soak.jsonl
#
# Environment:
#   OUT=/tmp/webchat-storms  REPEAT=1  CLIENTS=10000  ROOMS=100  RATE=100  DROP=abort
#   VARIANTS="after"         code to run: `after` is this tree; any other name V runs the tree
#                            unpacked in $VARIANT_DIR/V (e.g. `git archive <commit> app | tar -x
#                            -C /tmp/base-V`), so before/after runs interleave in one batch
#   VARIANT_DIR=/tmp          PYTHON=.venv/bin/python (servers)  GEN_PYTHON=$PYTHON (generator;
#                            one with uvloop is cheaper)
#   SERVER_CORE=0 GEN_CORE=1 PORT=8091 (and PORT+1)  REDIS_PORT=6391
#   STORM_ARGS=""            extra flags for storms.py    SOAK_ARGS=""  extra flags for soak.py
#   RT=1                     run servers, generator and Redis at SCHED_FIFO priority 1 (chrt),
#                            so that other work on a shared machine does not take their cores
#                            (it starves that work while a run lasts: prefer NICE)
#   NICE=0                   run everything in a session of its own whose scheduler autogroup has
#                            this nice level (as capacity.sh: -10 on a shared machine gives the
#                            runs most of their cores without stopping the neighbours)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${NICE:-0}" != 0 ] && [ -z "${STORMS_SESSION:-}" ]; then
    export STORMS_SESSION=1
    exec setsid bash -c 'echo "$NICE" >/proc/self/autogroup && exec "$0" "$@"' "$0" "$@"
fi

OUT=${OUT:-/tmp/webchat-storms}
REPEAT=${REPEAT:-1}
CLIENTS=${CLIENTS:-10000}
ROOMS=${ROOMS:-100}
RATE=${RATE:-100}
DROP=${DROP:-abort}
VARIANTS=${VARIANTS:-after}
VARIANT_DIR=${VARIANT_DIR:-/tmp}
PYTHON=${PYTHON:-.venv/bin/python}
GEN_PYTHON=${GEN_PYTHON:-$PYTHON}
SERVER_CORE=${SERVER_CORE:-0}
GEN_CORE=${GEN_CORE:-1}
PORT=${PORT:-8091}
STORM_ARGS=${STORM_ARGS:-}
SOAK_ARGS=${SOAK_ARGS:-}
PRIO=()
[ "${RT:-}" = 1 ] && PRIO=(chrt -f 1)
export REDIS_PORT=${REDIS_PORT:-6391}
export REDIS_DIR="$OUT/redis"
export REDIS_CORE=${REDIS_CORE-$GEN_CORE}
export REDIS_APPENDONLY=${REDIS_APPENDONLY:-no}
export REDIS_NICE=${NICE:-0}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
    loadtest/redis_ctl.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

# start_server VARIANT PORT [webchat flags...]: prints the pid once /readyz answers 200.
start_server() {
    local variant=$1 port=$2
    shift 2
    local path=app
    [ "$variant" != after ] && path="$VARIANT_DIR/$variant/app"
    PYTHONPATH="$path" "${PRIO[@]}" taskset -c "$SERVER_CORE" "$PYTHON" -m webchat --port "$port" "$@" \
        >>"$OUT/server-$variant-$port.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 150); do
        if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
            SERVER=$pid
            return 0
        fi
        kill -0 "$pid" || { echo "server exited; see $OUT/server-$variant-$port.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "server on $port did not answer /readyz" >&2
    exit 1
}

storm() {  # storm LABEL storms.py-args...
    local label=$1
    shift
    echo "== $label (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    # shellcheck disable=SC2086  # STORM_ARGS is a list of flags
    # A failed run (a variant that cannot take the storm) is said and the batch goes on.
    "${PRIO[@]}" taskset -c "$GEN_CORE" "$GEN_PYTHON" loadtest/storms.py "$@" --label "$label" \
        --out "$OUT/storms.jsonl" $STORM_ARGS >/dev/null ||
        echo "== $label FAILED (storms.py exit $?); see its message above" >&2
}

redis_url() { echo "redis://127.0.0.1:${REDIS_PORT}/0"; }

start_redis() {
    REDIS_FRESH=1 loadtest/redis_ctl.sh start >/dev/null
    if [ ${#PRIO[@]} -gt 0 ]; then chrt -f -p 1 "$(loadtest/redis_ctl.sh pid)"; fi
}

run() {  # run SCENARIO VARIANT
    local scenario=$1 variant=$2 redis=()
    case $scenario in
        join-memory)
            start_server "$variant" "$PORT"
            storm "$scenario-$variant" join --url "ws://127.0.0.1:$PORT/ws" \
                --clients "$CLIENTS" --server-pid "$SERVER"
            ;;
        join-redis)
            start_redis
            redis=(--redis-url "$(redis_url)")
            start_server "$variant" "$PORT" "${redis[@]}"
            storm "$scenario-$variant" join --url "ws://127.0.0.1:$PORT/ws" \
                --clients "$CLIENTS" --server-pid "$SERVER" \
                --redis-pid "$(loadtest/redis_ctl.sh pid)" --redis-port "$REDIS_PORT"
            ;;
        reconnect)
            start_redis
            redis=(--redis-url "$(redis_url)")
            start_server "$variant" "$PORT" "${redis[@]}"
            local first=$SERVER
            start_server "$variant" "$((PORT + 1))" "${redis[@]}"
            storm "$scenario-$variant" reconnect --url "ws://127.0.0.1:$PORT/ws" \
                --resume-url "ws://127.0.0.1:$((PORT + 1))/ws" --clients "$CLIENTS" \
                --rooms "$ROOMS" --rate "$RATE" --drop "$DROP" --server-pid "$first,$SERVER" \
                --redis-pid "$(loadtest/redis_ctl.sh pid)" --redis-port "$REDIS_PORT"
            ;;
        soak)
            start_redis
            start_server "$variant" "$PORT" --redis-url "$(redis_url)"
            echo "== soak-$variant (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
            # shellcheck disable=SC2086  # SOAK_ARGS is a list of flags
            "${PRIO[@]}" taskset -c "$GEN_CORE" "$GEN_PYTHON" loadtest/soak.py \
                --url "ws://127.0.0.1:$PORT/ws" --clients "$CLIENTS" --rooms "$ROOMS" \
                --rate "$RATE" --server-pid "$SERVER" --redis-pid "$(loadtest/redis_ctl.sh pid)" \
                --redis-port "$REDIS_PORT" --label "soak-$variant" --out "$OUT/soak.jsonl" \
                $SOAK_ARGS >/dev/null
            ;;
        *) echo "unknown scenario $scenario" >&2; exit 2 ;;
    esac
    cleanup
}

SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -eq 0 ] && SCENARIOS=(join-memory join-redis reconnect)
for _ in $(seq "$REPEAT"); do
    for scenario in "${SCENARIOS[@]}"; do
        for variant in $VARIANTS; do run "$scenario" "$variant"; done
    done
done
