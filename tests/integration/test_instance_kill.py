"""An instance killed with SIGKILL mid-traffic, behind the production nginx.conf.

Two instances on one redis-server behind nginx. Clients connect through nginx and reconnect
like the browser client (backoff with full jitter, `since` = the last id seen, outbox resent
with the same nonces). Two senders (one per instance) publish while instance b is killed:
its sockets die without a close, nginx routes the reconnects to a, and in the end every
client holds every accepted message exactly once, in history's order. Members of b that do
not come back leave within the presence timeout; those that reconnected never leave.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import MakeServer
from tests.support.client import ChatClient
from tests.support.nginx import NginxServer, connected_users, locate
from tests.support.reconnecting import ReconnectingClient
from tests.support.redis import fetch_history
from tests.support.redis_traffic import FAST
from tests.support.servers import WebchatProcess
from tests.support.timing import seconds

PRESENCE_TIMEOUT = 3.0
PER_SENDER = 200
WINDOW = 4  # messages a sender has in flight (unacknowledged) at most
ROOM = "r"

FLAGS = (
    *FAST,
    "--presence-timeout",
    str(PRESENCE_TIMEOUT),
    "--rate",
    "1000",
    "--burst",
    "1000",
    "--history-size",
    "5000",
)


async def reconnecting(session: aiohttp.ClientSession, url: str, name: str) -> ReconnectingClient:
    client = ReconnectingClient(session, url, room=ROOM, name=name)
    return await client.start()


async def produce(sender: ReconnectingClient, count: int) -> None:
    """Publish `count` messages, at most WINDOW unacknowledged, then wait for every echo."""
    for n in range(count):
        await sender.wait(lambda: len(sender.outbox) < WINDOW, 20, "room in the window")
        await sender.publish(f"{sender.name} {n}", nonce=f"{sender.name}-{n}")
    await sender.wait(lambda: not sender.outbox, 20, "an echo of every message")


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
async def test_clients_of_a_killed_instance_resume_through_nginx(
    make_server: MakeServer, wide_session: aiohttp.ClientSession
):
    session = wide_session
    a, b = make_server(*FLAGS), make_server(*FLAGS)
    instances: list[WebchatProcess] = [a, b]
    nginx = NginxServer([a.port, b.port]).start()
    clients: list[ReconnectingClient] = []
    lurkers: list[ChatClient] = []
    try:
        # Sees the whole story from the instance that survives.
        watcher = await reconnecting(session, a.ws_url, "watcher")
        clients.append(watcher)
        on: dict[str, int] = {}  # client name -> index of the instance it landed on
        for name in ("s0", "s1", "r0", "r1", "r2", "r3"):
            client, where = await locate(
                session, instances, lambda name=name: reconnecting(session, nginx.ws_url, name)
            )
            clients.append(client)
            on[name] = where
        assert sorted(on[s] for s in ("s0", "s1")) == [0, 1], f"a sender per instance: {on}"
        assert sorted(on.values()) == [0, 0, 0, 1, 1, 1], on
        on_b = {name for name, where in on.items() if where == 1}
        # Members of b that will not come back (not reconnecting): they must leave.
        for i in range(2):
            lurker = await ChatClient.connect(session, b.ws_url, room=ROOM, name=f"gone{i}")
            lurkers.append(lurker)
        senders = [c for c in clients if c.name in ("s0", "s1")]

        producing = asyncio.gather(*(produce(s, PER_SENDER) for s in senders))
        try:
            await watcher.wait(lambda: len(watcher.messages) >= 60, 20, "traffic before the kill")
            loop = asyncio.get_running_loop()
            b.kill()  # SIGKILL: b's sockets die with it; no close frames, no presence leave
            killed = loop.time()
            seen_at_kill = len(watcher.messages)
            in_flight_at_kill = sum(len(s.outbox) for s in senders)
            await asyncio.wait_for(producing, seconds(30))
        finally:
            if not producing.done():
                producing.cancel()
                await asyncio.gather(producing, return_exceptions=True)
        assert seen_at_kill < len(senders) * PER_SENDER - 50, "the kill came mid-traffic"
        assert in_flight_at_kill > 0, "messages were unacknowledged when b died"

        # b's clients came back through nginx, to a (b is dead): every reconnecting client.
        for client in clients:
            if client.name in on_b:
                assert len(client.welcomes) >= 2, f"{client.name} did not reconnect"
                # The socket died (no close frame), it was not closed by a drain (1012).
                assert client.close_codes[0] == aiohttp.WSCloseCode.ABNORMAL_CLOSURE
        reconnected = [c.name for c in clients if len(c.welcomes) >= 2]
        assert set(reconnected) == on_b, "only b's clients lost their connection"
        assert await connected_users(session, a) == len(clients)

        # Presence: b's members that stayed away leave within the presence timeout; b's
        # members that reconnected to a were never gone.
        def left() -> set[str]:
            return {p["name"] for p in watcher.presence if p["event"] == "leave"}

        await watcher.wait(lambda: left() >= {"gone0", "gone1"}, PRESENCE_TIMEOUT + 5, "leaves")
        elapsed = loop.time() - killed
        assert elapsed <= seconds(PRESENCE_TIMEOUT + 0.5), elapsed
        assert left() == {"gone0", "gone1"}, watcher.presence

        # Exactly once, in order, equal to history, for every client.
        history = await fetch_history(session, nginx.url, ROOM)
        ids = [m["id"] for m in history]
        assert len(history) == len(set(ids)) == len(senders) * PER_SENDER
        for sender in senders:
            texts = [m["text"] for m in history if m["name"] == sender.name]
            assert texts == [f"{sender.name} {n}" for n in range(PER_SENDER)]
            by_nonce = {m["nonce"]: m["id"] for m in history if m["name"] == sender.name}
            assert sender.acked == by_nonce
        for client in clients:
            await client.wait(lambda c=client: c.last_id == ids[-1], 10, "the last message")
        for client in clients:
            assert client.gaps == 0, client.name
            assert client.errors == [], (client.name, client.errors)
            assert client.messages == history, client.name
            # Only a sender gets a copy again: the original, answering its own resend.
            assert all(d["name"] == client.name for d in client.duplicates), client.name

        newcomer = await ChatClient.connect(session, nginx.ws_url, room=ROOM, name="newcomer")
        expected = {c.name for c in clients} | {"newcomer"}
        assert newcomer.welcome is not None
        assert set(newcomer.welcome["members"]) == expected
        await newcomer.close()
    finally:
        for client in clients:
            await client.stop()
        for lurker in lurkers:
            await lurker.close()
        nginx.cleanup()
