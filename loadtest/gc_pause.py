#!/usr/bin/env python3
"""How long a full garbage collection pauses the server holding N idle WebSockets.

    ulimit -n 20000
    PYTHONPATH=app taskset -c 0 .venv/bin/python loadtest/gc_pause.py --conns 10000

The app runs in this process, set up as `cli.serve` sets it up (start-up objects frozen, its
collector thresholds), on the memory broker or `--redis-url`; `fanout.py --conns N` (on core 1)
holds the clients. Once all are joined it times `--rounds` full collections (`gc.collect()`,
what webchat.collector runs: the wall time the loop stops, and the CPU time, which other work
on a shared core does not inflate) and generation-1 ones, 2 s apart, and prints one JSON line,
with the objects the collector tracks and this process's RSS, each per connection (after -
before the clients came, as fanout.py's `rss_per_conn_kb`), and with `--by-type K` the K types
that add the most tracked objects per connection. Another tree's app: PYTHONPATH=its/app.
docs/performance.md, "Garbage left by a connection that ended", has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from _procstat import proc_rss_kb

HERE = Path(__file__).resolve().parent


async def measure(args: argparse.Namespace) -> dict[str, object]:
    # Imported here: Locust imports every module of this folder, and needs none of these.
    from aiohttp import web

    from webchat.cli import connection_limits
    from webchat.config import load_config
    from webchat.listener import Gate, Runner
    from webchat.web import NODE, SECURITY_HEADERS, make_app

    argv = ["--rate", "1000", "--burst", "1000", "--max-loop-lag", "0", "--gc-after", "0"]
    if args.redis_url:
        argv += ["--redis-url", args.redis_url]
    config = load_config(argv, {})
    limits = connection_limits(config)
    gate = Gate(limits, config.header_timeout, dict(SECURITY_HEADERS))
    runner = Runner(make_app(config, limits), gate, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=4096)
    await site.start()
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 1000)
    node = runner.app[NODE]
    tracked_before = _tracked() if args.by_type else Counter()
    objects_before = len(gc.get_objects())
    rss_before = proc_rss_kb(os.getpid()) or 0
    generator = await asyncio.create_subprocess_exec(
        *(["taskset", "-c", args.generator_core] if args.generator_core else []),
        sys.executable,
        str(HERE / "fanout.py"),
        "--url",
        f"ws://127.0.0.1:{args.port}/ws?room=bench",
        "--conns",
        str(args.conns),
        "--hold",
        str(60 + 3 * args.rounds),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + args.connect_timeout
        while node.hub.connection_count < args.conns:
            if time.monotonic() > deadline or generator.returncode is not None:
                raise SystemExit(f"only {node.hub.connection_count} clients joined")
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)
        conns = node.hub.connection_count
        rss_after = proc_rss_kb(os.getpid()) or 0
        full, full_cpu, young = [], [], []
        for _ in range(args.rounds):
            started, cpu = time.perf_counter(), time.thread_time()
            gc.collect()
            full.append(round((time.perf_counter() - started) * 1000, 1))
            full_cpu.append(round((time.thread_time() - cpu) * 1000, 1))
            started = time.perf_counter()
            gc.collect(1)
            young.append(round((time.perf_counter() - started) * 1000, 2))
            await asyncio.sleep(2)
        # Counted after the collections, which untrack tuples and dicts of atomic values.
        objects = len(gc.get_objects())
        by_type = {
            name: round(count / conns, 2)
            for name, count in (_tracked() - tracked_before).most_common(args.by_type)
        }
        return {
            "conns": conns,
            "broker": "redis" if args.redis_url else "memory",
            "tracked_objects": objects,
            "tracked_per_conn": round((objects - objects_before) / conns, 2),
            "rss_per_conn_kib": round((rss_after - rss_before) / conns, 2),
            **({"tracked_per_conn_by_type": by_type} if args.by_type else {}),
            "full_collection_ms": full,
            "full_collection_cpu_ms": full_cpu,
            "gen1_collection_ms": young,
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        }
    finally:
        if generator.returncode is None:
            generator.kill()
        await generator.wait()
        await runner.cleanup()


def _tracked() -> Counter[str]:
    """The objects the collector tracks (the frozen ones excepted), by type."""
    return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conns", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--port", type=int, default=8093)
    ap.add_argument("--redis-url", default="")
    ap.add_argument("--generator-core", default="1", help="taskset core list; empty: not pinned")
    ap.add_argument("--connect-timeout", type=float, default=120.0)
    ap.add_argument("--by-type", type=int, default=0, metavar="K", help="top K types per conn")
    args = ap.parse_args()
    print(json.dumps(asyncio.run(measure(args))))


if __name__ == "__main__":
    main()
