"""The long fuzzing run, as a command (docs/storms.md, "Fuzzing"):

    .venv/bin/python -m tests.fuzz --frames 100000 --requests 20000 --broker redis
    .venv/bin/python -m tests.fuzz --broker memory --seed 1234      # reproduce a run

Starts its own webchat (and redis-server) on free loopback ports, as the tests do, runs the
fuzzer against it, checks the server for leaks and logged errors, prints the report and exits
non-zero on any failure (each failure names the seed of its case).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys

from tests.fuzz.run import FuzzFailure, Report, Target, fuzz
from tests.support.redis import RedisServer
from tests.support.servers import WebchatProcess

# A server on which no rate limit and no overload shedding (503 while its event loop lags, as
# a loaded machine makes it) interferes: every frame is answered by the protocol's rules.
SERVER_FLAGS = (
    *("--rate", "100000", "--burst", "100000", "--drain-delay", "0"),
    *("--max-loop-lag", "0"),
)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=100_000, help="WebSocket frames at least")
    ap.add_argument("--requests", type=int, default=20_000, help="HTTP requests at least")
    ap.add_argument("--broker", choices=("memory", "redis"), default="redis")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--concurrency", type=int, default=24)
    args = ap.parse_args()
    # Stopped (SIGTERM): stop the servers it started too, on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    redis = RedisServer().start() if args.broker == "redis" else None
    broker = ("--redis-url", redis.url) if redis else ()
    server = WebchatProcess(*SERVER_FLAGS, *broker).start()
    assert server.proc is not None
    target = Target("127.0.0.1", server.port, server.proc.pid, server.log)

    def progress(report: Report) -> None:
        print(f"  {report.frames} frames, {report.requests} requests", file=sys.stderr)

    try:
        report = asyncio.run(
            fuzz(
                target,
                seed,
                frames=args.frames,
                requests=args.requests,
                concurrency=args.concurrency,
                progress=progress,
            )
        )
    except FuzzFailure as exc:
        print(f"FAILED ({args.broker}): {exc}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        if redis is not None:
            redis.cleanup()
    print(f"{args.broker}: {report.summary()}")
    print(f"actions {dict(report.actions.most_common())}")
    print(f"http {dict(report.http)}; server log warnings {report.warnings}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
