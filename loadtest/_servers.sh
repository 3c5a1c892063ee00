# shellcheck shell=bash
# Sourced by the benchmark scripts (overhead.sh, replicas_ack.sh): waiting for a server they
# started and stopping what they started. Not a script of its own.

# wait_ready PID PORT LOG: returns once http://127.0.0.1:PORT/readyz answers 200; exits the
# calling script if the server exits first (its log is LOG) or has not answered after 10 s.
wait_ready() {
    local pid=$1 port=$2 log=$3
    for _ in $(seq 100); do
        curl -fsS "http://127.0.0.1:${port}/readyz" >/dev/null 2>&1 && return 0
        kill -0 "$pid" || { echo "server exited; see $log" >&2; exit 1; }
        sleep 0.1  # polling: the server says nothing when it is ready
    done
    echo "server did not answer /readyz" >&2
    exit 1
}

# stop_pid PID: SIGTERM a child of this script and reap it; nothing if PID is empty or gone.
stop_pid() {
    [ -z "$1" ] || { kill -TERM "$1" 2>/dev/null; wait "$1" 2>/dev/null; } || true
}
