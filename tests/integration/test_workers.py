"""`webchat --workers 2`: two processes on one port (SO_REUSEPORT) behave as one instance.

Which worker holds a connection is read from the kernel (/proc/net/tcp and each worker's
/proc/<pid>/fd), so the tests know it rather than hope for it. Metrics aggregate across the
workers (prometheus-client multiprocess mode): /metrics on either worker counts every open
connection and every message. SIGTERM to the parent drains all workers (1012) and it exits
0 within 10 s, removing the metrics directory; a worker that dies is reported and replaced;
workers whose parent was killed drain and exit by themselves.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import MakeServer
from tests.support.client import ChatClient
from tests.support.redis import RedisServer
from tests.support.servers import ROOT, WebchatProcess
from tests.support.timing import poll, seconds

REDIS = pytest.mark.parametrize("broker", ["redis"], indirect=True)
FLAGS = ("--workers", "2", "--drain-delay", "0.2", "--drain-spread", "0.3")
ROOM = "w"
LISTENING = re.compile(r"listening on .* \(pid (\d+),")


# --- who holds which socket: the kernel's view -----------------------------------------------


def _tcp_table() -> list[tuple[int, int, str, str]]:
    """(local port, remote port, state, inode) of every IPv4 TCP socket in this namespace."""
    rows = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        rows.append((int(local.split(":")[1], 16), int(remote.split(":")[1], 16), state, inode))
    return rows


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            inodes.add(link[len("socket:[") : -1])
    return inodes


def exists(path: str) -> bool:
    return os.path.exists(path)  # a local file system: no need to leave the event loop


def listening_pids(port: int, pids: set[int]) -> set[int]:
    inodes = {i for lp, _, state, i in _tcp_table() if lp == port and state == "0A"}
    return {pid for pid in pids if _socket_inodes(pid) & inodes}


def holder(port: int, client_port: int, pids: set[int]) -> int | None:
    """The worker whose accepted socket is the server side of the client's connection."""
    inodes = {
        i for lp, rp, state, i in _tcp_table() if lp == port and rp == client_port and state == "01"
    }
    owners = [pid for pid in pids if _socket_inodes(pid) & inodes]
    return owners[0] if len(owners) == 1 else None


async def eventually(predicate: Callable[[], object], timeout: float, what: str) -> None:
    await poll(predicate, timeout, what)


async def worker_pids(server: WebchatProcess, count: int, timeout: float = 15) -> set[int]:
    """The pids of the workers that have logged their listening line, once there are `count`."""
    await eventually(
        lambda: len(set(LISTENING.findall(server.log()))) >= count, timeout, f"{count} workers"
    )
    return {int(p) for p in LISTENING.findall(server.log())}


async def on_worker(
    client_port: int, server: WebchatProcess, pids: set[int], timeout: float = 5
) -> int:
    found: list[int] = []

    def held() -> bool:
        pid = holder(server.port, client_port, pids)
        if pid is not None:
            found.append(pid)
        return pid is not None

    await eventually(held, timeout, f"the worker holding client port {client_port}")
    return found[-1]


async def metrics_from(server: WebchatProcess, pid: int, pids: set[int]) -> str:
    """GET /metrics answered by worker `pid`: open connections until that one accepts one."""
    for _ in range(64):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            local_port = writer.get_extra_info("sockname")[1]
            if await on_worker(local_port, server, pids) != pid:
                continue
            request = f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            writer.write(f"{request}Connection: close\r\n\r\n".encode())
            response = await asyncio.wait_for(reader.read(), seconds(5))
        finally:
            writer.close()
            await writer.wait_closed()
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        return body.decode()
    raise AssertionError(f"64 connections and none reached worker {pid}")


async def poll_text(server: WebchatProcess, pids: set[int], line: str) -> str:
    """/metrics of either worker, once it holds `line` (for gauges sampled once a second)."""
    pid = next(iter(pids))
    texts: list[str] = []

    async def has_line() -> bool:
        texts.append(await metrics_from(server, pid, pids))
        return line in texts[-1].splitlines()

    await poll(has_line, 10, line)
    return texts[-1]


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in\n{text}"
    return float(match[1])


async def clients_on_both(
    session: aiohttp.ClientSession, server: WebchatProcess, pids: set[int], least: int
) -> dict[int, list[ChatClient]]:
    """Connect clients until there are `least` and each worker holds at least one."""
    by_worker: dict[int, list[ChatClient]] = {pid: [] for pid in pids}
    for n in range(40):
        client = await asyncio.wait_for(
            ChatClient.connect(session, server.ws_url, room=ROOM, name=f"c{n}"), seconds(10)
        )
        pid = await on_worker(client.ws.get_extra_info("sockname")[1], server, pids)
        by_worker[pid].append(client)
        if n + 1 >= least and all(by_worker.values()):
            return by_worker
    raise AssertionError(f"40 connections did not reach both workers: {by_worker}")


async def talk(clients: list[ChatClient], sender: ChatClient, text: str) -> str:
    """`sender` says `text`; every client gets it (and nothing else first). Returns its id."""
    await sender.send(text)
    frames = [await c.next_of("message") for c in clients]
    assert {(f["name"], f["text"]) for f in frames} == {(sender.welcome["name"], text)}
    assert len({f["id"] for f in frames}) == 1
    return str(frames[0]["id"])


# --- the tests -------------------------------------------------------------------------------


@REDIS
async def test_workers_share_a_port_talk_aggregate_metrics_and_drain(
    make_server: MakeServer, session: aiohttp.ClientSession
):
    server = make_server(*FLAGS)
    assert server.proc is not None
    pids = await worker_pids(server, 2)
    assert len(pids) == 2 and server.proc.pid not in pids, "the parent only supervises"
    # Both workers listen on the one port (SO_REUSEPORT), the parent does not.
    assert listening_pids(server.port, pids | {server.proc.pid}) == pids
    match = re.search(r"metrics aggregated in (\S+)", server.log())
    assert match, server.log()
    metrics_dir = match[1]
    assert exists(metrics_dir)

    by_worker = await clients_on_both(session, server, pids, least=6)
    clients = [c for group in by_worker.values() for c in group]
    first, second = (group[0] for group in by_worker.values())
    # Clients of different workers talk, and everybody sees one order.
    await talk(clients, first, "from one worker")
    await talk(clients, second, "from the other")

    # Either worker answers for both: connections and messages summed over the workers.
    for pid in pids:
        text = await metrics_from(server, pid, pids)
        assert metric(text, "webchat_connected_users") == len(clients)
        assert metric(text, "webchat_messages_total") == 2
        accepted = 'webchat_connections_total{status="accepted"}'
        assert metric(text, accepted) == len(clients)
        assert metric(text, "webchat_message_latency_seconds_count") == 2
        # Each worker is an instance to the broker: both deliver both messages to their own
        # clients, one observation per message per worker, every frame counted once.
        assert metric(text, "webchat_delivery_latency_seconds_count") == 4
        assert metric(text, "webchat_fanout_recipients_count") == 4
        assert metric(text, "webchat_fanout_recipients_sum") == 2 * len(clients)
        assert metric(text, "webchat_deliveries_total") == 2 * len(clients)
        # Gauges combined per their mode: one build, ready only if every worker is.
        assert len(re.findall(r"^webchat_build_info\{", text, re.MULTILINE)) == 1, text
        assert metric(text, "webchat_broker_ready") == 1
    # Sampled once a second: the room has members on both workers, counted by each.
    text = await poll_text(server, pids, "webchat_rooms_active 2.0")
    assert metric(text, "webchat_event_loop_lag_seconds") < 1

    signalled = time.monotonic()
    server.signal(signal.SIGTERM)
    codes = await asyncio.gather(*(c.closed(timeout=10) for c in clients))
    assert set(codes) == {1012}
    status = await asyncio.to_thread(server.wait, seconds(10))
    assert status == 0, server.log()
    assert time.monotonic() - signalled < seconds(10)
    assert not exists(metrics_dir), "the parent removes the metrics directory"
    for pid in pids:  # the parent reaped its workers before exiting
        assert not exists(f"/proc/{pid}"), pid
    for client in clients:
        await client.close()


@REDIS
async def test_a_dead_worker_is_reported_replaced_and_uncounted(
    make_server: MakeServer, session: aiohttp.ClientSession
):
    server = make_server(*FLAGS)
    pids = await worker_pids(server, 2)
    by_worker = await clients_on_both(session, server, pids, least=4)
    victim, survivor = sorted(pids, key=lambda pid: len(by_worker[pid]))
    survivors = by_worker[survivor]
    doomed = by_worker[victim]

    os.kill(victim, signal.SIGKILL)
    # Its clients lose their connection (no close frame: the process is gone).
    for client in doomed:
        assert await client.closed(timeout=5) == aiohttp.WSCloseCode.ABNORMAL_CLOSURE
    report = f"worker {victim} died (killed by SIGKILL); starting a replacement"
    await eventually(lambda: report in server.log(), 10, "the crash report")
    pids_now = await worker_pids(server, 3)
    (replacement,) = pids_now - pids
    live = {survivor, replacement}

    # The dead worker's connections no longer count; the survivor's do.
    text = await metrics_from(server, survivor, live)
    assert metric(text, "webchat_connected_users") == len(survivors)

    # The replacement serves: a client on it talks with the survivor's clients.
    newcomers = await clients_on_both(session, server, live, least=1)
    fresh = newcomers[replacement][0]
    everyone = survivors + [c for group in newcomers.values() for c in group]
    await talk(everyone, fresh, "from the replacement")
    await talk(everyone, survivors[0], "from the survivor")
    text = await metrics_from(server, replacement, live)
    assert metric(text, "webchat_connected_users") == len(everyone)

    server.signal(signal.SIGTERM)
    codes = await asyncio.gather(*(c.closed(timeout=10) for c in everyone))
    assert set(codes) == {1012}
    assert await asyncio.to_thread(server.wait, seconds(10)) == 0, server.log()
    for client in everyone + doomed:
        await client.close()


def dead(pid: int) -> bool:
    """Gone, or a zombie waiting for whoever adopted it (PID 1 of a container may not reap)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return bool(re.search(r"^State:\s+Z", status, re.MULTILINE))


@REDIS
async def test_workers_of_a_killed_parent_drain_and_exit(
    make_server: MakeServer, session: aiohttp.ClientSession
):
    server = make_server(*FLAGS)
    assert server.proc is not None
    pids = await worker_pids(server, 2)
    match = re.search(r"metrics aggregated in (\S+)", server.log())
    assert match, server.log()
    by_worker = await clients_on_both(session, server, pids, least=2)
    clients = [c for group in by_worker.values() for c in group]

    os.kill(server.proc.pid, signal.SIGKILL)  # the parent only: its workers are orphaned
    assert await asyncio.to_thread(server.wait, seconds(5)) == -signal.SIGKILL
    # Each worker notices within a second, then drains as on SIGTERM.
    codes = await asyncio.gather(*(c.closed(timeout=12) for c in clients))
    assert set(codes) == {1012}
    await eventually(lambda: all(dead(pid) for pid in pids), 12, "the orphaned workers' exit")
    assert "the supervising process" in server.log()
    shutil.rmtree(match[1], ignore_errors=True)  # only the parent would have removed it
    for client in clients:
        await client.close()


async def test_workers_that_cannot_start_make_the_parent_give_up(redis_server: RedisServer):
    """A port held by someone else: workers die at once, are retried, then the parent exits 1."""
    with socket.socket() as holder_socket:
        holder_socket.bind(("127.0.0.1", 0))
        holder_socket.listen()
        port = holder_socket.getsockname()[1]
        url = redis_server.url
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "webchat", "--port", str(port), *FLAGS, "--redis-url", url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=seconds(30),
            check=False,
        )
    assert result.returncode == 1, result.stderr
    assert "starting a replacement" in result.stderr
    assert "worker deaths in 60 s; stopping all workers" in result.stderr
    match = re.search(r"metrics aggregated in (\S+)", result.stderr)
    assert match and not exists(match[1])
