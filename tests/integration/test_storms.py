"""Join and reconnect storms at a small scale: the rules a storm must not break.

The figures (10,000 clients) come from loadtest/storms.py and are in docs/storms.md; here
a few hundred clients arrive at once and every welcome must still be right (name, members,
count), no presence frame may come from a room past the presence limit (on Redis: none is even
produced), and after a reconnect storm from a dead instance to a live one every client must
hold every message of its room once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.conftest import MakeServer
from tests.support.redis import RedisServer
from tests.support.servers import WebchatProcess
from tests.support.timing import poll, seconds

LIMIT = 40  # the presence limit of these tests' servers: the join storm goes past it
QUICK_STOP = ("--drain-delay", "0", "--drain-spread", "0")


class Member:
    """One chat client of a storm: its frames, kept by a reader task; reconnects on demand."""

    def __init__(self, session: aiohttp.ClientSession, name: str, room: str) -> None:
        self.session = session
        self.name = name
        self.room = room
        self.frames: list[dict[str, Any]] = []
        self.welcomes: list[dict[str, Any]] = []
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reader: asyncio.Task[None] | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "message"]

    @property
    def presence(self) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == "presence"]

    async def connect(self, server: WebchatProcess, since: str | None = None) -> None:
        """Connect (once: a refusal raises) and start reading."""
        params = {"room": self.room, "name": self.name}
        if since is not None:
            params["since"] = since
        self.ws = await asyncio.wait_for(
            self.session.ws_connect(server.ws_url, params=params, max_msg_size=0), seconds(30)
        )
        self.reader = asyncio.create_task(self._read(self.ws))

    async def resume(self, server: WebchatProcess) -> None:
        """Reconnect with `since` as a client does: retried with backoff until it works."""
        last = self.messages[-1]["id"] if self.messages else None
        for attempt in range(100):
            try:
                await self.connect(server, since=last)
                return
            except (aiohttp.ClientError, TimeoutError):
                # The backoff with full jitter of a real client, not synchronisation.
                await asyncio.sleep(random.uniform(0, min(1.0, 0.05 * 2**attempt)))
        raise AssertionError(f"{self.name} could not reconnect")

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                frame = json.loads(msg.data)
                (self.welcomes if frame["type"] == "welcome" else self.frames).append(frame)

    async def gone(self) -> None:
        """The reader ended: the server closed or dropped the connection."""
        assert self.reader is not None
        await self.reader

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await self.reader


@pytest.fixture
async def storm_session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield session


async def connect_all(members: list[Member], server: WebchatProcess, at_once: int) -> None:
    slots = asyncio.Semaphore(at_once)

    async def one(member: Member) -> None:
        async with slots:
            await member.connect(server)

    await asyncio.gather(*(one(m) for m in members))


async def test_a_join_storm_gets_every_welcome_right(
    make_server: MakeServer,
    broker: str,
    storm_session: aiohttp.ClientSession,
    request: pytest.FixtureRequest,
):
    count = 300
    server = make_server("--presence-limit", str(LIMIT), *QUICK_STOP)
    names = [f"u{i}" for i in range(count)]
    members = [Member(storm_session, name, "storm") for name in names]
    await connect_all(members, server, at_once=100)
    await poll(lambda: all(m.welcomes for m in members), 30, "every welcome")

    for member in members:
        welcome = member.welcomes[0]
        listed = welcome["members"]
        assert welcome["name"] == member.name and listed[0] == member.name, welcome
        assert len(listed) == len(set(listed)) <= LIMIT and set(listed) <= set(names), welcome
        assert len(listed) <= welcome["member_count"] <= count, welcome
        # Presence frames only about others, and only while the room had at most LIMIT names.
        joins = member.presence
        assert all(f["event"] == "join" and f["name"] != member.name for f in joins), joins
        assert len(joins) < LIMIT
    # The room's first LIMIT names were announced (to whoever was there), no later one, and
    # only to members while the room had at most LIMIT names here: fewer than LIMIT each.
    announced = {f["name"] for m in members for f in m.presence}
    assert len(announced) <= LIMIT - 1
    assert sum(len(m.presence) for m in members) <= (LIMIT - 1) * LIMIT

    probe = Member(storm_session, "probe", "storm")
    await probe.connect(server)
    await poll(lambda: probe.welcomes, 10, "the probe's welcome")
    assert probe.welcomes[0]["member_count"] == count + 1
    assert len(probe.welcomes[0]["members"]) == LIMIT

    # And everyone is live: one message reaches all of them.
    assert probe.ws is not None
    await probe.ws.send_str(json.dumps({"type": "message", "text": "after the storm"}))
    await poll(
        lambda: all(any(f["text"] == "after the storm" for f in m.messages) for m in members),
        20,
        "the message at every member",
    )
    if broker == "redis":
        # Past the limit no presence event is produced at all: exactly LIMIT joins in the
        # room's presence stream (one per name while the count went 1..LIMIT).
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        assert redis_server.command("XLEN", "wc:{storm}:ps") == LIMIT
    for member in [*members, probe]:
        await member.close()


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
async def test_a_reconnect_storm_to_another_instance_loses_nothing(
    make_server: MakeServer, storm_session: aiohttp.ClientSession
):
    """Instance A dies (SIGKILL) under its clients while messages flow; all of them resume
    on instance B with `since` at once: each must hold its room's messages once, in order."""
    rooms = [f"room{r}" for r in range(8)]
    a, b = make_server(*QUICK_STOP), make_server(*QUICK_STOP)
    members = [Member(storm_session, f"c{i}", rooms[i % len(rooms)]) for i in range(240)]
    await connect_all(members, a, at_once=60)
    await poll(lambda: all(m.welcomes for m in members), 30, "every welcome on A")

    # One publisher per room, on B, numbering its messages; they keep sending throughout.
    publishers = [Member(storm_session, f"pub-{room}", room) for room in rooms]
    for publisher in publishers:
        await publisher.connect(b)
    sent = dict.fromkeys(rooms, 0)
    sending = True
    flowing = asyncio.Event()
    flowing.set()

    async def publish() -> None:
        while sending:
            await flowing.wait()
            for publisher in publishers:
                assert publisher.ws is not None
                text = f"{publisher.room}:{sent[publisher.room]}"
                await publisher.ws.send_str(json.dumps({"type": "message", "text": text}))
                sent[publisher.room] += 1
            await asyncio.sleep(0.05)  # the publishers' pace, not a wait for anything

    sender = asyncio.create_task(publish())
    try:
        await poll(lambda: all(len(m.messages) >= 2 for m in members), 20, "traffic on A")
        # A pause first, so that the clients of a room all resume from the same message (and
        # read the same replay, which a broker may share between them), then the storm, with
        # messages flowing again: every client of A loses its connection at once.
        flowing.clear()
        await poll(
            lambda: all(len(m.messages) == sent[m.room] for m in members), 20, "a quiet moment"
        )
        a.kill()
        flowing.set()
        await asyncio.wait_for(asyncio.gather(*(m.gone() for m in members)), seconds(20))
        await asyncio.wait_for(asyncio.gather(*(m.resume(b) for m in members)), seconds(40))
        await poll(lambda: all(len(m.welcomes) == 2 for m in members), 30, "every welcome on B")
        resumed = {id(m): len(m.messages) for m in members}  # messages keep flowing after it
        await poll(
            lambda: all(len(m.messages) >= resumed[id(m)] + 2 for m in members), 20, "traffic on B"
        )
    finally:
        sending = False
        with contextlib.suppress(Exception):
            await sender

    def texts(member: Member) -> list[str]:
        return [f["text"] for f in member.messages]

    def complete() -> bool:
        return all(len(m.messages) >= sent[m.room] for m in members)

    await poll(complete, 20, "every message at every client")
    for member in members:
        expected = [f"{member.room}:{n}" for n in range(sent[member.room])]
        assert texts(member) == expected, (member.name, member.frames[-5:])
        ids = [f["id"] for f in member.messages]
        assert len(set(ids)) == len(ids)
    assert not any(f["type"] == "gap" for m in members for f in m.frames)
    for member in [*members, *publishers]:
        await member.close()
