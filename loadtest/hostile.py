#!/usr/bin/env python3
"""The attacks of issue 12 that the HTTP and socket side bounds, run against a webchat process
this script starts, with the figures docs/security.md reports.

    python loadtest/hostile.py [--app-dir app] [--rt]
        [--scenario api,echo,replay,slowloris,bad,fds,pings]

Each scenario starts its own `python -m webchat` (from `--app-dir`, so the same command
measures an older tree: `git archive <commit> app frontend | tar -x -C /tmp/old` and
`--app-dir /tmp/old/app`), attacks it from this process over loopback, prints one JSON line
per scenario on stdout and a summary on stderr, and stops the server.

- api: a room of 500 maximum-size messages (2,000 emoji, 8 KB each); 40 clients request
  `limit=500` and never read. Server RSS before, at its peak, and 5 s after they close;
  the echo latency of another client meanwhile; how many got an answer started.
- echo: another client's echo latency (p50, p99) idle, then while 4 clients loop on that
  API request (reading the answers).
- replay: 1,000 maximum-size messages; 40 WebSocket clients resume with `since=0-0` and
  never read. RSS peak and after, and how long until the server has dropped them all.
- slowloris: 500 connections send a request line and then one header line every 5 s. How
  long the server holds them (observed up to 60 s), and whether others are still served.
- bad: 200 requests with a 9,000-byte request line. The answer, and what the log got.
- fds: the server under a descriptor limit of 1,024; 1,100 WebSocket connects. How many
  were accepted, refused (and how), failed; tracebacks and log size.

Only loopback; every count and duration is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
BIG = "\U0001f600" * 2000  # the largest message: 2,000 code points, 8,000 bytes of UTF-8
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --rt: the server alone on core 0 at real-time priority (SCHED_FIFO 1), this process on core
# 1 at the same priority, load generators (curl) on core 1 at normal priority. On a machine
# that others share, the server then runs when it has work, and the client measuring echoes
# runs when it has a frame to read, whatever else the machine does.
RT = {"server": [], "generators": []}


def real_time() -> None:
    RT["server"] = ["taskset", "-c", "0", "chrt", "-f", "1"]
    RT["generators"] = ["chrt", "-o", "0", "taskset", "-c", "1"]
    os.sched_setaffinity(0, {1})
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))


class Server:
    """`python -m webchat` from `app_dir`, on a free port, logging to a file."""

    def __init__(self, app_dir: Path, *flags: str, nofile: int | None = None) -> None:
        self.port = free_port()
        self.log_path = Path(tempfile.mkstemp(prefix="hostile-", suffix=".log")[1])
        env = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME")}
        env.update(PYTHONPATH=str(app_dir), PYTHONUNBUFFERED="1")

        def limit() -> None:
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*RT["server"], sys.executable, "-m", "webchat", "--port", str(self.port), *flags],
                cwd=app_dir.parent,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=limit,
            )
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self, session: aiohttp.ClientSession) -> Server:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(self.url + "/healthz") as response:
                    if response.status == 200:
                        return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"webchat exited:\n{self.log()}")
            await asyncio.sleep(0.05)
        raise RuntimeError("webchat did not answer")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log_path.unlink(missing_ok=True)


class Peak:
    """The highest RSS of a process, sampled every 50 ms until stopped."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.value = rss_mib(pid)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.value = max(self.value, rss_mib(self.pid))
            await asyncio.sleep(0.05)

    async def stop(self) -> float:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return round(self.value, 1)


async def fill(session: aiohttp.ClientSession, url: str, room: str, count: int) -> None:
    """`count` maximum-size messages in `room`, sent as UTF-8 (under --max-frame)."""
    async with session.ws_connect(f"{url}/ws?room={room}&name=filler") as ws:
        await ws.receive_json()  # welcome
        for start in range(0, count, 10):  # echoes of a round fit the send buffer
            batch = range(start, min(count, start + 10))
            for n in batch:
                frame = {"type": "message", "text": f"{n:04d} {BIG[5:]}"}  # 2,000 points
                await ws.send_str(json.dumps(frame, ensure_ascii=False))
            for _ in batch:
                while True:
                    frame = await ws.receive_json(timeout=30)
                    if frame.get("type") == "error":
                        raise RuntimeError(f"filling {room}: {frame}")
                    if frame.get("type") == "message":
                        break


async def raw_socket(port: int, request: bytes, rcvbuf: int = 4096) -> socket.socket:
    """A connected socket that has sent `request` and will not read (a small window)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), 10)
    if request:
        await asyncio.wait_for(loop.sock_sendall(sock, request), 10)
    return sock


def peek_status(sock: socket.socket) -> str:
    """The status line the server has sent so far, without reading it, or what happened."""
    try:
        head = sock.recv(64, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return "nothing"
    except OSError as exc:
        return type(exc).__name__
    return head.split(b"\r\n", 1)[0].decode(errors="replace") if head else "closed"


# tcp_info.tcpi_state (linux/tcp.h); after a FIN it is CLOSE_WAIT, after a RST CLOSE.
TCP_ESTABLISHED = 1


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed (FIN) or dropped (RST) this connection, read from the
    socket's TCP state: nothing it sent is consumed, so the client still reads nothing."""
    state = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
    return state != TCP_ESTABLISHED


class Echo:
    """A client measuring its own message's round trip, continuously, in `room`."""

    def __init__(
        self, session: aiohttp.ClientSession, url: str, room: str, interval: float = 0.02
    ) -> None:
        self.session, self.url, self.room = session, url, room
        self.interval = interval  # between one echo and the next message
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def start(self) -> Echo:
        self.ws = await self.session.ws_connect(f"{self.url}/ws?room={self.room}&name=echo")
        await self.ws.receive_json()
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def _run(self) -> None:
        assert self.ws is not None
        while True:
            nonce = uuid.uuid4().hex
            started = time.perf_counter()
            await self.ws.send_json({"type": "message", "text": "ping", "nonce": nonce})
            while True:
                frame = await self.ws.receive_json()
                if frame.get("nonce") == nonce:
                    break
            self.samples.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(self.interval)

    def take(self) -> list[float]:
        samples, self.samples = self.samples, []
        return samples

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.ws is not None:
            await self.ws.close()


def percentiles(samples: list[float]) -> dict[str, float | int | None]:
    if len(samples) < 2:
        return {"n": len(samples), "p50_ms": None, "p99_ms": None, "max_ms": None}
    cuts = statistics.quantiles(samples, n=100)
    return {
        "n": len(samples),
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(cuts[98], 2),
        "max_ms": round(max(samples), 2),
    }


def log_figures(text: str) -> dict[str, int]:
    return {
        "log_bytes": len(text.encode()),
        "log_tracebacks": text.count("Traceback"),
        "log_error_lines": sum(1 for line in text.splitlines() if " ERROR " in line),
    }


# --- scenarios --------------------------------------------------------------------------------

FAST = ("--rate", "100000", "--burst", "100000")


async def api(app: Path, session: aiohttp.ClientSession) -> dict[str, Any]:
    server = await Server(app, *FAST).ready(session)
    try:
        await fill(session, server.url, "big", 500)
        target = f"{server.url}/api/rooms/big/messages?limit=500"
        async with session.get(target) as response:  # warm: the path has run once
            page = await response.read()
        echo = await Echo(session, server.url, "echo").start()
        await asyncio.sleep(2)
        echo.take()
        baseline = rss_mib(server.proc.pid)
        peak = Peak(server.proc.pid)
        request = b"GET /api/rooms/big/messages?limit=500 HTTP/1.1\r\nHost: x\r\n\r\n"
        socks = [await raw_socket(server.port, request) for _ in range(40)]
        await asyncio.sleep(15)  # longer than the 10 s write timeout
        statuses = [peek_status(s) for s in socks]
        dropped = sum(closed_by_server(s) for s in socks)
        during = percentiles(echo.take())
        held = await peak.stop()
        for sock in socks:
            sock.close()
        await asyncio.sleep(5)
        after = rss_mib(server.proc.pid)
        await echo.stop()
        return {
            "page_bytes": len(page),
            "rss_baseline_mib": round(baseline, 1),
            "rss_peak_mib": held,
            "rss_5s_after_close_mib": round(after, 1),
            "answers_started": {s: statuses.count(s) for s in set(statuses)},
            "dropped_by_server_within_15s": dropped,
            "echo_during": during,
            **log_figures(server.log()),
        }
    finally:
        server.stop()


async def echo_under_api_load(app: Path, session: aiohttp.ClientSession) -> dict[str, Any]:
    server = await Server(app, *FAST).ready(session)
    loopers: list[subprocess.Popen[bytes]] = []
    counts = Path(tempfile.mkstemp(prefix="hostile-curl-")[1])
    try:
        await fill(session, server.url, "big", 500)
        echo = await Echo(session, server.url, "echo").start()
        await asyncio.sleep(5)
        idle = percentiles(echo.take())
        # Four looping curls, as in the issue: processes of their own, so this process's loop
        # measures the server's latency, not its own reading of 40 MB/s.
        target = f"{server.url}/api/rooms/big/messages?limit=500"
        script = f"while :; do curl -s -o /dev/null -w '%{{http_code}}\\n' '{target}'; done"
        cpu_before = cpu_seconds(server.proc.pid)
        with counts.open("wb") as out:  # noqa: ASYNC230  # a local file, opened once
            loopers = [
                subprocess.Popen([*RT["generators"], "sh", "-c", script], stdout=out)  # noqa: ASYNC220  # started once
                for _ in range(4)
            ]
        await asyncio.sleep(10)
        loaded = percentiles(echo.take())
        server_cpu = cpu_seconds(server.proc.pid) - cpu_before
        for looper in loopers:
            looper.kill()
            looper.wait()
        await echo.stop()
        codes = counts.read_text().split()  # noqa: ASYNC240  # after the measurement
        served = codes.count("200")
        return {
            "echo_idle": idle,
            "echo_with_4_api_loops": loaded,
            "api_answers_in_10s": {c: codes.count(c) for c in sorted(set(codes))},
            "server_cpu_s_in_10s": round(server_cpu, 2),
            "server_cpu_ms_per_answer": round(1000 * server_cpu / served, 2) if served else None,
        }
    finally:
        for looper in loopers:
            if looper.poll() is None:
                looper.kill()
                looper.wait()
        counts.unlink(missing_ok=True)  # noqa: ASYNC240  # after the measurement
        server.stop()


async def replay(app: Path, session: aiohttp.ClientSession) -> dict[str, Any]:
    server = await Server(app, *FAST).ready(session)
    try:
        await fill(session, server.url, "big", 1000)
        await asyncio.sleep(1)
        baseline = rss_mib(server.proc.pid)
        peak = Peak(server.proc.pid)
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        socks = []
        for n in range(40):
            request = (
                f"GET /ws?room=big&name=r{n}&since=0-0 HTTP/1.1\r\nHost: x\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            socks.append(await raw_socket(server.port, request))
        started = time.monotonic()
        all_dropped = None
        while time.monotonic() - started < 90:
            await asyncio.sleep(0.5)
            if all(closed_by_server(s) for s in socks):
                all_dropped = round(time.monotonic() - started, 1)
                break
        held = await peak.stop()
        for sock in socks:
            sock.close()
        await asyncio.sleep(5)
        return {
            "rss_baseline_mib": round(baseline, 1),
            "rss_peak_mib": held,
            "rss_5s_after_close_mib": round(rss_mib(server.proc.pid), 1),
            "seconds_until_all_dropped": all_dropped,
            **log_figures(server.log()),
        }
    finally:
        server.stop()


async def slowloris(app: Path, session: aiohttp.ClientSession) -> dict[str, Any]:
    server = await Server(app).ready(session)
    try:
        socks = [
            await raw_socket(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n") for _ in range(500)
        ]
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        closed_at: dict[int, float] = {}
        health: list[float] = []
        while time.monotonic() - started < 60 and len(closed_at) < len(socks):
            for index, sock in enumerate(socks):
                if index not in closed_at and closed_by_server(sock):
                    closed_at[index] = time.monotonic() - started
            t0 = time.perf_counter()
            async with session.get(server.url + "/healthz") as response:
                await response.read()
            health.append((time.perf_counter() - t0) * 1000)
            if int(time.monotonic() - started) % 5 == 0:
                for index, sock in enumerate(socks):  # one more header line every 5 s
                    if index not in closed_at:
                        with contextlib.suppress(OSError):
                            await loop.sock_sendall(sock, b"X-a: b\r\n")
            await asyncio.sleep(0.5)
        for sock in socks:
            sock.close()
        times = sorted(closed_at.values())
        return {
            "connections": len(socks),
            "closed_by_server_within_60s": len(times),
            "first_closed_after_s": round(times[0], 1) if times else None,
            "last_closed_after_s": round(times[-1], 1) if times else None,
            "healthz_meanwhile": percentiles(health),
            **log_figures(server.log()),
        }
    finally:
        server.stop()


async def bad(app: Path, session: aiohttp.ClientSession) -> dict[str, Any]:
    server = await Server(app).ready(session)
    try:
        answers = []
        for _ in range(200):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            answers.append(await asyncio.wait_for(reader.read(), 10))
            writer.close()
        head, _, body = answers[0].partition(b"\r\n\r\n")
        lines = head.decode(errors="replace").split("\r\n")
        content_type = [h for h in lines if h.lower().startswith("content-type")]
        return {
            "status": lines[0],
            "content_type": content_type[0] if content_type else None,
            "body": body[:120].decode(errors="replace"),
            **log_figures(server.log()),
        }
    finally:
        server.stop()


async def fds(app: Path, session: aiohttp.ClientSession) -> dict[str, Any]:
    server = await Server(app, nofile=1024).ready(session)
    try:
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        outcomes: dict[str, int] = {}
        socks = []
        loop = asyncio.get_running_loop()
        for n in range(1100):
            request = (
                f"GET /ws?room=r&name=c{n} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            try:
                sock = await raw_socket(server.port, request, rcvbuf=65536)
                head = await asyncio.wait_for(loop.sock_recv(sock, 4096), 2)
                status = head.split(b"\r\n", 1)[0].decode(errors="replace") or "closed"
            except (TimeoutError, OSError) as exc:
                status = type(exc).__name__
                sock = None
            outcomes[status] = outcomes.get(status, 0) + 1
            if sock is not None:
                socks.append(sock)
        peak_fds = fd_count(server.proc.pid)
        t0 = time.perf_counter()
        try:
            async with session.get(server.url + "/healthz", timeout=aiohttp.ClientTimeout(5)) as r:
                healthz: Any = r.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            healthz = type(exc).__name__
        healthz_ms = round((time.perf_counter() - t0) * 1000, 1)
        await asyncio.sleep(5)
        for sock in socks:
            sock.close()
        return {
            "nofile": 1024,
            "outcomes": outcomes,
            "server_fds_at_peak": peak_fds,
            "healthz_at_peak": healthz,
            "healthz_ms": healthz_ms,
            **log_figures(server.log()),
        }
    finally:
        server.stop()


# One flooding client, run as its own process (so this process's loop measures the server,
# not its own sending): it opens a WebSocket, sends masked empty pings as fast as the socket
# takes them while discarding what comes back, and opens a new one whenever the server closes
# it. It prints one line per connection it opened.
PING_FLOODER = r"""
import base64, os, socket, sys
port = int(sys.argv[1])
ping = bytes([0x89, 0x80, 0, 0, 0, 0]) * 2000
n = 0
while True:
    s = socket.create_connection(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /ws?room=flood&name=f{os.getpid()}-{n} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    n += 1
    print(n, flush=True)
    s.setblocking(False)
    while True:
        try:
            s.send(ping)
        except BlockingIOError:
            pass
        except OSError:
            break
        try:
            if not s.recv(1 << 16):
                break
        except BlockingIOError:
            pass
        except OSError:
            break
    s.close()
"""


async def pings(app: Path, session: aiohttp.ClientSession) -> dict[str, Any]:
    """Four sockets flooding pings (the issue's row: others' echo p50 0.9 -> 132 ms), with the
    default rate limit (10/s, burst 20)."""
    server = await Server(app).ready(session)
    flooders: list[subprocess.Popen[bytes]] = []
    counts = Path(tempfile.mkstemp(prefix="hostile-pings-")[1])
    try:
        # 5 messages a second: under the default rate, which the flooders meet.
        echo = await Echo(session, server.url, "echo", interval=0.2).start()
        await asyncio.sleep(5)
        idle = percentiles(echo.take())
        cpu_before = cpu_seconds(server.proc.pid)
        with counts.open("wb") as out:  # noqa: ASYNC230  # a local file, opened once
            flooders = [
                subprocess.Popen(  # noqa: ASYNC220  # started once
                    [*RT["generators"], sys.executable, "-c", PING_FLOODER, str(server.port)],
                    stdout=out,
                    stderr=subprocess.DEVNULL,
                )
                for _ in range(4)
            ]
        await asyncio.sleep(10)
        loaded = percentiles(echo.take())
        server_cpu = cpu_seconds(server.proc.pid) - cpu_before
        for flooder in flooders:
            flooder.kill()
            flooder.wait()
        await echo.stop()
        connections = len(counts.read_text().split())  # noqa: ASYNC240  # after the measurement
        return {
            "echo_idle": idle,
            "echo_with_4_ping_floods": loaded,
            "flood_connections_in_10s": connections,
            "server_cpu_s_in_10s": round(server_cpu, 2),
            **log_figures(server.log()),
        }
    finally:
        for flooder in flooders:
            if flooder.poll() is None:
                flooder.kill()
                flooder.wait()
        counts.unlink(missing_ok=True)  # noqa: ASYNC240  # after the measurement
        server.stop()


SCENARIOS = {
    "api": api,
    "echo": echo_under_api_load,
    "replay": replay,
    "slowloris": slowloris,
    "bad": bad,
    "fds": fds,
    "pings": pings,
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--app-dir", type=Path, default=ROOT / "app")
    parser.add_argument("--scenario", default=",".join(SCENARIOS))
    parser.add_argument("--rt", action="store_true", help="pin and use real-time priority (root)")
    args = parser.parse_args()
    if args.rt:
        real_time()
    app = args.app_dir.resolve()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for name in args.scenario.split(","):
            result = await SCENARIOS[name](app, session)
            line = {"scenario": name, "app_dir": str(app), **result}
            print(json.dumps(line), flush=True)
            print(f"{name}: {json.dumps(result)}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
