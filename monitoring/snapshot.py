"""Run a miniature deployment under a scripted load, then draw its dashboard (docs/dashboard.png).

Everything is real and on loopback, started with the test suite's helpers (tests/support/):
redis-server, two webchat instances, nginx in front with the nginx exporter on its stub_status,
the redis and node exporters, and Debian's prometheus with the deployed VM configuration and
rules (1 s intervals). About four minutes of chat go through nginx, with the events the
dashboard is there to show:

  0:00  clients join three rooms; 10 messages/s
  1:00  traffic ramps up to about 60 messages/s
  1:30  a client stops reading in a busy room: closed 1013 (a slow-client close)
  1:40  a broken client sends malformed frames (errors by type)
  2:10  upgrades from a forbidden origin are refused; 20 clients leave and come back
  2:40  Redis restarts: instances unready for a few seconds, reconnects, `unavailable`
  3:10  traffic back to 20 messages/s until the end

    PYTHONPATH=. .venv/bin/python monitoring/snapshot.py     # or: make dashboard-picture
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test suite's helpers start the real servers

from monitoring.render import Prometheus, render  # noqa: E402
from tests.support.client import ChatClient  # noqa: E402
from tests.support.nginx import NginxServer  # noqa: E402
from tests.support.prometheus import (  # noqa: E402
    PrometheusServer,
    add_stub_status,
    nginx_exporter,
    node_exporter,
    redis_exporter,
)
from tests.support.rawws import RawWebSocket  # noqa: E402
from tests.support.redis import RedisServer  # noqa: E402
from tests.support.servers import WebchatProcess  # noqa: E402

ROOMS = ("lobby", "dev", "random")
MEMBERS = 30  # per room
FLAGS = ("--rate", "50", "--burst", "100", "--send-buffer", "64KiB", "--presence-grace", "1")


# The script's times are for a 240-second run; a shorter or longer one scales them.
SCRIPTED = 240.0


def rate_at(elapsed: float, duration: float) -> float:
    """Messages per second, all rooms together, `elapsed` seconds into the run."""
    t = elapsed * SCRIPTED / duration
    if t < 60:
        return 10
    if t < 90:
        return 10 + (t - 60) / 30 * 50
    if t < 190:
        return 60
    return 20


async def drain(client: ChatClient) -> None:
    """Read everything a client is sent, as a browser would (else it becomes a slow client)."""
    with contextlib.suppress(aiohttp.ClientError, asyncio.CancelledError):
        async for _ in client.ws:
            pass


class Load:
    def __init__(self, session: aiohttp.ClientSession, nginx: NginxServer) -> None:
        self.session = session
        self.nginx = nginx
        self.clients: list[ChatClient] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def join(self, room: str, name: str) -> ChatClient:
        client = await ChatClient.connect(self.session, self.nginx.ws_url, room=room, name=name)
        self.clients.append(client)
        self.tasks.append(asyncio.ensure_future(drain(client)))
        return client

    async def send(self, duration: float, started: float) -> None:
        """Random members send at the scripted rate; sends refused during Redis's restart are
        answered `unavailable` and simply lost, as a user would retry."""
        loop = asyncio.get_running_loop()
        while (elapsed := loop.time() - started) < duration:
            client = random.choice(self.clients)
            with contextlib.suppress(ConnectionError, aiohttp.ClientError):
                if not client.ws.closed:
                    await client.send(f"hello at {elapsed:.1f}s")
            await asyncio.sleep(1 / rate_at(elapsed, duration))  # the scripted pace

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.close()


async def slow_client(load: Load, servers: list[WebchatProcess]) -> None:
    """A client that stops reading in a room that a sender floods: closed 1013."""
    server = servers[0]
    slow = await RawWebSocket.connect(
        "127.0.0.1", server.port, "/ws?room=busy&name=slow", rcvbuf=4096, mss=1000
    )
    sender = await ChatClient.connect(load.session, server.ws_url, room="busy", name="flood")
    reader = asyncio.ensure_future(drain(sender))
    for k in range(200):
        await sender.send(f"{k:04d} " + "x" * 1500)
        await asyncio.sleep(0.025)  # 40 a second: within the rate limit
    await asyncio.sleep(6)  # the server drops the unread socket after 5 s
    reader.cancel()
    await sender.close()
    slow.sock.close()


async def broken_client(load: Load) -> None:
    client = await ChatClient.connect(load.session, load.nginx.ws_url, room="lobby", name="bot")
    for k in range(30):
        await client.ws.send_str("{not json" if k % 3 else json.dumps({"type": "typing"}))
        await asyncio.sleep(0.2)
    await client.close()


async def refused_upgrades(load: Load) -> None:
    for _ in range(15):
        with contextlib.suppress(aiohttp.WSServerHandshakeError):
            ws = await load.session.ws_connect(
                load.nginx.ws_url + "?room=lobby&name=evil",
                headers={"Origin": "http://evil.example"},
            )
            await ws.close()
        await asyncio.sleep(0.5)


async def churn(load: Load) -> None:
    leaving = load.clients[:20]
    for client in leaving:
        await client.close()
    await asyncio.sleep(5)
    for n in range(20):
        await load.join(ROOMS[n % len(ROOMS)], f"back{n}")


async def redis_restart(redis: RedisServer) -> None:
    await asyncio.to_thread(redis.stop)
    await asyncio.sleep(4)  # the outage
    await asyncio.to_thread(redis.start)


async def scenario(
    servers: list[WebchatProcess], nginx: NginxServer, redis: RedisServer, duration: float
) -> tuple[float, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        load = Load(session, nginx)
        for room in ROOMS:
            for n in range(MEMBERS):
                await load.join(room, f"{room}{n}")
        started_wall = time.time()
        loop = asyncio.get_running_loop()
        started = loop.time()
        events: list[tuple[float, str, Callable[[], Any]]] = [
            (90, "a slow client", lambda: slow_client(load, servers)),
            (100, "malformed frames", lambda: broken_client(load)),
            (130, "forbidden origins", lambda: refused_upgrades(load)),
            (130, "20 clients leave and come back", lambda: churn(load)),
            (160, "Redis restarts", lambda: redis_restart(redis)),
        ]
        sender = asyncio.ensure_future(load.send(duration, started))
        running = []
        for at, what, event in events:
            at *= duration / SCRIPTED
            await asyncio.sleep(max(0.0, started + at - loop.time()))  # the script's clock
            print(f"{at:>5.0f} s  {what}", flush=True)
            running.append(asyncio.ensure_future(event()))
        await asyncio.gather(sender, *running)
        ended = time.time()  # before the clients leave: the picture shows the load, not its end
        await load.close()
        return started_wall, ended


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=240, help="seconds of traffic")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args(argv)
    cleanups: list[Callable[[], None]] = []
    try:
        redis = RedisServer(appendonly=True).start()
        cleanups.append(redis.cleanup)
        servers = []
        for _ in range(2):
            server = WebchatProcess("--redis-url", redis.url, *FLAGS)
            cleanups.append(server.stop)
            servers.append(server.start())
        nginx = NginxServer([s.port for s in servers])
        cleanups.append(nginx.cleanup)
        stub_status = add_stub_status(nginx)
        nginx.start()
        exporters = {
            "redis": redis_exporter(redis.url),
            "nginx": nginx_exporter(stub_status),
            "node": node_exporter(),
        }
        for exporter in exporters.values():
            cleanups.append(exporter.cleanup)
            exporter.start()
        prom = PrometheusServer(
            {
                "webchat": [f"127.0.0.1:{s.port}" for s in servers],
                **{job: [e.target] for job, e in exporters.items()},
            }
        )
        cleanups.append(prom.cleanup)
        prom.start()
        print(f"prometheus at {prom.url}; traffic for {args.duration:.0f} s", flush=True)
        start, end = asyncio.run(scenario(servers, nginx, redis, args.duration))
        print(render(Prometheus(prom.url), start, end, args.out))
    finally:
        for cleanup in reversed(cleanups):
            cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
