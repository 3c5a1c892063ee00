"""monitoring/ against a real Prometheus scraping a real deployment in miniature.

Two webchat instances on one redis-server, nginx in front, Debian's redis, nginx and node
exporters, and Debian's prometheus with the deployed VM configuration (1 s intervals) and the
repository's rule files. Clients chat for a few seconds; then:

- every recording rule and every query of every dashboard panel returns at least one series,
  and every rule evaluates without error on real data;
- Prometheus's counts equal what the clients did (messages sent, message frames received);
- delivery p99 from Prometheus's histogram agrees with the p99 the clients measured, within
  the resolution of the histogram's buckets.

The receivers measure delivery latency as the server defines it, on one clock: from the broker's
acceptance (the message id's millisecond part is Redis's clock at XADD, this machine's clock)
to the arrival of the frame at the last of an instance's receivers, as the kernel stamped it
(tests/support/stamped.py: the test process's own scheduling delays are not in the figure).
So both sides have one observation per message per instance.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import yaml

from tests.support.client import ChatClient
from tests.support.nginx import NginxServer
from tests.support.prometheus import (
    MONITORING,
    Exporter,
    PrometheusServer,
    add_stub_status,
    nginx_exporter,
    node_exporter,
    redis_exporter,
)
from tests.support.redis import RedisServer
from tests.support.servers import WebchatProcess
from tests.support.stamped import StampedReceiver
from tests.support.timing import poll

DASHBOARDS = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((MONITORING / "prometheus" / "rules").glob("*.yml"))

ROOM = "observed"
RECEIVERS_PER_INSTANCE = 3
SENDERS = 2
RATE = 10  # messages per second per sender
COUNT = 80  # messages per sender: 8 seconds of traffic, 160 messages, 320 observations
# Rate limits out of the way: the senders' pace is the test's, not the limiter's.
FLAGS = ("--rate", "1000", "--burst", "1000", "--drain-delay", "0", "--drain-spread", "0")


@dataclass
class Sender:
    """A client that sends through nginx and notes the messages it reads back."""

    client: ChatClient
    received: dict[str, str] = field(default_factory=dict)  # message id -> sender's name

    async def run(self) -> None:
        async for msg in self.client.ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                frame = json.loads(msg.data)
                if frame.get("type") == "message":
                    self.received[frame["id"]] = frame["name"]

    def own(self) -> list[str]:
        """Ids of this client's own messages (their echoes are the acknowledgements)."""
        name = self.client.welcome["name"] if self.client.welcome else None
        return [i for i, sender in self.received.items() if sender == name]


@dataclass
class Run:
    """What the scenario did, for the tests to compare with what Prometheus says."""

    prometheus: PrometheusServer
    start: float  # wall clock, before the measured traffic, after a scrape of every target
    end: float  # after the traffic, after a scrape of every target
    messages: int  # messages accepted during the traffic
    frames: int  # message frames all clients read during the traffic
    latencies: list[float]  # per message per instance: acceptance to the last arrival

    def offset(self) -> str:
        """A PromQL offset that, evaluated at `end`, reads the samples from before `start`."""
        return f"{math.ceil((self.end - self.start) * 1000)}ms"


def accepted_at(message_id: str) -> float:
    """The broker's acceptance time of a message: its id's millisecond part (Redis's clock)."""
    return int(message_id.split("-")[0]) / 1000


async def drive(servers: list[WebchatProcess], nginx: NginxServer, prom: PrometheusServer) -> Run:
    receivers: dict[StampedReceiver, int] = {}  # each with the instance it is connected to
    senders: list[Sender] = []
    tasks: list[asyncio.Future[None]] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        try:
            for i, server in enumerate(servers):
                for n in range(RECEIVERS_PER_INSTANCE):
                    target = f"/ws?room={ROOM}&name=r{i}{n}"
                    receivers[StampedReceiver.connect(server.port, target).start()] = i
            # Senders come through nginx, so the load balancer carries traffic too.
            for n in range(SENDERS):
                client = await ChatClient.connect(session, nginx.ws_url, room=ROOM, name=f"s{n}")
                senders.append(Sender(client))
                tasks.append(asyncio.ensure_future(senders[-1].run()))
            await poll(
                lambda: all(
                    any(f.get("type") == "welcome" for _, f in r.frames) for r in receivers
                ),
                10,
                "every receiver's welcome",
            )
            # The counters' values before the traffic are those of a scrape after everyone
            # connected (presence frames are not messages).
            connected = time.time()
            await poll(lambda: prom.scraped_since(session, connected), 20, "a scrape of all")
            start = time.time()

            async def send(sender: Sender) -> None:
                for k in range(COUNT):
                    await sender.client.send(f"message {k}", nonce=str(k))
                    await asyncio.sleep(1 / RATE)  # a sender's pace, not a wait for anything

            await asyncio.gather(*map(send, senders))
            await poll(lambda: all(len(s.own()) == COUNT for s in senders), 10, "every echo")
            sent = [i for s in senders for i in s.own()]
            await poll(
                lambda: (
                    all(len(r.messages()) == len(sent) for r in receivers)
                    and all(len(s.received) == len(sent) for s in senders)
                ),
                10,
                "every client to read every message",
            )
            delivered = time.time()
            await poll(lambda: prom.scraped_since(session, delivered), 20, "a scrape of all")
            end = time.time()
        finally:
            for task in tasks:
                task.cancel()
            for sender in senders:
                await sender.client.close()
            for receiver in receivers:
                receiver.close()

    arrivals = {r: r.messages() for r in receivers}
    latencies = [
        max(arrivals[r][message_id] for r, i in receivers.items() if i == instance)
        - accepted_at(message_id)
        for message_id in sent
        for instance in range(len(servers))
    ]
    return Run(
        prometheus=prom,
        start=start,
        end=end,
        messages=len(sent),
        frames=len(sent) * (len(receivers) + len(senders)),
        latencies=latencies,
    )


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    """The whole deployment, the traffic, and Prometheus left running for the queries."""
    cleanups: list[Any] = []
    try:
        redis = RedisServer().start()
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
        exporters: dict[str, Exporter] = {}
        for job, exporter in (
            ("redis", redis_exporter(redis.url)),
            ("nginx", nginx_exporter(stub_status)),
            ("node", node_exporter()),
        ):
            cleanups.append(exporter.cleanup)
            exporters[job] = exporter.start()
        prom = PrometheusServer(
            {
                "webchat": [f"127.0.0.1:{s.port}" for s in servers],
                **{job: [e.target] for job, e in exporters.items()},
            }
        )
        cleanups.append(prom.cleanup)
        prom.start()
        yield asyncio.run(drive(servers, nginx, prom))
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession() as s:
        yield s


def recording_rules() -> list[str]:
    return [
        rule["record"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    ]


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) of every panel target, `$instance` as "all"."""
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                # Grafana's "All" of the instance variable is its allValue, `.*`.
                expr = target["expr"].replace("$instance", ".*")
                found.append((path.name, panel["title"], expr))
    assert found, "no dashboard queries found"
    return found


async def test_every_recording_rule_returns_series(run: Run, session: aiohttp.ClientSession):
    empty = [r for r in recording_rules() if not await run.prometheus.query(session, r)]
    assert not empty, f"recording rules without any series: {empty}"


async def test_every_dashboard_query_returns_series(run: Run, session: aiohttp.ClientSession):
    empty = []
    for name, title, expr in dashboard_queries():
        assert "$" not in expr, f"{name} {title!r}: a variable the test does not know: {expr}"
        if not await run.prometheus.query(session, expr):
            empty.append(f"{name} {title!r}: {expr}")
    assert not empty, "panel queries without any series:\n" + "\n".join(empty)


async def test_every_rule_evaluates_without_error(run: Run, session: aiohttp.ClientSession):
    async def evaluated() -> list[dict[str, Any]]:
        groups = (await run.prometheus.api(session, "rules"))["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if all(rule["health"] != "unknown" for rule in rules) else []

    rules = await poll(evaluated, 10, "every rule evaluated once")
    loaded = {r["name"] for r in rules}
    expected = {
        rule.get("record") or rule.get("alert")
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    }
    assert loaded == expected
    failing = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not failing, f"rules failing on real data: {failing}"


async def test_counts_equal_what_the_clients_did(run: Run, session: aiohttp.ClientSession):
    """Raw counter differences between two scrapes: exactly the traffic, nothing lost."""

    async def delta(metric: str) -> float:
        offset = run.offset()
        expr = f'sum({metric}{{job="webchat"}}) - sum({metric}{{job="webchat"}} offset {offset})'
        (sample,) = await run.prometheus.query(session, expr, at=run.end)
        return float(sample["value"][1])

    assert await delta("webchat_messages_total") == run.messages
    assert await delta("webchat_deliveries_total") == run.frames
    # One delivery-latency observation per message per instance (both have receivers).
    assert await delta("webchat_delivery_latency_seconds_count") == 2 * run.messages


TRUNCATION_AND_HOP = 0.0015


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def test_delivery_p99_agrees_with_the_clients(run: Run, session: aiohttp.ClientSession):
    offset = run.offset()
    buckets = 'webchat_delivery_latency_seconds_bucket{job="webchat"}'
    (sample,) = await run.prometheus.query(
        session,
        f"histogram_quantile(0.99, sum by (le) ({buckets} - {buckets} offset {offset}))",
        at=run.end,
    )
    from_prometheus = float(sample["value"][1])
    bounds = sorted(
        float(s["metric"]["le"])
        for s in await run.prometheus.query(session, f"sum by (le) ({buckets})", at=run.end)
    )
    upper = next(b for b in bounds if b >= from_prometheus)
    lower = max([0.0, *(b for b in bounds if b < upper)])
    measured = nearest_rank(run.latencies, 0.99)
    # The histogram only says the server's p99 lies in (lower, upper]. Each client figure is
    # the server's plus the id's truncation to milliseconds (< 1 ms), the rest of the publish
    # script after XADD and the loopback hop (microseconds): TRUNCATION_AND_HOP above it.
    assert lower <= measured <= upper + TRUNCATION_AND_HOP, (
        f"clients' p99 {measured * 1000:.2f} ms, Prometheus's {from_prometheus * 1000:.2f} ms "
        f"in bucket ({lower * 1000:g}, {upper * 1000:g}] ms; "
        f"clients' p50 {nearest_rank(run.latencies, 0.5) * 1000:.2f} ms"
    )
