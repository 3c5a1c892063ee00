#!/usr/bin/env python3
"""Connections churning rooms (issue 12), against one instance and its Redis: what fails.

    python loadtest/redis_churn.py --url http://127.0.0.1:8091 --redis-port 6391 \
        --users 200 --seconds 20 [--shared-rooms 40] [--abandon-every 5] [--ghost-wait 35]

Each user loops: join a room (a fresh one, or one of --shared-rooms, alternately), send one
message every third time, leave; every --abandon-every-th time it sends the upgrade request
and resets the connection at once instead (its join is cancelled half-way). Meanwhile
/readyz is polled every 50 ms. Prints one JSON line: joins, refused upgrades by status,
error frames by code, /readyz answers by status, and the ghosts: names still present in Redis
and rooms the room index still counts names in, 2 s after the last leave (the presence grace
is shorter) and, with --ghost-wait S, how long until neither was left. Works against any
version of the service.

Only loopback targets are accepted and every count and duration is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

import aiohttp
import redis

from _bench import loopback


async def abandon(host: str, port: int, room: str, name: str) -> None:
    _, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET /ws?room={room}&name={name} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
    )
    await writer.drain()
    await asyncio.sleep(random.uniform(0, 0.02))
    writer.transport.abort()


async def user(
    session: aiohttp.ClientSession, url: str, n: int, args: argparse.Namespace, stop: asyncio.Event
) -> Counter[str]:
    seen: Counter[str] = Counter()
    parts = urlsplit(url)
    ws_url = url.replace("http", "ws", 1) + "/ws"
    turn = 0
    while not stop.is_set():
        turn += 1
        room = f"s{random.randrange(args.shared_rooms)}" if turn % 2 else f"c{n}-{turn}"
        name = f"u{n}"
        if args.abandon_every and turn % args.abandon_every == 0:
            await abandon(parts.hostname or "127.0.0.1", parts.port or 80, room, name)
            seen["abandoned"] += 1
            continue
        try:
            async with session.ws_connect(ws_url, params={"room": room, "name": name}) as ws:
                await asyncio.wait_for(ws.receive_json(), 30)
                seen["joined"] += 1
                if turn % 3 == 0:
                    await ws.send_json({"type": "message", "text": "hi", "nonce": f"{n}-{turn}"})
                    while True:
                        frame = await asyncio.wait_for(ws.receive_json(), 30)
                        if frame["type"] == "error":
                            seen[f"error {frame['code']}"] += 1
                            break
                        if frame["type"] == "message" and frame.get("nonce") == f"{n}-{turn}":
                            seen["sent"] += 1
                            break
        except aiohttp.WSServerHandshakeError as exc:
            seen[f"refused {exc.status}"] += 1
        except (aiohttp.ClientError, TimeoutError, TypeError) as exc:
            seen[type(exc).__name__] += 1
    return seen


def present(client: redis.Redis) -> int:
    """Names present in any room, by Redis (the hashes `wc:{room}:p`)."""
    return sum(client.hlen(k) for k in client.scan_iter("wc:{*}:p", count=5000))


def listed(client: redis.Redis) -> int:
    """Rooms the room index (GET /api/rooms) still counts names in."""
    return int(client.zcount("wc:{#index}:members", 1, "+inf"))


async def run(args: argparse.Namespace) -> dict[str, object]:
    url = loopback(args.url)
    client = redis.Redis(port=args.redis_port)
    ready: Counter[str] = Counter()
    stop = asyncio.Event()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def watch() -> None:
            while not stop.is_set():
                try:
                    timeout = aiohttp.ClientTimeout(total=5)
                    async with session.get(url + "/readyz", timeout=timeout) as response:
                        ready[str(response.status)] += 1
                except (aiohttp.ClientError, TimeoutError):
                    ready["no answer"] += 1
                await asyncio.sleep(0.05)

        watcher = asyncio.ensure_future(watch())
        users = [
            asyncio.ensure_future(user(session, url, n, args, stop)) for n in range(args.users)
        ]
        await asyncio.sleep(args.seconds)
        stop.set()
        outcomes: Counter[str] = sum(await asyncio.gather(*users), Counter())
        await watcher
    ended = time.monotonic()
    await asyncio.sleep(2)
    result: dict[str, object] = {
        "users": args.users,
        "seconds": args.seconds,
        "outcomes": dict(outcomes),
        "readyz": dict(ready),
        "names_present_2s_after": present(client),
        "rooms_listed_2s_after": listed(client),
    }
    if args.ghost_wait:
        gone = None
        while time.monotonic() - ended < args.ghost_wait:
            if present(client) == 0 and listed(client) == 0:
                gone = round(time.monotonic() - ended, 1)
                break
            await asyncio.sleep(0.5)
        result["no_name_present_after_s"] = gone
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT of one instance")
    parser.add_argument("--redis-port", type=int, required=True, help="its Redis, on loopback")
    parser.add_argument("--users", type=int, default=200, choices=range(1, 5001), metavar="1-5000")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--shared-rooms", type=int, default=40, choices=range(1, 10001), metavar="N"
    )
    parser.add_argument("--abandon-every", type=int, default=5, choices=range(0, 101), metavar="K")
    parser.add_argument("--ghost-wait", type=float, default=0.0, help="seconds to watch ghosts")
    args = parser.parse_args()
    if not 0 < args.seconds <= 600 or not 0 <= args.ghost_wait <= 600:
        raise SystemExit("--seconds must be in (0, 600], --ghost-wait in [0, 600]")
    result = asyncio.run(run(args))
    print(json.dumps(result))
    print(
        f"{result['outcomes']}; /readyz {result['readyz']}; "
        f"{result['names_present_2s_after']} names present 2 s after the last leave",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
