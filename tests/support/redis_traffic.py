"""Traffic for tests of the Redis broker: recorded clients, a paced sender, the final check."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import aiohttp

from tests.support.client import ChatClient
from tests.support.redis import Recorder, fetch_history
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


async def upgrade_status(session: aiohttp.ClientSession, server: WebchatProcess) -> int:
    async with session.get(server.ws_url.replace("ws://", "http://"), headers=UPGRADE_HEADERS) as r:
        if r.status == 503:
            assert (await r.json())["error"]["code"] == "unavailable"
        return r.status
