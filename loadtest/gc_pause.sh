#!/usr/bin/env bash
# loadtest/gc_pause.py for one or more trees, interleaved, on each broker: the pause of a full
# collection, the tracked objects and the RSS per idle connection, before and after a change.
#
#   loadtest/gc_pause.sh
#
# One JSON line per run in $OUT/gc_pause.jsonl, each with its variant and round added.
#
# Environment:
#   OUT=/tmp/webchat-gc-pause  REPEAT=2  CONNS=10000  ROUNDS=5  BROKERS="memory redis"
#   VARIANTS="after"       code to run: `after` is this tree; any other name V runs the tree
#                          unpacked in $VARIANT_DIR/V (`git archive <commit> app frontend |
#                          tar -x -C /tmp/V`). Each round runs every variant on every broker,
#                          the order of the variants turned by one each round.
#   VARIANT_DIR=/tmp  PYTHON=.venv/bin/python  SERVER_CORE=0  GEN_CORE=1  PORT=8093
#   REDIS_PORT=6393 (a fresh redis-server per run, on GEN_CORE)  BY_TYPE=16
#   NICE=0                 as storms.sh: a session of its own whose autogroup has this nice level
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${NICE:-0}" != 0 ] && [ -z "${GC_PAUSE_SESSION:-}" ]; then
    export GC_PAUSE_SESSION=1
    exec setsid bash -c 'echo "$NICE" >/proc/self/autogroup && exec "$0" "$@"' "$0" "$@"
fi

OUT=${OUT:-/tmp/webchat-gc-pause}
REPEAT=${REPEAT:-2}
CONNS=${CONNS:-10000}
ROUNDS=${ROUNDS:-5}
BROKERS=${BROKERS:-memory redis}
VARIANTS=${VARIANTS:-after}
VARIANT_DIR=${VARIANT_DIR:-/tmp}
PYTHON=${PYTHON:-.venv/bin/python}
SERVER_CORE=${SERVER_CORE:-0}
GEN_CORE=${GEN_CORE:-1}
PORT=${PORT:-8093}
BY_TYPE=${BY_TYPE:-16}
export REDIS_PORT=${REDIS_PORT:-6393}
export REDIS_DIR="$OUT/redis"
export REDIS_CORE=${REDIS_CORE-$GEN_CORE}
export REDIS_APPENDONLY=no
export REDIS_NICE=${NICE:-0}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
trap 'loadtest/redis_ctl.sh stop >/dev/null 2>&1 || true' EXIT

read -r -a variants <<<"$VARIANTS"
for round in $(seq "$REPEAT"); do
    shift_by=$(((round - 1) % ${#variants[@]}))
    order=("${variants[@]:shift_by}" "${variants[@]:0:shift_by}")
    for broker in $BROKERS; do
        for variant in "${order[@]}"; do
            path=app
            [ "$variant" != after ] && path="$VARIANT_DIR/$variant/app"
            redis=()
            if [ "$broker" = redis ]; then
                REDIS_FRESH=1 loadtest/redis_ctl.sh start >/dev/null
                redis=(--redis-url "redis://127.0.0.1:$REDIS_PORT/0")
            fi
            echo "== round $round $broker $variant (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
            line=$(PYTHONPATH="$path" taskset -c "$SERVER_CORE" "$PYTHON" loadtest/gc_pause.py \
                --conns "$CONNS" --rounds "$ROUNDS" --port "$PORT" --generator-core "$GEN_CORE" \
                --by-type "$BY_TYPE" "${redis[@]}") || line=""
            if [ "$broker" = redis ]; then loadtest/redis_ctl.sh stop >/dev/null; fi
            if [ -z "$line" ]; then
                echo "== round $round $broker $variant FAILED" >&2
                continue
            fi
            echo "${line%\}}, \"variant\": \"$variant\", \"round\": $round}" | tee -a "$OUT/gc_pause.jsonl"
        done
    done
done
