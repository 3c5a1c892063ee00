"""The fuzzer's runner: generated sessions and HTTP requests against a live server, every
answer checked against the oracle, then the server checked for leaks and logged errors.

`fuzz(target, seed, frames=..., requests=...)` returns a Report and raises FuzzFailure with
the seed of each failed case. Sessions run `concurrency` at a time, each pipelining up to
WINDOW answers; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fuzz import oracle
from tests.fuzz.generate import KEPT, Generator, HttpCase, SessionPlan
from tests.fuzz.oracle import Close, Echo, Either, Error, Nothing, Pong
from tests.fuzz.wire import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    ServerBroke,
    ServerFrame,
    client_frame,
    read_server_frame,
)
from tests.support.timing import seconds

WINDOW = 16  # answers a session may wait for at once
WAIT = 15.0  # seconds (scaled) for any one answer
MAX_FAILURES = 10


class FuzzFailure(AssertionError):
    pass


@dataclass
class Target:
    host: str
    port: int
    pid: int
    log: Callable[[], str]


@dataclass
class Report:
    seed: int
    frames: int = 0
    messages: int = 0
    sessions: int = 0
    requests: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    http: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    closes: Counter[int] = field(default_factory=Counter)
    lenient: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    warnings: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"seed {self.seed}: {self.frames} frames ({self.messages} messages) in "
            f"{self.sessions} sessions, {self.requests} HTTP requests in {self.seconds:.1f} s; "
            f"closes {dict(self.closes)}; statuses {dict(sorted(self.statuses.items()))}; "
            f"lenient {dict(self.lenient)}; server before {self.before} after {self.after}"
        )


class SessionFailure(Exception):
    pass


class Session:
    """One generated WebSocket session: frames out, every answer checked."""

    def __init__(self, target: Target, plan: SessionPlan, report: Report, seed: int) -> None:
        self.target = target
        self.plan = plan
        self.report = report
        self.seed = seed
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter
        self.errors: list[dict[str, Any]] = []
        self.echoes: list[dict[str, Any]] = []
        self.pongs: list[bytes] = []
        self.close_code: int | None = None
        self.eof = False
        self.changed = asyncio.Event()
        self.want_errors: list[str] = []
        self.want_echoes: list[tuple[Echo, int | None]] = []  # (echo, index of the original)
        self.want_pongs: list[bytes] = []
        self.nonces: dict[str, int] = {}
        self.problem: str | None = None
        self.played = 0
        self.half_closed = False  # nothing more may be written (garbage ended the stream)

    def fail(self, why: str) -> SessionFailure:
        done = [a.kind for a in self.plan.actions[: self.played]]
        return SessionFailure(
            f"session seed {self.seed} ({self.plan.query}): {why}; after {done[-6:]}"
        )

    async def run(self) -> None:
        target = self.target
        self.reader, self.writer = await asyncio.open_connection(target.host, target.port)
        try:
            await self._open()
            reading = asyncio.create_task(self._read())
            try:
                await self._play()
            finally:
                reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reading
            if self.problem:
                raise self.fail(self.problem)
            self._compare()
        finally:
            self.writer.transport.abort()

    async def _open(self) -> None:
        request = (
            f"GET /ws?{self.plan.query} HTTP/1.1\r\nHost: {self.target.host}:{self.target.port}"
            "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.writer.write(request.encode())
        async with asyncio.timeout(seconds(WAIT)):
            head = await self.reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101 "):
                raise self.fail(f"the upgrade got {head[:200]!r}")
            frame = await read_server_frame(self.reader)
        if frame is None or frame.opcode != OP_TEXT:
            raise self.fail(f"no welcome first: {frame}")
        problem = oracle.welcome_problem(json.loads(frame.payload), self.plan.room, self.plan.name)
        if problem:
            raise self.fail(problem)

    async def _read(self) -> None:
        try:
            while True:
                frame = await read_server_frame(self.reader)
                if frame is None:
                    self.eof = True
                    return
                self._take(frame)
                self.changed.set()
                if frame.opcode == OP_CLOSE:
                    return
        except ServerBroke as exc:
            self.problem = str(exc)
        finally:
            self.eof = True
            self.changed.set()

    def _take(self, frame: ServerFrame) -> None:
        plan = self.plan
        if frame.opcode == OP_PING:
            self._write([client_frame(OP_PONG, frame.payload)])
        elif frame.opcode == OP_PONG:
            self.pongs.append(frame.payload)
        elif frame.opcode == OP_CLOSE:
            self.close_code = frame.close_code
        else:
            value = json.loads(frame.payload)
            kind = value.get("type")
            problem = None
            if kind == "message":
                problem = oracle.message_frame_problem(value, plan.room)
                if value["name"] == plan.name:
                    self.echoes.append(value)
            elif kind == "error":
                problem = oracle.error_frame_problem(value)
                self.errors.append(value)
            elif kind == "presence":
                problem = oracle.presence_problem(value, plan.room, plan.name)
            elif kind != "gap":
                problem = f"an unexpected frame {value}"
            if problem and not self.problem:
                self.problem = problem

    def _write(self, frames: list[bytes]) -> None:
        if not self.writer.transport.is_closing() and not self.half_closed:
            self.writer.write(b"".join(frames))

    def _caught_up(self) -> bool:
        return (
            len(self.errors) >= len(self.want_errors)
            and len(self.echoes) >= len(self.want_echoes)
            and len(self.pongs) >= len(self.want_pongs)
        )

    async def _until(self, done: Callable[[], bool], what: str) -> None:
        try:
            async with asyncio.timeout(seconds(WAIT)):
                while not done():
                    if self.problem:
                        raise self.fail(self.problem)
                    if self.eof and not done():
                        raise self.fail(f"the connection ended (close {self.close_code}) {what}")
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise self.fail(f"nothing {what} within {WAIT}s") from None

    def _expect(self, answer: oracle.Answer) -> None:
        if isinstance(answer, Error):
            self.want_errors.append(answer.code)
        elif isinstance(answer, Pong):
            self.want_pongs.append(answer.payload)
        elif isinstance(answer, Echo):
            original = self.nonces.get(answer.nonce) if answer.has_nonce else None
            if answer.has_nonce and original is None:
                self.nonces[str(answer.nonce)] = len(self.want_echoes)
            self.want_echoes.append((answer, original))
        elif not isinstance(answer, Nothing):
            raise AssertionError(f"unexpected answer {answer}")

    async def _play(self) -> None:
        report = self.report
        for action in self.plan.actions:
            self.played += 1
            report.actions[action.kind] += 1
            report.frames += len(action.frames)
            report.messages += sum(
                1 for a in action.answers if isinstance(a, Echo | Error | Close | Either)
            )
            final = action.answers[-1] if action.answers else None
            if action.fatal or isinstance(final, Either):
                await self._until(self._caught_up, "before a closing frame")
            elif (
                len(self.want_errors)
                + len(self.want_echoes)
                + len(self.want_pongs)
                - (len(self.errors) + len(self.echoes) + len(self.pongs))
                >= WINDOW
            ):
                await self._until(self._caught_up, "in the window")
            self._write(action.frames)
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()
            if action.garbage:
                self.half_closed = True
                with contextlib.suppress(OSError):
                    self.writer.write_eof()
                await self._until(lambda: self.eof, "after garbage (the end)")
                if self.close_code is not None:
                    report.closes[self.close_code] += 1
                # What the garbage may have meant (a ping, say) is not checked: only the end.
                self.errors = self.errors[: len(self.want_errors)]
                self.echoes = self.echoes[: len(self.want_echoes)]
                self.pongs = self.pongs[: len(self.want_pongs)]
                return
            for answer in action.answers:
                if isinstance(answer, Close):
                    await self._closed(answer.codes, answer.why)
                    return
                if isinstance(answer, Either):
                    if await self._either(answer):
                        return
                    continue
                self._expect(answer)
        await self._until(self._caught_up, "at the end")

    async def _either(self, either: Either) -> bool:
        """Wait for the strict or the lenient answer; True if the session ended."""
        strict, lenient = either.strict, either.lenient
        codes = set()
        for answer in (strict, lenient):
            if isinstance(answer, Close):
                codes |= answer.codes
        if isinstance(lenient, Close):
            await self._closed(frozenset(codes), either.why)
            self.report.lenient[either.why] += 1
            return True
        self._expect(lenient)
        await self._until(lambda: self._caught_up() or self.close_code is not None, either.why)
        if self.close_code is not None:
            if self.close_code not in codes:
                raise self.fail(f"closed with {self.close_code} for {either.why}")
            self.want_errors = self.want_errors[: len(self.errors)]
            self.want_echoes = self.want_echoes[: len(self.echoes)]
            self.want_pongs = self.want_pongs[: len(self.pongs)]
            self.report.closes[self.close_code] += 1
            return True
        self.report.lenient[either.why] += 1
        return False

    async def _closed(self, codes: frozenset[int], why: str) -> None:
        await self._until(lambda: self.close_code is not None or self.eof, f"closing ({why})")
        if self.close_code is None:
            raise self.fail(f"no close frame ({why}), the connection just ended")
        if self.close_code not in codes:
            raise self.fail(f"closed with {self.close_code} for {why}, expected {set(codes)}")
        self.report.closes[self.close_code] += 1
        self._write([client_frame(OP_CLOSE, struct.pack("!H", 1000))])
        try:
            async with asyncio.timeout(seconds(WAIT)):
                while await self.reader.read(65536):
                    pass
        except ConnectionError:
            pass  # reset: closed too
        except TimeoutError:
            raise self.fail(f"the server kept the connection open after closing ({why})") from None

    def _compare(self) -> None:
        codes = [e["code"] for e in self.errors]
        if codes != self.want_errors:
            raise self.fail(f"errors {codes}, expected {self.want_errors}")
        if len(self.pongs) != len(self.want_pongs) or self.pongs != self.want_pongs:
            raise self.fail(f"pongs {self.pongs[:5]}, expected {self.want_pongs[:5]}")
        if len(self.echoes) != len(self.want_echoes):
            raise self.fail(f"{len(self.echoes)} echoes, expected {len(self.want_echoes)}")
        for got, (want, original) in zip(self.echoes, self.want_echoes, strict=True):
            if original is not None:
                if got != self.echoes[original]:
                    raise self.fail(f"a resend got {got}, not the original {self.echoes[original]}")
                continue
            if got["text"] != want.text or ("nonce" in got) != want.has_nonce:
                raise self.fail(f"echo {got}, expected {want}")
            if want.has_nonce and got["nonce"] != want.nonce:
                raise self.fail(f"echo nonce {got['nonce']!r}, expected {want.nonce!r}")


# --- HTTP -------------------------------------------------------------------------------------


async def http_case(target: Target, case: HttpCase, seed: int, report: Report) -> None:
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(case.raw)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        async with asyncio.timeout(seconds(WAIT)):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                if case.expect is None:
                    return  # the server closed on a mangled request: allowed
                raise FuzzFailure(f"http seed {seed}: no answer to {case.raw[:300]!r}") from None
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = b""
            head_request = case.raw.startswith(b"HEAD ")
            if status != 101 and not head_request:
                if "content-length" in headers:
                    body = await reader.readexactly(int(headers["content-length"]))
                elif headers.get("transfer-encoding") == "chunked":
                    body = await _chunked(reader)
        report.statuses[status] += 1
        where = f"http seed {seed}: {case.raw[:300]!r} got {status} {body[:200]!r}"
        if status >= 500:
            raise FuzzFailure(f"{where}: a server error")
        expect = case.expect
        if expect is None:
            return
        if status not in expect.statuses:
            raise FuzzFailure(f"{where}, expected {sorted(expect.statuses)} ({expect.why})")
        checked = expect.code is not None and status != 101 and not head_request
        if checked and (problem := oracle.error_body_problem(body, expect.code)):
            raise FuzzFailure(f"{where}: {problem}")
        for name, value in expect.headers.items():
            if status != 101 and headers.get(name) != value:
                raise FuzzFailure(f"{where}: header {name} is {headers.get(name)!r}")
    finally:
        writer.transport.abort()


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return body
        body += await reader.readexactly(size)
        await reader.readexactly(2)


# --- the server's resources -------------------------------------------------------------------


def resources(pid: int, port: int) -> dict[str, int]:
    """File descriptors, threads (Linux tasks), RSS, and TCP sockets of clients (any state:
    CLOSE_WAIT is how a connection the server forgot to close shows)."""
    fds = os.listdir(f"/proc/{pid}/fd")
    inodes = set()
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(int(link[8:-1]))
    clients = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                parts = line.split()
                local_port = int(parts[1].rsplit(":", 1)[1], 16)
                listening = parts[3] == "0A"
                if local_port == port and not listening and int(parts[9]) in inodes:
                    clients += 1
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return {
        "fds": len(fds),
        "threads": len(os.listdir(f"/proc/{pid}/task")),
        "rss_kb": rss,
        "client_sockets": clients,
    }


async def connected_users(target: Target) -> float:
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(seconds(WAIT)):
            text = (await reader.read()).decode()
    finally:
        writer.close()
    match = re.search(r"^webchat_connected_users ([0-9.e+]+)$", text, re.M)
    assert match, "no webchat_connected_users in /metrics"
    return float(match[1])


def log_problems(log: str) -> list[str]:
    """Lines of the server log that say something went wrong inside it."""
    bad = re.compile(r" (ERROR|CRITICAL) |Traceback|exception was never retrieved|Exception in")
    return [line for line in log.splitlines() if bad.search(line)]


# --- the run ----------------------------------------------------------------------------------


async def _holder(target: Target) -> tuple[asyncio.StreamWriter, asyncio.Task[None]]:
    """A session holding KEPT's name all run long (the 409 cases), answering pings."""
    reader, writer = await asyncio.open_connection(target.host, target.port)
    writer.write(
        f"GET /ws?room={KEPT.room}&name={KEPT.name}&key={KEPT.key} HTTP/1.1\r\n"
        f"Host: {target.host}:{target.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), seconds(WAIT))
    assert head.startswith(b"HTTP/1.1 101 "), head

    async def answer() -> None:
        while (frame := await read_server_frame(reader)) is not None:
            if frame.opcode == OP_PING:
                writer.write(client_frame(OP_PONG, frame.payload))

    return writer, asyncio.create_task(answer())


async def fuzz(
    target: Target,
    seed: int,
    *,
    frames: int,
    requests: int,
    concurrency: int = 24,
    http_concurrency: int = 6,
    progress: Callable[[Report], None] | None = None,
) -> Report:
    """At least `frames` WebSocket frames and `requests` HTTP requests; raises FuzzFailure."""
    report = Report(seed)
    seeds = random.Random(seed)
    run = f"f{seed % 100_000}x"
    started = time.monotonic()
    holder, holding = await _holder(target)
    await connected_users(target)  # the first /metrics, and its imports, before the baseline
    report.before = resources(target.pid, target.port)
    counter = 0

    def next_seed() -> tuple[int, int]:
        nonlocal counter
        counter += 1
        return counter, seeds.getrandbits(48)

    async def sessions() -> None:
        while report.frames < frames and len(report.failures) < MAX_FAILURES:
            index, sub = next_seed()
            plan = Generator(sub).session(f"{run}{index}")
            report.sessions += 1
            try:
                await Session(target, plan, report, sub).run()
            except (SessionFailure, ServerBroke) as exc:
                report.failures.append(str(exc))
            except (OSError, asyncio.IncompleteReadError) as exc:
                report.failures.append(f"session seed {sub}: {type(exc).__name__}: {exc}")
            if progress is not None and report.sessions % 200 == 0:
                progress(report)

    async def http() -> None:
        while report.requests < requests and len(report.failures) < MAX_FAILURES:
            index, sub = next_seed()
            case = Generator(sub).http(target.port, f"{run}h{index}")
            report.requests += 1
            report.http[case.kind] += 1
            try:
                await http_case(target, case, sub, report)
            except FuzzFailure as exc:
                report.failures.append(str(exc))
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                report.failures.append(f"http seed {sub}: {type(exc).__name__}: {exc}")

    await asyncio.gather(
        *(sessions() for _ in range(concurrency)), *(http() for _ in range(http_concurrency))
    )
    holder.transport.abort()
    holding.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await holding
    await _settle(target, report)
    report.seconds = time.monotonic() - started
    log = target.log()
    report.warnings = sum(1 for line in log.splitlines() if " WARNING " in line)
    report.failures += [f"server log: {line}" for line in log_problems(log)[:20]]
    if report.failures:
        raise FuzzFailure(f"{report.summary()}\n" + "\n".join(report.failures[:MAX_FAILURES]))
    return report


async def _settle(target: Target, report: Report) -> None:
    """Every fuzz connection is gone: the server must hold none of them any more."""
    deadline = time.monotonic() + seconds(WAIT)
    while True:
        users = await connected_users(target)
        report.after = resources(target.pid, target.port)
        if users == 0 and report.after["client_sockets"] == 0:
            break
        if time.monotonic() > deadline:
            report.failures.append(
                f"leak: {users} connected users, {report.after} after every client left"
            )
            return
        # Polling (no event says a socket is gone); not poll(): each check scans /proc, and
        # running out of time is a finding to report, not an error.
        await asyncio.sleep(0.1)
    # Threads: the event loop's default executor (files for GET /) starts up to
    # min(32, cores + 4) on demand and keeps them; more than that would be a leak.
    if report.after["threads"] > report.before["threads"] + min(32, (os.cpu_count() or 1) + 4):
        report.failures.append(f"leak: threads {report.before} -> {report.after}")
