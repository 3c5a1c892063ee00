#!/usr/bin/env bash
# Two builds' fan-out side by side: rounds interleaved with the order alternating, a fresh
# in-memory-broker server per run, the server on core 0 and fanout.py on core 1, both at
# SCHED_FIFO priority 1 so that other work on the machine runs only when they are idle.
# One JSON line per run in $OUT (label "<build> r<round>"); compare
# `deliveries_per_server_cpu_s`.
#
#   loadtest/fanout_ab.sh BEFORE_REV AFTER_REV      e.g. loadtest/fanout_ab.sh 859e59a HEAD
#
# Environment: ROUNDS=3, OUT=/tmp/fanout-ab.jsonl, PORT=18190 (loopback; one port per run
# after it), DURATION=10. Needs root (chrt -f) and `ulimit -n` above 5,000.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# = 2 ] || { echo "usage: $0 BEFORE_REV AFTER_REV" >&2; exit 2; }
ROUNDS=${ROUNDS:-3} OUT=${OUT:-/tmp/fanout-ab.jsonl} port=${PORT:-18190} DURATION=${DURATION:-10}
trees=$(mktemp -d)
trap 'rm -rf "$trees"' EXIT
for build in before after; do
  rev=$1; [ $build = after ] && rev=$2
  mkdir "$trees/$build" && git archive "$rev" app frontend | tar -x -C "$trees/$build"
done
ulimit -n 20000
for round in $(seq "$ROUNDS"); do
  order="before after"; [ $((round % 2)) = 0 ] && order="after before"
  for build in $order; do
    for scenario in "--subs 1000 --pubs 25 --rate 100" "--subs 5000 --pubs 1 --rate 2"; do
      port=$((port + 1))
      PYTHONPATH="$trees/$build/app" taskset -c 0 chrt -f 1 .venv/bin/python -m webchat \
        --port $port --rate 1000 --burst 1000 --max-loop-lag 0 >"$trees/server.log" 2>&1 &
      pid=$!
      for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done
      echo "$(date +%T) round $round $build $scenario, load $(cut -d' ' -f1 /proc/loadavg)" >&2
      # shellcheck disable=SC2086  # the scenario is several arguments
      timeout 120 taskset -c 1 chrt -f 1 .venv/bin/python loadtest/fanout.py \
        --url "ws://127.0.0.1:$port/ws?room=bench" --server-pid $pid $scenario \
        --duration "$DURATION" --label "$build r$round" --out "$OUT" >/dev/null
      kill $pid && wait $pid || true
    done
  done
done
