#!/usr/bin/env python3
"""Soak: thousands of connections with steady traffic for many minutes; is the server flat?

    python loadtest/soak.py --url 'ws://127.0.0.1:8091/ws' --clients 10000 --rooms 100 \
        --rate 100 --churn 10 --duration 600 --warmup 120 --server-pid PID \
        --redis-port 6391 --out /tmp/soak.jsonl

N clients in R rooms on one instance; one publisher per room sends `--rate` messages/s in all
(texts carry `SK:<run>:<room>:<seq>:<t_us>:`), and every second `--churn` clients drop their
connection and come back with `since` (the connection lifecycle is where leaks live). Every
`--sample` seconds it records the server's RSS, file descriptors and threads (Linux tasks,
/proc/PID/task), `webchat_connected_users` and the send buffers from /metrics, Redis's memory,
and the deliveries, their latency and any loss in the interval. After `--warmup` each series
must stay within `--flat` % (max over min) to pass. Every client checks its room's sequence:
each message once, in order, none missing, across its reconnects. A seq a client skipped is
`lost` only if the server accepted it (its publisher got it back); sends the server refused (an
`unavailable` error while Redis was unreachable, say) are counted as `refused`, not lost.

One JSON line per sample and a final summary line on stdout (and `--out FILE`); a table on
stderr. Loopback only, bounded; standard library (uvloop when importable); inert for Locust.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from _bench import bounded, percentile, pick_loop, redis_info, write_line
from _procstat import CpuMeter, proc_rss_kb
from _wsclient import ERROR_PREFIX, Target, WsClient, now_us, open_one, ws_path

MARK = b"SK:"
MESSAGE_PREFIX = b'{"type":"message","id":"'
MAX_CLIENTS = 30_000
MAX_SECONDS = 7200.0


class Track:
    """One logical client across its connections: its room's sequence as it saw it."""

    __slots__ = ("dups", "index", "last_id", "last_seq", "missing", "received", "room", "skips")

    def __init__(self, index: int, room: int) -> None:
        self.index = index
        self.room = room
        self.last_id: str | None = None
        self.last_seq = -1
        self.received = 0
        self.missing = 0  # seqs skipped, accepted or not (`lost` counts the accepted ones)
        self.skips: list[tuple[int, int]] = []  # the skipped seqs, as ranges [start, end)
        self.dups = 0


class Shared:
    def __init__(self, run: int) -> None:
        self.run = run
        self.latencies = array("q")  # this interval's, microseconds
        self.errors: Counter[str] = Counter()
        self.first_seq: dict[int, int] = {}  # room -> first seq the publisher sent


class SoakClient(WsClient):
    def __init__(self, host: str, path: str, track: Track, shared: Shared) -> None:
        super().__init__(host, path)
        self.track = track
        self.shared = shared
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_text(self, data: bytes, start: int, end: int, now: int) -> None:
        if not data.startswith(MESSAGE_PREFIX, start):
            if data.startswith(ERROR_PREFIX, start):
                self.shared.errors[bytes(data[start : min(end, start + 60)]).decode()] += 1
            return
        track = self.track
        id_start = start + len(MESSAGE_PREFIX)
        id_end = data.find(b'"', id_start, end)
        i = data.find(MARK, id_end, end)
        if i < 0:
            return
        parts = data[i + 3 : i + 80].split(b":", 4)
        if int(parts[0]) != self.shared.run:
            return
        seq = int(parts[2])
        track.last_id = data[id_start:id_end].decode()
        if track.last_seq >= 0 and seq <= track.last_seq:
            track.dups += 1
            return
        if track.last_seq >= 0 and seq > track.last_seq + 1:
            track.missing += seq - track.last_seq - 1
            track.skips.append((track.last_seq + 1, seq))
        track.last_seq = seq
        track.received += 1
        self.shared.latencies.append(now - int(parts[3]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.gone.done():
            self.gone.set_result(None)
        super().connection_lost(exc)


class Publisher(WsClient):
    """Sends its room's seqs in order; notes which came back (accepted) and the errors."""

    def __init__(self, host: str, path: str, run: int, room: int) -> None:
        super().__init__(host, path)
        self.run_id = run
        self.room = room
        self.seq = 0
        self.accepted: set[int] = set()
        self.errors: Counter[str] = Counter()

    def on_text(self, data: bytes, start: int, end: int, now: int) -> None:
        if data.startswith(ERROR_PREFIX, start):
            self.errors[bytes(data[start : min(end, start + 60)]).decode()] += 1
            return
        i = data.find(MARK, start, end)
        if i >= 0 and data.startswith(MESSAGE_PREFIX, start):
            parts = data[i + 3 : i + 80].split(b":", 4)
            if int(parts[0]) == self.run_id:
                self.accepted.add(int(parts[2]))

    def publish(self) -> None:
        text = f"SK:{self.run_id}:{self.room}:{self.seq}:{now_us()}:"
        if self.send_text(b'{"type":"message","text":"%s"}' % text.encode()):
            self.seq += 1


# --- readings -------------------------------------------------------------------------------


def lost(tracks: Sequence[Track], publishers: Sequence[Publisher]) -> int:
    """Seqs clients skipped that the server had accepted: messages really lost."""
    return sum(
        sum(1 for seq in range(a, b) if seq in publishers[t.room].accepted)
        for t in tracks
        for a, b in t.skips
    )


def proc_counts(pid: int) -> dict[str, int | None]:
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return {"fds": None, "threads": None, "rss_kb": None}
    return {"fds": fds, "threads": threads, "rss_kb": proc_rss_kb(pid)}


async def metrics(target: Target) -> dict[str, float]:
    """A few gauges from /metrics (plain HTTP on the same port)."""
    wanted = ("webchat_connected_users", "webchat_send_buffer_bytes", "webchat_rooms_active")
    out: dict[str, float] = {}
    try:
        reader, writer = await asyncio.open_connection(target.ip, target.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(5):
            text = (await reader.read()).decode()
        writer.close()
    except (OSError, TimeoutError):
        return out
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[name] = float(value)
    return out


def redis_memory(port: int | None) -> int | None:
    used = redis_info(port, "memory").get("used_memory")
    return int(used) if used else None


def spread(series: list[float | int | None]) -> float | None:
    """(max - min) / min, in %."""
    values = [v for v in series if v is not None]
    if not values or min(values) <= 0:
        return None
    return round((max(values) - min(values)) / min(values) * 100, 2)


# --- the run --------------------------------------------------------------------------------


async def soak(args: argparse.Namespace, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    target = Target(args.url)
    shared = Shared(int(time.time()) % 1_000_000)
    rooms = [f"soak{r}" for r in range(args.rooms)]
    publishers = [
        Publisher(target.host_header, ws_path(target, room, f"pub{r}"), shared.run, r)
        for r, room in enumerate(rooms)
    ]
    for pub in publishers:
        if await open_one(target, pub, args.connect_timeout) is not None:
            raise SystemExit("soak: a publisher could not connect")
    tracks = [Track(i, i % args.rooms) for i in range(args.clients)]
    clients: dict[int, SoakClient] = {}
    slots = asyncio.Semaphore(args.concurrency)
    reconnects = failures = 0
    stop = asyncio.Event()

    async def keep(track: Track) -> None:
        """Keep the client connected; a dropped connection comes back with since."""
        nonlocal reconnects, failures
        attempt = 0
        while not stop.is_set():
            client = SoakClient(
                target.host_header,
                ws_path(target, rooms[track.room], f"c{track.index}", track.last_id),
                track,
                shared,
            )
            async with slots:
                why = await open_one(target, client, args.connect_timeout)
            if why is not None:
                failures += 1
                await asyncio.sleep(random.uniform(0, min(5.0, 0.2 * 2**attempt)))
                attempt += 1
                continue
            attempt = 0
            clients[track.index] = client
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({client.gone, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if stop.is_set():
                client.abort()
                return
            reconnects += 1

    t_start = time.monotonic()
    keepers = [asyncio.create_task(keep(track)) for track in tracks]
    # Polled: connecting clients signal nothing (an Event per client would cost more).
    while len(clients) < args.clients and time.monotonic() - t_start < args.connect_timeout * 4:  # noqa: ASYNC110
        await asyncio.sleep(0.2)
    connect_s = time.monotonic() - t_start
    print(f"{len(clients)} clients connected in {connect_s:.1f} s", file=sys.stderr)

    loop = asyncio.get_running_loop()

    async def publish() -> None:
        t0, sent = loop.time(), 0
        while not stop.is_set():
            await asyncio.sleep(0.01)
            due = int((loop.time() - t0) * args.rate) - sent
            for _ in range(due):
                publishers[sent % len(publishers)].publish()
                sent += 1

    async def churn() -> None:
        while not stop.is_set():
            await asyncio.sleep(1.0)
            for index in random.sample(range(args.clients), min(args.churn, args.clients)):
                client = clients.get(index)
                if client is not None and client.is_open:
                    client.abort()  # the keeper reconnects it with since

    tasks = [asyncio.create_task(publish())]
    if args.churn:
        tasks.append(asyncio.create_task(churn()))
    pid = args.server_pid
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()
    received0 = 0
    meter = CpuMeter([pid] if pid else [], args.redis_pid)
    while time.monotonic() - t0 < args.duration:
        await asyncio.sleep(args.sample)
        cpu = meter.stop()
        meter = CpuMeter([pid] if pid else [], args.redis_pid)
        received = sum(t.received for t in tracks)
        latencies, shared.latencies = sorted(shared.latencies), array("q")
        sample = {
            "t_s": round(time.monotonic() - t0, 1),
            **(proc_counts(pid) if pid else {}),
            **(await metrics(target)),
            "redis_used_memory": redis_memory(args.redis_port),
            "deliveries_per_s": round((received - received0) / args.sample),
            "p50_ms": percentile(latencies, 0.5, digits=1),
            "p99_ms": percentile(latencies, 0.99, digits=1),
            "missing": sum(t.missing for t in tracks),
            "lost": lost(tracks, publishers),
            "dups": sum(t.dups for t in tracks),
            "reconnects": reconnects,
            "connect_failures": failures,
            "open": sum(1 for c in clients.values() if c.is_open),
            "server_cpu_pct": cpu["server_cpu_pct"],
            "redis_cpu_pct": cpu["redis_cpu_pct"],
            "generator_cpu_pct": cpu["generator_cpu_pct"],
            "core_busy_pct": cpu["core_busy_pct"],
            "loadavg": cpu["loadavg"],
        }
        received0 = received
        samples.append(sample)
        emit({"sample": sample})
        print(
            f"{sample['t_s']:>6}s rss {sample.get('rss_kb')} KiB fds {sample.get('fds')} "
            f"threads {sample.get('threads')} users {sample.get('webchat_connected_users')} "
            f"{sample['deliveries_per_s']}/s p99 {sample['p99_ms']} ms missing "
            f"{sample['missing']} (lost {sample['lost']}) dups {sample['dups']} "
            f"reconnects {reconnects} "
            f"load {sample['loadavg'][0]}",
            file=sys.stderr,
        )
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*keepers, *tasks, return_exceptions=True)
    for pub in publishers:
        pub.abort()
    after = [s for s in samples if s["t_s"] > args.warmup]
    flat = {
        key: spread([s.get(key) for s in after])
        for key in ("rss_kb", "fds", "threads", "redis_used_memory", "webchat_connected_users")
    }
    checked = ("rss_kb", "fds", "threads")
    return {
        "clients": args.clients,
        "rooms": args.rooms,
        "rate": args.rate,
        "churn_per_s": args.churn,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "connect_s": round(connect_s, 1),
        "samples_after_warmup": len(after),
        "spread_pct_after_warmup": flat,
        "flat": all(flat[k] is not None and flat[k] <= args.flat for k in checked),
        "missing": sum(t.missing for t in tracks),
        "lost": lost(tracks, publishers),
        "sent": sum(p.seq for p in publishers),
        "refused": sum(p.seq - len(p.accepted) for p in publishers),
        "publisher_errors": dict(sum((p.errors for p in publishers), Counter())),
        "dups": sum(t.dups for t in tracks),
        "received": sum(t.received for t in tracks),
        "reconnects": reconnects,
        "connect_failures": failures,
        "errors": dict(shared.errors),
        "p99_ms_max": max((s["p99_ms"] or 0 for s in after), default=None),
        "first": samples[0] if samples else None,
        "last": samples[-1] if samples else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="soak.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="ws://127.0.0.1:8091/ws")
    ap.add_argument("--clients", type=bounded(int, 1, MAX_CLIENTS), default=10_000)
    ap.add_argument("--rooms", type=bounded(int, 1, 5000), default=100)
    ap.add_argument("--rate", type=bounded(float, 0.1, 5000), default=100.0, help="msg/s, all")
    ap.add_argument("--churn", type=bounded(int, 0, 1000), default=10, help="reconnects/s")
    ap.add_argument("--duration", type=bounded(float, 10, MAX_SECONDS), default=600.0)
    ap.add_argument("--warmup", type=bounded(float, 0, MAX_SECONDS), default=120.0)
    ap.add_argument("--sample", type=bounded(float, 1, 600), default=10.0)
    ap.add_argument("--flat", type=float, default=5.0, help="allowed spread after warm-up, %%")
    ap.add_argument("--concurrency", type=bounded(int, 1, 5000), default=200)
    ap.add_argument("--connect-timeout", type=bounded(float, 1, 120), default=30.0)
    ap.add_argument("--server-pid", type=int)
    ap.add_argument("--redis-pid", type=int)
    ap.add_argument("--redis-port", type=int)
    ap.add_argument("--out")
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)

    def emit(line: dict[str, Any]) -> None:
        write_line({"tool": "loadtest/soak.py", "label": args.label, **line}, args.out)

    factory, _ = pick_loop("auto", "soak")
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(soak(args, emit))
    emit({"summary": result, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    print(
        f"flat (spread after warm-up, %): {result['spread_pct_after_warmup']} -> "
        f"{'PASS' if result['flat'] else 'FAIL'}; missing {result['missing']} (lost "
        f"{result['lost']}, refused sends {result['refused']}) dups "
        f"{result['dups']} reconnects {result['reconnects']}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
