#!/usr/bin/env python3
"""How long a full garbage collection pauses the server holding N idle WebSockets.

    ulimit -n 20000
    PYTHONPATH=app taskset -c 0 .venv/bin/python loadtest/gc_pause.py --conns 10000

The app runs in this process, set up as `cli.serve` sets it up (start-up objects frozen, its
collector thresholds), on the memory broker or `--redis-url`; `fanout.py --conns N` (on core 1)
holds the clients. Once all are joined it times `--rounds` full collections (`gc.collect()`,
what webchat.collector runs) and generation-1 ones, 2 s apart, and prints one JSON line.
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
from pathlib import Path

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
        full, young = [], []
        for _ in range(args.rounds):
            started = time.perf_counter()
            gc.collect()
            full.append(round((time.perf_counter() - started) * 1000, 1))
            started = time.perf_counter()
            gc.collect(1)
            young.append(round((time.perf_counter() - started) * 1000, 2))
            await asyncio.sleep(2)
        return {
            "conns": node.hub.connection_count,
            "broker": "redis" if args.redis_url else "memory",
            "tracked_objects": len(gc.get_objects()),
            "full_collection_ms": full,
            "gen1_collection_ms": young,
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        }
    finally:
        if generator.returncode is None:
            generator.kill()
        await generator.wait()
        await runner.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conns", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--port", type=int, default=8093)
    ap.add_argument("--redis-url", default="")
    ap.add_argument("--generator-core", default="1", help="taskset core list; empty: not pinned")
    ap.add_argument("--connect-timeout", type=float, default=120.0)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(measure(args))))


if __name__ == "__main__":
    main()
