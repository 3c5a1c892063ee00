#!/usr/bin/env bash
# A redis-server for the benchmarks, on loopback, with its data in one directory.
#
#   loadtest/redis_ctl.sh start|stop|restart|pid
#
# `restart` stops Redis (SIGTERM by default: with appendonly it flushes the AOF and exits) and
# starts it again with the same port and directory, so it comes back with its streams, as a
# production Redis with AOF would. It prints `stopped` once the old process is gone and `up`
# once the new one answers PING (not -LOADING): fanout.py --event-cmd time-stamps those lines.
#
# Environment:
#   REDIS_PORT=6391  REDIS_DIR=/tmp/webchat-redis  REDIS_CORE=1 (taskset; empty: not pinned)
#   REDIS_APPENDONLY=yes  REDIS_STOP_SIGNAL=TERM (KILL: no AOF flush, as in a crash)
#   REDIS_FRESH=1    start (not restart): wipe the directory's data first
#   REDIS_DOWN_S=0   restart: stay down this long between stop and start (a longer outage)
#   REDIS_NICE=0     the nice level of redis-server's scheduler autogroup (its own session)
set -euo pipefail

PORT=${REDIS_PORT:-6391}
DIR=${REDIS_DIR:-/tmp/webchat-redis}
CORE=${REDIS_CORE-1}
APPENDONLY=${REDIS_APPENDONLY:-yes}
SIG=${REDIS_STOP_SIGNAL:-TERM}
PIDFILE="$DIR/bench-redis.pid"
mkdir -p "$DIR"

# Close what the caller leaked to us (uvloop's subprocess pipes, say): redis-server would keep
# them open for its whole life. 255 is bash's own handle on this script.
for fd in $(ls /proc/$$/fd); do
    if [ "$fd" -gt 2 ] && [ "$fd" -ne 255 ]; then eval "exec $fd>&-"; fi
done

alive() {  # a zombie is gone: it has exited, only its parent (init) has not reaped it yet
    local state
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [ "$state" != Z ] && [ "$state" != X ]
}

running_pid() {
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
    [ -n "$pid" ] && alive "$pid" && grep -q redis-server "/proc/$pid/cmdline" && echo "$pid"
}

ping() { [ "$(redis-cli -h 127.0.0.1 -p "$PORT" ping 2>/dev/null)" = PONG ]; }

start() {
    if running_pid >/dev/null; then echo "redis already running: $(running_pid)" >&2; exit 1; fi
    if [ "${REDIS_FRESH:-}" = 1 ]; then
        rm -rf "$DIR/appendonlydir" "$DIR/dump.rdb"
    fi
    local pin=()
    [ -n "$CORE" ] && pin=(taskset -c "$CORE")
    # Its own session: a signal to the caller's process group (timeout, Ctrl-C) does not reach it.
    setsid "${pin[@]}" redis-server --port "$PORT" --bind 127.0.0.1 --save '' \
        --appendonly "$APPENDONLY" --dir "$DIR" --daemonize no \
        >>"$DIR/redis.log" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    # Its own session is its own scheduler autogroup: give it the caller's share if asked.
    if [ "${REDIS_NICE:-0}" != 0 ]; then echo "$REDIS_NICE" >"/proc/$!/autogroup" || true; fi
    for _ in $(seq 400); do  # 20 s at most
        if ping; then echo "up $!"; return; fi
        alive "$!" || { echo "redis-server exited; see $DIR/redis.log" >&2; exit 1; }
        sleep 0.05
    done
    echo "redis-server did not answer PING" >&2
    exit 1
}

stop() {
    local pid
    pid=$(running_pid) || { echo "stopped (was not running)"; return; }
    kill "-$SIG" "$pid"
    for _ in $(seq 1000); do  # 10 s at most, then SIGKILL
        if ! alive "$pid"; then echo "stopped $pid"; return; fi
        sleep 0.01
    done
    kill -KILL "$pid" 2>/dev/null || true
    echo "stopped $pid (SIGKILL after 10 s)"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    restart) stop; sleep "${REDIS_DOWN_S:-0}"; REDIS_FRESH=0 start ;;
    pid) running_pid ;;
    *) echo "usage: $0 start|stop|restart|pid" >&2; exit 2 ;;
esac
