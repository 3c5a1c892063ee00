#!/usr/bin/env bash
# Issue 2's performance scenarios, each against a fresh server pinned to core 0 with the
# generator pinned to core 1 (see docs/performance.md). One JSON line per run in $OUT/*.jsonl.
#
#   loadtest/scenarios.sh [SCENARIO...]   default: n100 n1000 n5000 conns overload1000 overload5000
#
# Environment:
#   OUT=/tmp/webchat-perf   where results and server logs go
#   PORT=8091               server port (loopback only)
#   REPEAT=1                runs per scenario and tool
#   WSBENCH=/tmp/wsbench    also run wsbench (cp -r ../shared/bench /tmp/wsbench && npm install)
#   PYTHON=.venv/bin/python the interpreter for fanout.py (one with uvloop is cheaper per frame)
#   SERVER_CORE=0 GEN_CORE=1
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

SERVER_PID=""
start_server() {
    # The publishers' own rate limit is not under test here: raise it so it never interferes.
    taskset -c "$SERVER_CORE" "$WEBCHAT" --port "$PORT" --rate 1000 --burst 1000 \
        >>"$OUT/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        if curl -fsS "http://127.0.0.1:${PORT}/healthz" >/dev/null 2>&1; then return; fi
        kill -0 "$SERVER_PID" || { echo "server exited; see $OUT/server.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "server did not answer /healthz" >&2
    exit 1
}
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
trap stop_server EXIT

note() { echo "== $* | $(uptime | sed 's/.*load/load/')" | tee -a "$OUT/notes.txt" >&2; }

# fanout.py and wsbench take the same shape of arguments.
fanout() {  # name subs pubs rate duration
    local name=$1 subs=$2 pubs=$3 rate=$4 duration=$5
    for _ in $(seq "$REPEAT"); do
        start_server
        note "$name fanout.py N=$subs P=$pubs R=$rate"
        taskset -c "$GEN_CORE" "$PYTHON" loadtest/fanout.py --url "$URL" --subs "$subs" \
            --pubs "$pubs" --rate "$rate" --duration "$duration" --server-pid "$SERVER_PID" \
            --label "$name" --out "$OUT/fanout.jsonl" >/dev/null
        stop_server
        if [ -n "$WSBENCH" ]; then
            start_server
            note "$name wsbench N=$subs P=$pubs R=$rate"
            taskset -c "$GEN_CORE" node "$WSBENCH/wsbench.js" fanout --url "$URL" \
                --template "$TEMPLATE" --subs "$subs" --pubs "$pubs" --rate "$rate" \
                --duration "$duration" --server-pids "$SERVER_PID" \
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
        *) echo "unknown scenario $s (n100 n1000 n5000 conns overload1000 overload5000)" >&2
           exit 2 ;;
    esac
done
"$PYTHON" loadtest/summarize.py "$OUT"/*.jsonl
