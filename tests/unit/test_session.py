"""session.py: one client's messages are handled in order, one awaited publish at a time."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from webchat.connection import Connection
from webchat.ratelimit import TokenBucket
from webchat.session import Pending, Session
from webchat.websocket import ServerSocket


class Recorder:
    """A Handler that records what it is given; messages starting with 'slow' must be awaited
    until the test opens their gate."""

    def __init__(self) -> None:
        self.handled: list[str | bytes] = []
        self.gates: dict[str | bytes, asyncio.Event] = defaultdict(asyncio.Event)
        self.reached: dict[str | bytes, asyncio.Event] = defaultdict(asyncio.Event)
        self.tasks: set[asyncio.Task[None]] = set()
        self.ended: list[Connection] = []
        self.controls = 0
        self.allow_control = True

    def handle_message(
        self, conn: Connection, bucket: TokenBucket, data: str | bytes
    ) -> Pending | None:
        self.handled.append(data)
        self.reached[data].set()
        if isinstance(data, str) and data.startswith("slow"):
            gate = self.gates[data]

            async def wait() -> None:
                await gate.wait()

            return wait
        return None

    def handle_control(self, conn: Connection, bucket: TokenBucket, pong: bool) -> bool:
        self.controls += 1
        return self.allow_control

    def spawn(self, coro) -> asyncio.Task[None]:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        return task

    def session_ended(self, conn: Connection) -> None:
        self.ended.append(conn)

    async def settle(self) -> None:
        await asyncio.gather(*self.tasks)


def make_session(ended: list[str] | None = None) -> tuple[Session, Recorder, Connection]:
    socket = ServerSocket(max_size=1024)  # never connected: pausing its reading does nothing
    reasons = ended if ended is not None else []
    conn = Connection(socket, None, "room", "name", 1024, 25, reasons.append)  # type: ignore[arg-type]
    recorder = Recorder()
    session = Session(recorder, conn, socket, 10, 20, 0.0)
    return session, recorder, conn


async def test_messages_that_come_during_an_await_wait_for_it_in_order():
    session, recorder, _ = make_session()
    session.on_message("a")
    session.on_message("slow-1")
    session.on_message("b")
    session.on_message(b"binary")
    session.on_message("slow-2")
    session.on_message("c")
    assert recorder.handled == ["a", "slow-1"]  # the rest waits for slow-1
    await asyncio.sleep(0)  # a turn of the loop: still nothing may pass slow-1
    assert recorder.handled == ["a", "slow-1"]
    recorder.gates["slow-1"].set()
    async with asyncio.timeout(5):
        await recorder.reached["slow-2"].wait()
    assert recorder.handled == ["a", "slow-1", "b", b"binary", "slow-2"]
    session.on_message("d")  # still behind slow-2 and c
    recorder.gates["slow-2"].set()
    await recorder.settle()
    assert recorder.handled == ["a", "slow-1", "b", b"binary", "slow-2", "c", "d"]
    session.on_message("e")  # nothing pending: handled at once
    assert recorder.handled[-1] == "e"


async def test_a_closing_connection_handles_nothing_more():
    session, recorder, conn = make_session()
    session.on_message("slow-1")
    session.on_message("queued")
    session.on_closing(False)  # the closing handshake is over
    assert conn.closing
    recorder.gates["slow-1"].set()
    await recorder.settle()
    session.on_message("late")
    assert recorder.handled == ["slow-1"]


async def test_activity_and_the_end_reach_the_connection_and_the_handler():
    session, recorder, conn = make_session()
    conn.last_seen = -1.0
    before = asyncio.get_running_loop().time()
    session.on_activity()
    assert conn.last_seen >= before
    session.on_closed()
    assert recorder.ended == [conn]


async def test_a_connection_the_client_broke_ends_as_an_error():
    reasons: list[str] = []
    session, _, conn = make_session(reasons)
    session.on_closing(True)  # websockets failed it (1002, 1007, 1009)
    assert conn.closing and reasons == ["error"]
    session.on_closed()
    conn.mark_ended("client")  # what node.session_ended records last
    assert reasons == ["error"], "the first reason wins"


async def test_a_clean_close_leaves_the_reason_to_whoever_ends_it():
    reasons: list[str] = []
    session, _, conn = make_session(reasons)
    session.on_closing(False)
    assert conn.closing and reasons == []


async def test_pings_and_pongs_are_put_to_the_handler_until_the_connection_closes():
    session, recorder, _ = make_session()
    assert session.on_control(False) is True
    recorder.allow_control = False
    assert session.on_control(True) is False  # refused: websocket.py sends no pong
    assert recorder.controls == 2
    session.on_closing(False)
    assert session.on_control(False) is False  # closing: nothing is charged or answered
    assert recorder.controls == 2
