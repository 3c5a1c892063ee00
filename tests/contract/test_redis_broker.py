"""The broker seam in-process, on both brokers: what no wire frame shows.

Trace context carried through, delivery only while subscribed, presence counted per node.
The Redis broker runs against the test's real redis-server; several RedisBroker objects on
one Redis are several nodes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack

import pytest

from tests.conftest import broker_url
from tests.support.timing import seconds
from webchat.broker.base import Broker, Draft, Message, PresenceEvent
from webchat.broker.memory import MemoryBroker
from webchat.config import Config

TRACE = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}


class Recorder:
    """An EventHandler that keeps what it is given."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, list[Message]]] = []
        self.presence: list[PresenceEvent] = []
        self.changed = asyncio.Event()

    def on_messages(self, room: str, messages: Sequence[Message]) -> None:
        self.batches.append((room, list(messages)))
        self.changed.set()

    def on_presence(self, event: PresenceEvent) -> None:
        self.presence.append(event)
        self.changed.set()

    def messages(self, room: str | None = None) -> list[Message]:
        return [m for r, batch in self.batches if room in (None, r) for m in batch]

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        async with asyncio.timeout(seconds(5)):
            while not predicate():
                self.changed.clear()
                if not predicate():
                    await self.changed.wait()


Node = tuple[Broker, Recorder]


@pytest.fixture
async def nodes(broker: str, request: pytest.FixtureRequest) -> AsyncIterator[list[Node]]:
    """Two nodes on one broker (on memory: one node, which is all a memory broker serves)."""
    async with AsyncExitStack() as stack:
        result: list[Node] = []
        if broker == "memory":
            brokers: list[Broker] = [MemoryBroker(history_size=100)]
        else:
            from webchat.broker.redis import RedisBroker

            url = broker_url(broker, request)
            assert url is not None
            config = Config(redis_url=url, history_size=100, presence_timeout=3)
            brokers = [RedisBroker(config, "node1"), RedisBroker(config, "node2")]
        for node in brokers:
            handler = Recorder()
            await node.start(handler)
            stack.push_async_callback(node.close)
            assert node.ready
            result.append((node, handler))
        yield result


async def test_trace_context_is_carried_through(nodes: list[Node]):
    node, handler = nodes[-1]
    await node.subscribe("r")
    published = await node.publish("r", Draft("alice", "traced", "n1", TRACE))
    assert not published.duplicate and published.message.trace == TRACE
    await handler.until(lambda: len(handler.messages()) == 1, "the delivery")
    assert handler.messages() == [published.message]
    again = await node.publish("r", Draft("alice", "traced again", "n1"))
    assert again.duplicate and again.message == published.message
    plain = await node.publish("r", Draft("alice", "untraced", None))
    assert plain.message.trace is None and plain.message.nonce is None
    history = await node.history("r", None, 10)
    assert history.messages == [published.message, plain.message]


async def test_delivery_only_while_subscribed(nodes: list[Node]):
    node, handler = nodes[0]
    publisher = nodes[-1][0]
    await node.subscribe("r")
    await node.subscribe("s")
    first = (await publisher.publish("r", Draft("a", "1", None))).message
    await handler.until(lambda: len(handler.messages()) == 1, "the first message")
    await node.unsubscribe("r")
    await publisher.publish("r", Draft("a", "unseen", None))
    marker = (await publisher.publish("s", Draft("a", "marker", None))).message
    await handler.until(lambda: marker in handler.messages(), "the marker")
    assert handler.messages() == [first, marker]
    await node.subscribe("r")
    later = (await publisher.publish("r", Draft("a", "later", None))).message
    await handler.until(lambda: later in handler.messages(), "the later message")
    assert handler.messages("r") == [first, later]


async def test_batches_keep_history_order(nodes: list[Node]):
    node, handler = nodes[0]
    await node.subscribe("r")
    publishers = [n for n, _ in nodes]
    await asyncio.gather(
        *(
            publishers[i % len(publishers)].publish("r", Draft(f"u{i % 3}", f"m{i}", None))
            for i in range(60)
        )
    )
    await handler.until(lambda: len(handler.messages()) == 60, "every message")
    history = await node.history("r", None, 100)
    assert handler.messages() == list(history.messages)
    assert all(room == "r" and batch for room, batch in handler.batches)


async def test_presence_is_counted_per_name_across_nodes(nodes: list[Node]):
    first, handler = nodes[0]
    second = nodes[-1][0]
    await first.subscribe("r")
    await first.presence.join("r", "alice")
    await handler.until(lambda: len(handler.presence) == 1, "alice's join")
    await second.presence.join("r", "alice")  # a second holder: no new join
    await second.presence.join("r", "bob")
    await handler.until(lambda: len(handler.presence) == 2, "bob's join")
    assert [(e.event, e.name, e.count) for e in handler.presence] == [
        ("join", "alice", 1),
        ("join", "bob", 2),
    ]
    members, count = await second.presence.members("r", 10, "bob")
    assert (members[0], sorted(members), count) == ("bob", ["alice", "bob"], 2)
    assert await second.presence.members("r", 1, "bob") == (["bob"], 2)
    await first.presence.leave("r", "alice")  # still held by the second node
    await second.presence.leave("r", "bob")
    await handler.until(lambda: len(handler.presence) == 3, "bob's leave")
    await second.presence.leave("r", "alice")
    await handler.until(lambda: len(handler.presence) == 4, "alice's leave")
    assert [(e.event, e.name, e.count) for e in handler.presence[2:]] == [
        ("leave", "bob", 1),
        ("leave", "alice", 0),
    ]
    assert await first.presence.members("r", 10, "carol") == ([], 0)
