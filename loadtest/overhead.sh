#!/usr/bin/env bash
# The cost of observability in the fan-out benchmark: the same run (N=1,000, R=100, one
# worker, Redis broker) against variants of the server, interleaved round by round so that
# other load on the machine falls on every variant alike. One JSON line per run in
# $OUT/overhead.jsonl (fanout.py's, labelled with the variant), a table at the end.
#
#   loadtest/overhead.sh                       3 rounds of: base metrics tracing1pct
#   BASE=/tmp/base ROUNDS=5 loadtest/overhead.sh base metrics tracing1pct
#
# Variants:
#   base         the code before metrics and tracing: a checkout in $BASE
#                (git worktree add /tmp/base 59c7b3e), run with PYTHONPATH=$BASE/app
#   metrics      this tree, tracing off (no OTEL_ variables)
#   tracing1pct  this tree, tracing on: parentbased_traceidratio at 0.01, OTLP/HTTP to a
#                local receiver that discards (tests/support/otlp.py, pinned to GEN_CORE)
#   tracing100pct  the same, every message traced (the worst case, for reference)
#
# Placement as in docs/performance.md: server on SERVER_CORE, generator and Redis on GEN_CORE.
# NICE=-10 runs server, generator, Redis and the receiver at that niceness (as root), so that
# on a machine shared with other work the server still gets most of its core: a starved
# server batches its writes and looks more efficient than it is. With the kernel's autogroup
# scheduling (sched_autogroup_enabled=1) niceness counts only within a session, so the
# sessions' autogroups (this script's, Redis's) get that niceness too.
# RT=1 runs server, generator and Redis under SCHED_FIFO priority 1 (chrt; as root) instead:
# on a busy machine even niceness leaves the server a third of its core; real-time priority
# gives it what it asks for (the kernel still leaves 5 % of each core to everything else).
# Environment: OUT=/tmp/webchat-overhead ROUNDS=3 BASE=/tmp/base PORT=8093 REDIS_PORT=6393
#              OTLP_PORT=4393 PYTHON=.venv/bin/python SUBS=1000 PUBS=25 RATE=100 DURATION=10
#              NICE=0 RT=0
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=loadtest/_servers.sh
source loadtest/_servers.sh

OUT=${OUT:-/tmp/webchat-overhead}
ROUNDS=${ROUNDS:-3}
BASE=${BASE:-/tmp/base}
PORT=${PORT:-8093}
OTLP_PORT=${OTLP_PORT:-4393}
PYTHON=${PYTHON:-.venv/bin/python}
SERVER_CORE=${SERVER_CORE:-0}
GEN_CORE=${GEN_CORE:-1}
NICE=${NICE:-0}
RT=${RT:-0}
RUN=()
[ "$RT" = 0 ] || RUN=(chrt -f 1)
SUBS=${SUBS:-1000} PUBS=${PUBS:-25} RATE=${RATE:-100} DURATION=${DURATION:-10}
VARIANTS=("$@")
[ ${#VARIANTS[@]} -gt 0 ] || VARIANTS=(base metrics tracing1pct)
export REDIS_PORT=${REDIS_PORT:-6393}
export REDIS_DIR="$OUT/redis"
export REDIS_CORE=${REDIS_CORE-$GEN_CORE}
mkdir -p "$OUT"
# Everything started from here inherits the niceness (redis_ctl.sh's server too).
prioritise() {  # pid: its niceness, and its session's autogroup's
    [ "$NICE" = 0 ] && return 0
    renice -n "$NICE" -p "$1" >/dev/null
    if [ -w "/proc/$1/autogroup" ]; then echo "$NICE" >"/proc/$1/autogroup"; fi
}
prioritise $$
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

SERVER_PID="" OTLP_PID="" REDIS_PID=""
cleanup() {
    stop_pid "$SERVER_PID"
    stop_pid "$OTLP_PID"
    loadtest/redis_ctl.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

taskset -c "$GEN_CORE" "$PYTHON" -m tests.support.otlp --port "$OTLP_PORT" >>"$OUT/otlp.log" 2>&1 &
OTLP_PID=$!

start_server() {  # variant
    local variant=$1 code=() tracing=()
    REDIS_FRESH=1 loadtest/redis_ctl.sh start >/dev/null
    REDIS_PID=$(loadtest/redis_ctl.sh pid)
    prioritise "$REDIS_PID"
    [ "$RT" = 0 ] || chrt -f -p 1 "$REDIS_PID" >/dev/null
    case "$variant" in
        base) code=(PYTHONPATH="$BASE/app") ;;
        metrics) ;;
        tracing*)
            local ratio=0.01
            [ "$variant" != tracing100pct ] || ratio=1.0
            tracing=(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$OTLP_PORT"
                OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG="$ratio") ;;
        *) echo "unknown variant $variant" >&2; exit 2 ;;
    esac
    # env -u: an OTEL_ variable of the caller's environment must not switch tracing on.
    env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_TRACES_EXPORTER "${code[@]}" "${tracing[@]}" \
        "${RUN[@]}" taskset -c "$SERVER_CORE" "$PYTHON" -m webchat --port "$PORT" --rate 1000 --burst 1000 \
        --redis-url "redis://127.0.0.1:${REDIS_PORT}/0" >>"$OUT/server-$variant.log" 2>&1 &
    SERVER_PID=$!
    wait_ready "$SERVER_PID" "$PORT" "$OUT/server-$variant.log"
}
stop_server() {
    stop_pid "$SERVER_PID"
    SERVER_PID=""
    loadtest/redis_ctl.sh stop >/dev/null
}

for round in $(seq "$ROUNDS"); do
    # Each round starts one variant later (A B C, B C A, C A B, ...): load that grows or falls
    # during a round must not always fall on the same variant.
    order=()
    for i in "${!VARIANTS[@]}"; do
        order+=("${VARIANTS[(i + round - 1) % ${#VARIANTS[@]}]}")
    done
    for variant in "${order[@]}"; do
        start_server "$variant"
        echo "== round $round $variant | $(uptime | sed 's/.*load/load/')" | tee -a "$OUT/notes.txt" >&2
        "${RUN[@]}" taskset -c "$GEN_CORE" "$PYTHON" loadtest/fanout.py --url "ws://127.0.0.1:${PORT}/ws?room=bench" \
            --subs "$SUBS" --pubs "$PUBS" --rate "$RATE" --duration "$DURATION" \
            --server-pid "$SERVER_PID" --redis-pid "$REDIS_PID" \
            --label "$variant round=$round load=$(cut -d' ' -f1-3 /proc/loadavg)" \
            --out "$OUT/overhead.jsonl" >/dev/null
        stop_server
    done
done

"$PYTHON" - "$OUT/overhead.jsonl" <<'EOF'
import json, statistics, sys
from collections import defaultdict

runs = defaultdict(list)
for line in open(sys.argv[1]):
    run = json.loads(line)
    runs[run["label"].split()[0]].append(run)


def spread(values, fmt="{:.0f}"):
    return ", ".join(fmt.format(v) for v in values if v is not None)


print("| variant | runs | deliveries per server CPU-s | mean (sd) | vs base | server CPU % "
      "| server core busy % | p50 / p99 ms | lost |")
print("|---|---|---|---|---|---|---|---|---|")
base = None
for variant, rs in runs.items():
    eff = [r["deliveries_per_server_cpu_s"] for r in rs if r.get("deliveries_per_server_cpu_s")]
    mean = statistics.mean(eff)
    sd = statistics.stdev(eff) if len(eff) > 1 else 0.0
    if variant == "base":
        base = mean
    rel = f"{(mean / base - 1) * 100:+.1f} %" if base and variant != "base" else ""
    lat = [f"{r['latency']['p50_ms']:.1f} / {r['latency']['p99_ms']:.1f}" for r in rs]
    print(f"| {variant} | {len(rs)} | {spread([e / 1000 for e in eff], '{:.1f}k')} "
          f"| {mean / 1000:.1f}k ({sd / 1000:.1f}k) | {rel} "
          f"| {spread([r.get('server_cpu_pct') for r in rs])} "
          f"| {spread([r.get('server_core_busy_pct') for r in rs])} "
          f"| {'; '.join(lat)} | {sum(r['lost'] for r in rs)} |")
EOF
