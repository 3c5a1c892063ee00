#!/usr/bin/env python3
"""The one-message-room flood of issue 12, against one instance and its Redis: what it costs.

    python loadtest/redis_rooms.py --url http://127.0.0.1:8091 --redis-port 6391 \
        --rooms 68000 [--concurrency 64] [--text-bytes 8] [--nonce] [--watch-expiry 0]

Each room gets what the attacker did: one client joins it, sends one message (with a nonce
unless --no-nonce), and leaves. After the flood the script waits for the presence keys to go
(the members left), then prints one JSON line: rooms/s, Redis `used_memory` and
`used_memory_dataset` before and after (and per room), the keys per room by kind, how many
keys have no TTL, MEMORY USAGE of one room's keys, and the publish script's Redis-side cost
(EVALSHA µs/call from INFO commandstats). With --watch-expiry S it then polls for S seconds
and reports when the rooms' keys were gone. Works against any version of the service.

Only loopback targets are accepted and every count and duration is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
import redis

from _bench import loopback


def kind(key: bytes) -> str:
    """`wc:{room}:h` -> `h`; a nonce key `wc:{room}:n:...` -> `n`; index keys by name."""
    text = key.decode(errors="replace")
    if text.startswith("wc:{#index}"):
        return text
    tail = text.rsplit("}:", 1)[-1]
    return tail.split(":", 1)[0]


async def one_room(
    session: aiohttp.ClientSession, ws_url: str, room: str, text: str, nonce: bool
) -> None:
    async with session.ws_connect(ws_url, params={"room": room, "name": "x"}) as ws:
        await ws.receive_json()  # welcome
        frame: dict[str, Any] = {"type": "message", "text": text}
        if nonce:
            frame["nonce"] = "n"
        await ws.send_json(frame)
        while True:
            answer = await ws.receive_json()
            if answer.get("type") == "message":
                return
            if answer.get("type") == "error":
                raise RuntimeError(f"{room}: {answer}")


def room_keys(client: redis.Redis, prefix: str) -> list[bytes]:
    return list(client.scan_iter(f"wc:{{{prefix}*", count=5000))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    url = loopback(args.url)
    ws_url = url.replace("http", "ws", 1) + "/ws"
    client = redis.Redis(port=args.redis_port)
    text = "x" * args.text_bytes
    prefix = f"flood{int(time.time())}-"
    before = client.info("memory")
    stats_before = client.info("commandstats").get("cmdstat_evalsha", {})
    gate = asyncio.Semaphore(args.concurrency)
    failures: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=0)
    began = time.monotonic()
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(n: int) -> None:
            async with gate:
                try:
                    await one_room(session, ws_url, f"{prefix}{n}", text, not args.no_nonce)
                except (aiohttp.ClientError, RuntimeError, TimeoutError) as exc:
                    failures[type(exc).__name__] += 1

        await asyncio.gather(*(one(n) for n in range(args.rooms)))
    flooded = time.monotonic() - began
    # The members left: wait (bounded) until no presence key of the rooms is left.
    presence = ("p", "e", "k", "ps")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not any(kind(k) in presence for k in room_keys(client, prefix)):
            break
        await asyncio.sleep(0.5)
    keys = room_keys(client, prefix)
    after = client.info("memory")
    stats_after = client.info("commandstats").get("cmdstat_evalsha", {})
    kinds = Counter(kind(k) for k in keys)
    no_ttl = sum(1 for k in keys if client.pttl(k) == -1)
    sample = {kind(k): client.memory_usage(k, samples=0) for k in room_keys(client, f"{prefix}0")}
    calls = stats_after.get("calls", 0) - stats_before.get("calls", 0)
    usec = stats_after.get("usec", 0) - stats_before.get("usec", 0)
    rooms = max(1, args.rooms)
    result: dict[str, Any] = {
        "rooms": args.rooms,
        "failures": dict(failures),
        "rooms_per_s": round(args.rooms / flooded, 1),
        "used_memory_before": before["used_memory"],
        "used_memory_after": after["used_memory"],
        "used_memory_per_room": round((after["used_memory"] - before["used_memory"]) / rooms),
        "dataset_per_room": round(
            (after["used_memory_dataset"] - before["used_memory_dataset"]) / rooms
        ),
        "keys": len(keys),
        "keys_per_room": dict(kinds),
        "keys_without_ttl": no_ttl,
        "memory_usage_of_one_room": sample,
        "evalsha_usec_per_call": round(usec / calls, 1) if calls else None,
    }
    if args.watch_expiry:
        began = time.monotonic()
        gone = None
        while time.monotonic() - began < args.watch_expiry:
            if not room_keys(client, prefix):
                gone = round(time.monotonic() - began, 1)
                break
            await asyncio.sleep(1)
        result["keys_gone_after_s"] = gone
        result["used_memory_when_gone"] = client.info("memory")["used_memory"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT of one instance")
    parser.add_argument("--redis-port", type=int, required=True, help="its Redis, on loopback")
    parser.add_argument(
        "--rooms", type=int, default=1000, choices=range(1, 200_001), metavar="1-200000"
    )
    parser.add_argument(
        "--concurrency", type=int, default=64, choices=range(1, 1001), metavar="1-1000"
    )
    parser.add_argument(
        "--text-bytes", type=int, default=8, choices=range(1, 2001), metavar="1-2000"
    )
    parser.add_argument("--no-nonce", action="store_true", help="send without a nonce")
    parser.add_argument(
        "--watch-expiry", type=float, default=0.0, help="seconds to wait for expiry"
    )
    args = parser.parse_args()
    if not 0 <= args.watch_expiry <= 3600:
        raise SystemExit("--watch-expiry must be in [0, 3600] seconds")
    result = asyncio.run(run(args))
    print(json.dumps(result))
    print(
        f"{result['rooms']} rooms at {result['rooms_per_s']}/s: Redis +"
        f"{result['used_memory_per_room']} B per room ({result['dataset_per_room']} B of data), "
        f"{result['keys_per_room']}, {result['keys_without_ttl']} keys without TTL",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
