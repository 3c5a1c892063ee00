#!/usr/bin/env python3
"""What `GET /api/rooms` costs when every open page polls it (the browser client does, every
~30 s): C concurrent pollers against one instance for D seconds, after filling R rooms.

    python loadtest/rooms_poll.py --url http://127.0.0.1:8091 --rooms 300 --pollers 50 \
        --duration 10 [--redis-port 6379]

10,000 open pages polling every 30 s is ~330 requests/s over all instances. The instance
answers from a per-instance cache (2 s); on Redis the listing behind it is one script plus,
for busy rooms without a message in 24 h, one pipelined read. The result is one JSON line on
stdout (requests/s, latency percentiles, answer size and, with --redis-port, the Redis
commands the run caused); a summary goes to stderr.

Only loopback targets are accepted and every count and duration is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import aiohttp

from _bench import loopback


async def fill(
    session: aiohttp.ClientSession, url: str, rooms: int
) -> list[aiohttp.ClientWebSocketResponse]:
    """R rooms: a message in each, and a member left in every third one."""
    ws_url = url.replace("http", "ws", 1) + "/ws"
    kept = []
    for n in range(rooms):
        ws = await session.ws_connect(ws_url, params={"room": f"bench-{n}", "name": f"filler{n}"})
        await ws.receive_json()  # welcome
        await ws.send_json({"type": "message", "text": f"room {n}"})
        while (await ws.receive_json()).get("type") != "message":
            pass
        if n % 3 == 0:
            kept.append(ws)
        else:
            await ws.close()
    return kept


def redis_calls(port: int) -> dict[str, int]:
    import redis  # the service's own dependency

    stats = redis.Redis(port=port).info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def run(args: argparse.Namespace) -> dict[str, object]:
    url = loopback(args.url)
    # Unlimited: the members kept open take a connection each besides the pollers.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        kept = await fill(session, url, args.rooms)
        await asyncio.sleep(2.5)  # the index is written within a second, the cache expires in 2
        before = redis_calls(args.redis_port) if args.redis_port else {}
        latencies: list[float] = []
        size = 0
        deadline = time.monotonic() + args.duration

        async def poller() -> None:
            nonlocal size
            while time.monotonic() < deadline:
                started = time.perf_counter()
                async with session.get(f"{url}/api/rooms") as response:
                    body = await response.read()
                    assert response.status == 200, body[:200]
                latencies.append(time.perf_counter() - started)
                size = len(body)

        began = time.monotonic()
        await asyncio.gather(*(poller() for _ in range(args.pollers)))
        elapsed = time.monotonic() - began
        after = redis_calls(args.redis_port) if args.redis_port else {}
        for ws in kept:
            await ws.close()
    latencies.sort()
    pct = lambda q: round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)  # noqa: E731
    result: dict[str, object] = {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "mean_ms": round(1000 * statistics.fmean(latencies), 2),
        "answer_bytes": size,
        "rooms_filled": args.rooms,
    }
    if args.redis_port:
        result["redis_calls"] = {
            k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT of one instance")
    parser.add_argument("--rooms", type=int, default=300, choices=range(0, 5001), metavar="0-5000")
    parser.add_argument("--pollers", type=int, default=50, choices=range(1, 1001), metavar="1-1000")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--redis-port", type=int, default=0, help="count Redis commands too")
    args = parser.parse_args()
    if not 0 < args.duration <= 300:
        raise SystemExit("--duration must be in (0, 300] seconds")
    result = asyncio.run(run(args))
    print(json.dumps(result))
    print(
        f"{result['requests_per_s']} requests/s, p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms, {result['answer_bytes']} bytes each",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
