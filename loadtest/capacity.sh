#!/usr/bin/env bash
# Capacity runs for docs/capacity.md: a Locust step load (the StepLoad shape) written to
# docs/capacity/NAME.jsonl, then loadtest/report.py regenerates docs/capacity.md and the plots.
#
#   loadtest/capacity.sh one-worker       fresh webchat --workers 1 on a fresh Redis, here
#   loadtest/capacity.sh two-workers      the same with --workers 2 (both on SERVER_CORE)
#   loadtest/capacity.sh memory           webchat on the in-memory broker
#   loadtest/capacity.sh fanout           fanout.py N=1000 at R=50 and 100 against the first two
#                                         set-ups, for the comparison table (docs/capacity/fanout.jsonl)
#   loadtest/capacity.sh generator        the load generator's own limit: 1,000 BusyRoom listeners
#                                         (one Locust process) at rising rates, in-memory server
#                                         (docs/capacity/generator/generator.jsonl)
#   loadtest/capacity.sh deployment --host https://chat.example.com [--insecure] \
#       [--metrics-urls https://host1:8080/metrics,...] [more locust options]
#                                         a deployment (behind Nginx); nothing is started here
#
# Local runs pin the server to SERVER_CORE and Locust (and Redis) to GEN_CORE, as the fan-out
# benchmark does (docs/performance.md). Any extra arguments go to Locust.
#
# Environment (defaults in brackets):
#   SCENARIO [BusyRoom]  STEPS [2,4,8,12,16,20,24] Locust users per step (x SOCKETS_PER_USER)
#   STEP_RATES: step the messages/s per talker instead, at USERS [20] Locust users
#   TALKERS [10]  MSG_RATE [10] messages/s per talker  SOCKETS_PER_USER [50]
#   STEP_TIME [20]  STEP_WARMUP [5]  P99_MAX [50] ms  SPAWN_RATE [5]  PROCESSES [1] (--processes)
#   SERVER_CORE [0]  GEN_CORE [1]  PORT [8091]  REDIS_PORT [6391]  LABEL [NAME]
#   NICE [0]: run everything in a session of its own whose scheduler autogroup has this nice level
#   (e.g. -10 on a machine shared with other work, so that what is measured is webchat, not the
#   neighbours; Linux shares the CPU between sessions first, so a plain `nice` does not help;
#   lowering it needs root)
#   OUT [docs/capacity]  LOG [/tmp/webchat-capacity-NAME.log] (the server's)
#   PYTHON [.venv/bin/python]  LOCUST [.venv/bin/locust]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${NICE:-0}" != 0 ] && [ -z "${CAPACITY_SESSION:-}" ]; then
    export CAPACITY_SESSION=1
    exec setsid bash -c 'echo "$NICE" >/proc/self/autogroup && exec "$0" "$@"' "$0" "$@"
fi

NAME=${1:?usage: loadtest/capacity.sh one-worker|two-workers|memory|fanout|generator|deployment [locust options]}
shift
OUT=${OUT:-docs/capacity}
PYTHON=${PYTHON:-.venv/bin/python}
LOCUST=${LOCUST:-.venv/bin/locust}
WEBCHAT=${WEBCHAT:-.venv/bin/webchat}
PORT=${PORT:-8091}
SERVER_CORE=${SERVER_CORE:-0}
GEN_CORE=${GEN_CORE:-1}
export REDIS_PORT=${REDIS_PORT:-6391} REDIS_CORE=${REDIS_CORE-$GEN_CORE}
export REDIS_DIR=${REDIS_DIR:-/tmp/webchat-capacity-redis}
LOG=${LOG:-/tmp/webchat-capacity-$NAME.log}
LOCAL="http://127.0.0.1:${PORT}"
export REDIS_NICE=${NICE:-0}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

SERVER_PID=""
REDIS=""
start_server() {  # broker workers
    local args=(--host 127.0.0.1 --port "$PORT" --rate 1000 --burst 1000)
    if [ "$1" = redis ]; then
        REDIS_FRESH=1 loadtest/redis_ctl.sh start >/dev/null
        REDIS=1
        args+=(--redis-url "redis://127.0.0.1:${REDIS_PORT}/0" --workers "$2")
    fi
    # The talkers' own rate limit is not what is measured: raised so it never interferes.
    taskset -c "$SERVER_CORE" "$WEBCHAT" "${args[@]}" >>"$LOG" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 150); do
        if curl -fsS "http://127.0.0.1:${PORT}/readyz" >/dev/null 2>&1; then
            # Every worker must be up: the parent's children (not multiprocessing's tracker).
            sleep 1
            for _ in $(seq 20); do curl -fsS "http://127.0.0.1:${PORT}/readyz" >/dev/null || true; done
            return 0
        fi
        kill -0 "$SERVER_PID" || { echo "webchat exited; see $LOG" >&2; exit 1; }
        sleep 0.1
    done
    echo "webchat did not answer /readyz" >&2
    exit 1
}
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
    if [ -n "$REDIS" ]; then
        loadtest/redis_ctl.sh stop >/dev/null
        REDIS=""
    fi
}
trap stop_server EXIT

server_pids() {  # the processes that serve: the workers if there are any, else the server
    local kids
    kids=$(cat /proc/"$SERVER_PID"/task/*/children 2>/dev/null | tr ' ' '\n' | while read -r p; do
        [ -n "$p" ] && ! grep -q resource_tracker "/proc/$p/cmdline" 2>/dev/null && echo "$p"
    done | paste -sd, -)
    echo "${kids:-$SERVER_PID}"
}

step_load() {  # label, then extra locust arguments
    local label=$1 file=${FILE:-$OUT/$NAME.jsonl}
    shift
    mkdir -p "$(dirname "$file")"
    rm -f "$file"
    echo "== $NAME: $label | $(uptime | sed 's/.*load/load/')" >&2
    # The StepLoad shape ends the run; its failures (the bad step's) make Locust exit 1.
    local plan=(--steps "${STEPS:-2,4,8,12,16,20,24}") procs=()
    if [ -n "${STEP_RATES:-}" ]; then plan=(-u "${USERS:-20}" --step-rates "$STEP_RATES"); fi
    if [ "${PROCESSES:-1}" -gt 1 ]; then  # a master and N workers, on a port of their own
        local port
        port=$("$PYTHON" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        procs=(--processes "$PROCESSES" --master-bind-port "$port" --master-port "$port")
    fi
    taskset -c "$GEN_CORE" "$LOCUST" -f loadtest --headless "${SCENARIO:-BusyRoom}" \
        "${procs[@]}" -r "${SPAWN_RATE:-5}" "${plan[@]}" --talkers "${TALKERS:-10}" \
        --msg-rate "${MSG_RATE:-10}" --sockets-per-user "${SOCKETS_PER_USER:-50}" \
        --step-time "${STEP_TIME:-20}" --step-warmup "${STEP_WARMUP:-5}" \
        --p99-max "${P99_MAX:-50}" --step-out "$file" --label "${LABEL:-$label}" \
        --only-summary "$@" || true
    [ -s "$file" ] || { echo "no steps were written to $file" >&2; exit 1; }
}

fanout() {  # label rate: one fanout.py run against the server running now
    taskset -c "$GEN_CORE" "$PYTHON" loadtest/fanout.py \
        --url "ws://127.0.0.1:${PORT}/ws?room=bench" \
        --subs 1000 --pubs 25 --rate "$2" --duration 10 --server-pids "$(server_pids)" \
        --label "$1 R=$2" --out "$OUT/fanout.jsonl" >/dev/null
}

case $NAME in
    one-worker)
        start_server redis 1
        step_load "1 worker, Redis" --host "$LOCAL" --server-pids "$(server_pids)" "$@" ;;
    two-workers)
        start_server redis 2
        step_load "2 workers on one core, Redis" --host "$LOCAL" --server-pids "$(server_pids)" \
            "$@" ;;
    memory)
        start_server memory 1
        step_load "1 worker, in-memory broker" --host "$LOCAL" --server-pids "$(server_pids)" \
            "$@" ;;
    fanout)
        rm -f "$OUT/fanout.jsonl"
        for workers in 1 2; do
            for rate in 50 100; do
                start_server redis "$workers"
                fanout "fanout.py, $workers worker(s), Redis" "$rate"
                stop_server
            done
        done ;;
    generator)
        start_server memory 1
        STEP_RATES=${STEP_RATES:-5,10,15,20,30,40} P99_MAX=${P99_MAX:-1000} SPAWN_RATE=20 \
            FILE="$OUT/generator/generator.jsonl" step_load "one Locust process" \
            --host "$LOCAL" --server-pids "$(server_pids)" "$@" ;;
    deployment)
        step_load "deployment behind Nginx" "$@" ;;
    *)
        echo "unknown run $NAME (one-worker, two-workers, memory, fanout, generator, deployment)" >&2
        exit 2 ;;
esac
stop_server
"$PYTHON" loadtest/report.py --data "$OUT"
