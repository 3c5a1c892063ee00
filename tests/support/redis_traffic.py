"""Traffic for tests of the Redis broker: recorded clients, a paced sender, the final checks."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Sequence

import aiohttp

from tests.support.client import ChatClient
from tests.support.redis import Recorder, fetch_history, wait_status
from tests.support.servers import WebchatProcess
from tests.support.timing import seconds

# No drain delay: these tests stop their processes at the end and need no graceful drain.
FAST = ("--drain-delay", "0", "--drain-spread", "0", "--presence-grace", "0.3")
TRAFFIC = (*FAST, "--rate", "1000", "--burst", "1000", "--history-size", "100000")

UPGRADE_HEADERS = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


async def connect(
    session: aiohttp.ClientSession, server: WebchatProcess, name: str, room: str = "r"
) -> Recorder:
    client = await asyncio.wait_for(
        ChatClient.connect(session, server.ws_url, room=room, name=name), seconds(10)
    )
    return Recorder(client)


class Sender:
    """Sends numbered messages one at a time, each answered by its echo or an error."""

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.accepted: list[str] = []
        self.unavailable = 0
        self._stop = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        rec, name = self.rec, self.rec.name
        for n in itertools.count():
            if self._stop.is_set():
                return
            nonce = f"{name}-{n}"
            errors, seen = len(rec.errors), len(rec.messages)
            await rec.client.send(f"{name} {n}", nonce=nonce)

            def answered(nonce: str = nonce, errors: int = errors, seen: int = seen) -> bool:
                # Every message since the send: a backfill after an outage may bring many at once.
                return len(rec.errors) > errors or any(
                    m.get("nonce") == nonce and m["name"] == name for m in rec.messages[seen:]
                )

            await rec.wait(answered, 15, f"an answer to {nonce}")
            if len(rec.errors) > errors:
                assert [e["code"] for e in rec.errors[errors:]] == ["unavailable"]
                self.unavailable += 1
            else:
                self.accepted.append(nonce)
            await asyncio.sleep(0.01)  # pacing the traffic, not synchronisation

    async def until(self, accepted: int, timeout: float = 15) -> None:
        target = len(self.accepted) + accepted
        await self._until(lambda: len(self.accepted) >= target, timeout, "accepted sends")

    async def until_unavailable(self, timeout: float = 10) -> None:
        await self._until(lambda: self.unavailable > 0, timeout, "an unavailable answer")

    async def _until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        await self.rec.wait(lambda: self._task.done() or predicate(), timeout, what)
        if self._task.done():
            self._task.result()  # raises what went wrong in the sender
            raise AssertionError(f"{self.rec.name} stopped sending")

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.wait_for(self._task, seconds(20))


async def traffic_on_two(
    session: aiohttp.ClientSession, a: WebchatProcess, b: WebchatProcess, room: str = "r"
) -> tuple[list[Recorder], list[Sender]]:
    """A sender and a watcher on each instance, sending until each sender has 10 accepted.

    Returns the recorders (sender on a, watcher on a, sender on b, watcher on b) and the two
    senders, still sending: the test breaks Redis under them.
    """
    recs = [
        await connect(session, a, "sa", room),
        await connect(session, a, "wa", room),
        await connect(session, b, "sb", room),
        await connect(session, b, "wb", room),
    ]
    senders = [Sender(recs[0]), Sender(recs[2])]
    for sender in senders:
        await sender.until(accepted=10)
    return recs, senders


async def recovered(
    session: aiohttp.ClientSession, servers: Sequence[WebchatProcess], senders: list[Sender]
) -> None:
    """After the outage: every instance ready again, 10 more accepted per sender, then stop."""
    for server in servers:
        await wait_status(session, server.url + "/readyz", 200, timeout=10)
    for sender in senders:
        await sender.until(accepted=10)
    for sender in senders:
        await sender.stop()


async def assert_failover_lost_nothing(
    session: aiohttp.ClientSession,
    a: WebchatProcess,
    b: WebchatProcess,
    recs: list[Recorder],
    senders: list[Sender],
    before: list[int],
    room: str = "r",
) -> None:
    """Both instances hold one history, every client all of it, no message twice, and every
    message a sender had acknowledged (more than 10 since `before`, its count at the kill)."""
    history = await assert_everyone_has_history(session, b, recs, room)
    assert await fetch_history(session, a.url, room) == history
    nonces = [m["nonce"] for m in history]
    assert len(nonces) == len(set(nonces)), "a message is in history twice"
    for sender, count in zip(senders, before, strict=True):
        assert len(sender.accepted) > count + 10
        missing = set(sender.accepted) - set(nonces)
        assert not missing, f"acknowledged but lost in the failover: {sorted(missing)}"


async def assert_everyone_has_history(
    session: aiohttp.ClientSession, server: WebchatProcess, recs: list[Recorder], room: str = "r"
) -> list[dict]:
    """Every client ends with every message history holds, exactly once, in history's order.

    A client that connected after the first message must have everything from its first.
    """
    history = await fetch_history(session, server.url, room)
    ids = [m["id"] for m in history]
    for rec in recs:
        assert rec.messages, f"{rec.name} got nothing"
        expected = history[ids.index(rec.messages[0]["id"]) :]
        count = len(expected)
        await rec.wait(lambda r=rec, n=count: len(r.messages) >= n, 20, "every message")
        assert rec.close_code is None, f"{rec.name} was disconnected: {rec.close_code}"
        assert rec.ids() == [m["id"] for m in expected], rec.name
        assert rec.messages == expected, rec.name
    assert len(recs[0].messages) == len(history), "the first client saw all"
    return history


async def assert_one_order_with_concurrent_senders(
    session: aiohttp.ClientSession,
    url: str,
    senders: list[ChatClient],
    watchers: list[ChatClient],
    per_sender: int,
    timeout: float,
) -> list[Recorder]:
    """Every sender sends `per_sender` numbered messages, all senders at once; then every
    receiver (senders and watchers) holds every message once, in the order of the history at
    `url`, and each sender's messages stand in the order it sent them.

    Returns the recorders, for the caller to stop.
    """
    recorders = [Recorder(client) for client in senders + watchers]
    names = [client.welcome["name"] for client in senders]
    total = per_sender * len(senders)

    async def send_all(client: ChatClient, name: str) -> None:
        for n in range(per_sender):
            await client.send(f"{name} {n}", nonce=f"{name}-{n}")

    await asyncio.gather(*(send_all(c, name) for c, name in zip(senders, names, strict=True)))
    for rec in recorders:
        await rec.wait(lambda r=rec: len(r.messages) >= total, timeout, f"{total} messages")
    history = await fetch_history(session, url, "r")  # pages of 500 via `since`
    assert len(history) == total
    ids = [m["id"] for m in history]
    assert len(set(ids)) == total
    for rec in recorders:
        assert rec.errors == []
        assert rec.ids() == ids  # every receiver on every instance: history's order
        assert rec.messages == history
    for name in names:  # each sender's messages in the order it sent them
        mine = [m["text"] for m in history if m["name"] == name]
        assert mine == [f"{name} {n}" for n in range(per_sender)]
    return recorders


async def upgrade_status(session: aiohttp.ClientSession, server: WebchatProcess) -> int:
    async with session.get(server.ws_url.replace("ws://", "http://"), headers=UPGRADE_HEADERS) as r:
        if r.status == 503:
            assert (await r.json())["error"]["code"] == "unavailable"
        return r.status
