#!/usr/bin/env python3
"""Join and reconnect storms: thousands of clients arriving at once, as after a lost instance.

    python loadtest/storms.py join --url 'ws://127.0.0.1:8091/ws' --clients 10000 \
        --server-pid PID [--redis-port 6391 --redis-pid RPID]
    python loadtest/storms.py reconnect --url 'ws://127.0.0.1:8091/ws' \
        --resume-url 'ws://127.0.0.1:8092/ws' --clients 10000 --rooms 100 --rate 100 \
        --server-pid A,B [--redis-port 6391 --redis-pid RPID]
    python loadtest/storms.py report /tmp/webchat-storms/storms.jsonl     # Markdown tables

join       N clients open a WebSocket to one instance (`--rooms R` rooms, default 1), at most
           `--concurrency` handshakes in flight. Reports the connect rate, when the last client
           got its welcome, the server's CPU per join (from the first connect to the last
           welcome), Redis's commands meanwhile (`INFO commandstats`), the presence frames the
           clients received, then one broadcast sent `--broadcast-after` s after the last
           connect and how long until every client has it, and a probe client's welcome
           (member_count and members must count everyone).
reconnect  N clients in R rooms on instance A (`--url`) while one publisher per room on
           instance B (`--resume-url`) sends `--rate` messages/s in all. After `--warmup` s
           every client drops at once (`--drop abort`: the clients reset their sockets;
           `--drop kill`: SIGKILL to the first `--server-pid`, the instance dies) and resumes
           on B with `since` = the last id it saw, while the messages keep flowing. Reports
           when every client had its welcome again, whether every client has every message of
           its room exactly once and in order, and the delivery latency of the messages sent
           during the storm: to clients that were connecting or connected when each was sent
           (`live`), and over every copy, replays included (`all`).

Texts carry `ST:<run>:<room>:<seq>:<t_us>:` (CLOCK_MONOTONIC microseconds, one host), one
publisher per room sends seq 0, 1, 2... in order, so a client's sequence of seqs must be
0..sent-1 of its room. One JSON line on stdout (and `--out FILE`), a summary on stderr.
Loopback only, counts and durations bounded; standard library (uvloop used when importable).
Like every file here it is inert when Locust loads the folder: it defines no User.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from _bench import bounded, latency_summary, pick_loop, pid_list, redis_info, write_line
from _procstat import CpuMeter, proc_rss_kb
from _wsclient import ERROR_PREFIX, WELCOME_PREFIX, Target, WsClient, now_us, open_one, ws_path

MARK = b"ST:"
MESSAGE_PREFIX = b'{"type":"message","id":"'
PRESENCE_PREFIX = b'{"type":"presence"'
GAP_PREFIX = b'{"type":"gap"'
MAX_CLIENTS = 30_000
MAX_ROOMS = 5_000
MAX_RATE = 5_000.0
MAX_SECONDS = 600.0


# --- measuring ------------------------------------------------------------------------------


def storm_latency(latencies_us: Sequence[int]) -> dict[str, Any]:
    """samples, p50, p99 and max, to 0.1 ms: the columns of the storm tables."""
    return latency_summary(latencies_us, (0.50, 0.99), digits=1, mean=False)


class Book:
    """What one logical client saw, over all its connections (a reconnect continues it)."""

    __slots__ = (
        "attempts",
        "closes",
        "connect_us",
        "errors",
        "gaps",
        "index",
        "last_id",
        "presence",
        "refusals",
        "room",
        "seqs",
        "welcomes",
    )

    def __init__(self, index: int, room: int) -> None:
        self.index = index
        self.room = room
        self.attempts = 0  # connection attempts after the first
        self.refusals: Counter[str] = Counter()  # failed attempts by why
        self.seqs = array("i")  # seqs of its room's messages, in the order received
        self.last_id: str | None = None
        self.welcomes: list[tuple[int, dict[str, Any]]] = []  # (t_us, welcome)
        self.connect_us = 0  # when the current connection attempt started
        self.presence = 0
        self.gaps = 0
        self.errors: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()


class Run:
    """Shared state: the run id, latency samples (t_sent_us, latency_us, live) per receipt."""

    def __init__(self, run: int) -> None:
        self.run = run
        self.sent_us = array("q")
        self.latency_us = array("q")
        self.live = bytearray()
        self.received = 0
        self.broadcast_seq = -1
        self.broadcast_got: list[int] = []  # latencies of the broadcast, us


class StormClient(WsClient):
    """One connection of a Book: records messages (seq, id, latency), welcome, presence."""

    def __init__(self, host: str, path: str, book: Book, run: Run) -> None:
        super().__init__(host, path)
        self.book = book
        self.run = run
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_text(self, data: bytes, start: int, end: int, now: int) -> None:
        book = self.book
        if data.startswith(MESSAGE_PREFIX, start):
            id_start = start + len(MESSAGE_PREFIX)
            id_end = data.find(b'"', id_start, end)
            book.last_id = data[id_start:id_end].decode()
            i = data.find(MARK, id_end, end)
            if i < 0:
                return
            parts = data[i + 3 : i + 80].split(b":", 4)
            run = self.run
            if int(parts[0]) != run.run:
                return
            seq = int(parts[2])
            sent = int(parts[3])
            if seq == run.broadcast_seq and int(parts[1]) == -1:
                run.broadcast_got.append(now - sent)
                return
            book.seqs.append(seq)
            run.sent_us.append(sent)
            run.latency_us.append(now - sent)
            run.live.append(sent >= book.connect_us)
            run.received += 1
        elif data.startswith(PRESENCE_PREFIX, start):
            book.presence += 1
        elif data.startswith(WELCOME_PREFIX, start):
            book.welcomes.append((now, json.loads(data[start:end])))
        elif data.startswith(GAP_PREFIX, start):
            book.gaps += 1
        elif data.startswith(ERROR_PREFIX, start):
            try:
                book.errors[str(json.loads(data[start:end]).get("code", "?"))] += 1
            except ValueError:
                book.errors["unparsable"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_code is not None:
            self.book.closes[self.close_code] += 1
        if not self.gone.done():
            self.gone.set_result(None)
        super().connection_lost(exc)


class Publisher(WsClient):
    """Sends its room's numbered messages; notes which came back to it (accepted) and the
    error frames that answered the others (refused)."""

    def __init__(self, host: str, path: str, run: int, room: int) -> None:
        super().__init__(host, path)
        self.run_id = run
        self.room = room
        self.seq = 0
        self.accepted: set[int] = set()
        self.refused: Counter[str] = Counter()

    def on_text(self, data: bytes, start: int, end: int, now: int) -> None:
        if data.startswith(ERROR_PREFIX, start):
            self.refused[str(json.loads(data[start:end]).get("code"))] += 1
            return
        i = data.find(MARK, start, end) if data.startswith(MESSAGE_PREFIX, start) else -1
        if i >= 0:
            parts = data[i + 3 : i + 80].split(b":", 4)
            if int(parts[0]) == self.run_id and int(parts[1]) == self.room:
                self.accepted.add(int(parts[2]))

    def publish(self) -> bool:
        text = f"ST:{self.run_id}:{self.room}:{self.seq}:{now_us()}:"
        if self.send_text(b'{"type":"message","text":"%s"}' % text.encode()):
            self.seq += 1
            return True
        return False

    def broadcast(self, seq: int) -> bool:
        text = f"ST:{self.run_id}:-1:{seq}:{now_us()}:"
        return self.send_text(b'{"type":"message","text":"%s"}' % text.encode())


async def open_books(
    target: Target,
    books: Sequence[Book],
    path_of: Callable[[Book], str],
    run: Run,
    concurrency: int,
    timeout: float,
) -> tuple[list[StormClient], Counter[str], int, int]:
    """Open one connection per book, `concurrency` at a time.

    Returns the clients, the failures by reason, and when the first attempt started and the
    last upgrade completed (t_us).
    """
    clients: list[StormClient] = []
    failures: Counter[str] = Counter()
    queue = list(reversed(books))
    first = now_us()
    last = first

    async def worker() -> None:
        nonlocal last
        while queue:
            book = queue.pop()
            book.connect_us = now_us()
            client = StormClient(target.host_header, path_of(book), book, run)
            why = await open_one(target, client, timeout)
            if why is None:
                clients.append(client)
                last = now_us()
            else:
                failures[why] += 1

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(books)))))
    return clients, failures, first, last


async def keep_connected(
    target: Target,
    book: Book,
    path_of: Callable[[Book], str],
    run: Run,
    slots: asyncio.Semaphore,
    timeout: float,
    stop: asyncio.Event,
) -> None:
    """Keep one connection of `book` open until `stop`, as a client does: a refused attempt
    or a connection the server closes is retried after a full-jitter backoff (0.1 s doubling
    to 2 s), with `since` = the last id seen (`path_of` is asked again each time)."""
    attempt = 0
    while not stop.is_set():
        async with slots:  # handshakes in flight, the generator's limit
            book.connect_us = now_us()
            client = StormClient(target.host_header, path_of(book), book, run)
            why = await open_one(target, client, timeout)
        if why is None:
            attempt = 0
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({client.gone, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if stop.is_set():
                client.abort()
                return
            why = f"closed {client.close_code}"
        book.refusals[why] += 1
        book.attempts += 1
        await asyncio.sleep(random.uniform(0, min(2.0, 0.1 * 2**attempt)))
        attempt += 1


async def wait_for(check: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
    """Poll `check` (cheap) until true or `timeout` s; the hot paths stay free of signalling."""
    deadline = time.monotonic() + timeout
    while not check():  # polled: an Event per receipt would cost more
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


# --- Redis readings (plain RESP over a socket: standard library only) -----------------------


def commandstats(port: int | None) -> dict[str, tuple[int, int]]:
    """Per command: (calls, usec)."""
    stats = {}
    for key, value in redis_info(port, "commandstats").items():
        if key.startswith("cmdstat_"):
            fields = dict(item.split("=", 1) for item in value.split(","))
            stats[key[8:]] = (int(fields["calls"]), int(fields["usec"]))
    return stats


def commandstats_delta(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> dict[str, Any]:
    delta = {}
    for name, (calls, usec) in after.items():
        calls0, usec0 = before.get(name, (0, 0))
        if calls > calls0:
            delta[name] = {"calls": calls - calls0, "usec": usec - usec0}
    ordered = dict(sorted(delta.items(), key=lambda kv: -kv[1]["usec"]))
    return {
        "commands": ordered,
        "calls": sum(d["calls"] for d in delta.values()),
        "usec": sum(d["usec"] for d in delta.values()),
    }


# --- join storm -----------------------------------------------------------------------------


async def mode_join(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    run = Run(int(time.time()) % 1_000_000)
    rooms = [f"{args.room_prefix}{r}" for r in range(args.rooms)]
    publisher = Publisher(target.host_header, ws_path(target, rooms[0], "publisher"), run.run, -1)
    if why := await open_one(target, publisher, args.connect_timeout):
        raise SystemExit(f"storms: the publisher could not connect: {why}")
    books = [Book(i, i % args.rooms) for i in range(args.clients)]
    pid = args.server_pid[0] if args.server_pid else None
    rss0 = proc_rss_kb(pid) if pid else None
    stats0 = commandstats(args.redis_port)
    meter = CpuMeter(args.server_pid, args.redis_pid)
    clients, failures, t_first, t_last = await open_books(
        target,
        books,
        lambda b: ws_path(target, rooms[b.room], f"c{b.index}"),
        run,
        args.concurrency,
        args.connect_timeout,
    )
    welcomed = await wait_for(
        lambda: all(b.welcomes or b.closes for b in books), args.welcome_timeout
    )
    t_welcomed = max((b.welcomes[0][0] for b in books if b.welcomes), default=t_last)
    cpu = meter.stop()
    stats = commandstats_delta(stats0, commandstats(args.redis_port))
    rss1 = proc_rss_kb(pid) if pid else None
    joined = sum(1 for b in books if b.welcomes)
    print(
        f"{len(clients)}/{args.clients} connected in {(t_last - t_first) / 1e6:.2f} s "
        f"{dict(failures) or ''}; last welcome after {(t_welcomed - t_first) / 1e6:.2f} s; "
        f"server CPU {cpu['server_cpu_s']} s",
        file=sys.stderr,
    )
    # The broadcast, `--broadcast-after` s after the last connect.
    delay = args.broadcast_after - (now_us() - t_last) / 1e6
    if delay > 0:
        await asyncio.sleep(delay)
    run.broadcast_seq = 0
    sent_after = (now_us() - t_last) / 1e6
    publisher.broadcast(0)
    open_clients = sum(1 for c in clients if c.is_open)
    await wait_for(lambda: len(run.broadcast_got) >= open_clients, args.broadcast_timeout)
    got = sorted(run.broadcast_got)
    print(
        f"broadcast {sent_after:.2f} s after the last connect: {len(got)}/{open_clients}, "
        f"last after {got[-1] / 1000 if got else None} ms",
        file=sys.stderr,
    )
    # A probe's welcome must count everyone (the publisher, every client, itself).
    probe_book = Book(-1, 0)
    probe = StormClient(target.host_header, ws_path(target, rooms[0], "probe"), probe_book, run)
    probe_error = await open_one(target, probe, args.connect_timeout)
    await wait_for(lambda: bool(probe_book.welcomes), 10)
    probe_welcome = probe_book.welcomes[0][1] if probe_book.welcomes else None
    expected_count = sum(1 for b in books if b.room == 0 and b.welcomes) + 2
    for client in [*clients, publisher, probe]:
        client.abort()
    welcome_members = Counter(len(b.welcomes[0][1]["members"]) for b in books if b.welcomes)
    welcome_wrong = sum(
        1
        for b in books
        if b.welcomes
        and (
            b.welcomes[0][1]["name"] != f"c{b.index}"
            or b.welcomes[0][1]["members"][:1] != [f"c{b.index}"]
            or len(b.welcomes[0][1]["members"]) > args.presence_limit
            or b.welcomes[0][1]["member_count"] < len(b.welcomes[0][1]["members"])
        )
    )
    server_s = cpu["server_cpu_s"]
    return {
        "clients": args.clients,
        "rooms": args.rooms,
        "concurrency": args.concurrency,
        "connected": len(clients),
        "failures": dict(failures),
        "welcomed": joined,
        "all_welcomed": welcomed,
        "connect_s": round((t_last - t_first) / 1e6, 3),
        "connects_per_s": round(len(clients) / max((t_last - t_first) / 1e6, 1e-9)),
        "last_welcome_s": round((t_welcomed - t_first) / 1e6, 3),
        "server_cpu_us_per_join": round(server_s * 1e6 / max(joined, 1)) if server_s else None,
        "redis": stats,
        "redis_us_per_join": round(stats["usec"] / max(joined, 1), 1) if stats else None,
        "presence_frames": sum(b.presence for b in books),
        "welcome_members_sizes": dict(sorted(welcome_members.items())[-3:]),
        "welcome_wrong": welcome_wrong,
        "errors": dict(sum((b.errors for b in books), Counter())),
        "rss_kb_before": rss0,
        "rss_kb_after": rss1,
        "broadcast": {
            "sent_after_last_connect_s": round(sent_after, 3),
            "expected": open_clients,
            "received": len(got),
            "all_in_ms": round(got[-1] / 1000, 1) if got else None,
            **storm_latency(got),
        },
        "probe": {
            "error": probe_error,
            "member_count": probe_welcome and probe_welcome["member_count"],
            "expected_count": expected_count,
            "members": probe_welcome and len(probe_welcome["members"]),
        },
        **cpu,
    }


# --- reconnect storm ------------------------------------------------------------------------


def check_order(books: Sequence[Book], accepted: Sequence[list[int]]) -> dict[str, Any]:
    """Every client must hold the accepted messages of its room, each once, in order."""
    exact = missing = dups = reordered = 0
    bad: list[dict[str, Any]] = []
    for book in books:
        seqs = book.seqs
        want = accepted[book.room]
        if list(seqs) == want:
            exact += 1
            continue
        seen = Counter(seqs)
        book_missing = sum(1 for s in want if s not in seen)
        book_dups = sum(c - 1 for c in seen.values() if c > 1)
        book_reordered = sum(1 for a, b in itertools.pairwise(seqs) if b < a)
        missing += book_missing
        dups += book_dups
        reordered += book_reordered
        if len(bad) < 5:
            bad.append(
                {
                    "client": book.index,
                    "room": book.room,
                    "got": len(seqs),
                    "want": len(want),
                    "missing": book_missing,
                    "dups": book_dups,
                    "reordered": book_reordered,
                    "gaps": book.gaps,
                    "closes": dict(book.closes),
                }
            )
    return {
        "clients_exact": exact,
        "clients_wrong": len(books) - exact,
        "missing": missing,
        "dups": dups,
        "reordered": reordered,
        "examples": bad,
    }


async def mode_reconnect(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    resume = Target(args.resume_url)
    run = Run(int(time.time()) % 1_000_000)
    rooms = [f"{args.room_prefix}{r}" for r in range(args.rooms)]
    loop = asyncio.get_running_loop()
    # Publishers on B: the messages keep flowing whatever happens to A.
    publishers = [
        Publisher(resume.host_header, ws_path(resume, room, f"pub{r}"), run.run, r)
        for r, room in enumerate(rooms)
    ]
    for pub in publishers:
        if why := await open_one(resume, pub, args.connect_timeout):
            raise SystemExit(f"storms: a publisher could not connect: {why}")
    books = [Book(i, i % args.rooms) for i in range(args.clients)]
    clients, failures, t_first, t_last = await open_books(
        target,
        books,
        lambda b: ws_path(target, rooms[b.room], f"c{b.index}"),
        run,
        args.concurrency,
        args.connect_timeout,
    )
    if failures:
        raise SystemExit(f"storms: {sum(failures.values())} clients failed on A: {failures}")
    await wait_for(lambda: all(b.welcomes for b in books), args.welcome_timeout)
    print(f"{len(clients)} clients on A in {(t_last - t_first) / 1e6:.2f} s", file=sys.stderr)

    sending = True

    async def publish() -> None:
        t0 = loop.time()
        sent = 0
        while sending:
            await asyncio.sleep(args.tick)
            due = int((loop.time() - t0) * args.rate) - sent
            for _ in range(due):
                publishers[sent % len(publishers)].publish()
                sent += 1

    sender = asyncio.create_task(publish())
    await asyncio.sleep(args.warmup)

    # The storm: every client drops at once and resumes on B with since.
    stats0 = commandstats(args.redis_port)
    meter = CpuMeter(args.server_pid, args.redis_pid)  # a killed A reads as None
    t_drop = now_us()
    if args.drop == "kill":
        os.kill(args.server_pid[0], signal.SIGKILL)
    for client in clients:
        client.abort()
    no_since = sum(1 for b in books if b.last_id is None)
    welcomes_before = {b.index: len(b.welcomes) for b in books}
    stop = asyncio.Event()
    slots = asyncio.Semaphore(args.concurrency)
    keepers = [
        asyncio.create_task(
            keep_connected(
                resume,
                book,
                lambda b: ws_path(resume, rooms[b.room], f"c{b.index}", b.last_id),
                run,
                slots,
                args.connect_timeout,
                stop,
            )
        )
        for book in books
    ]
    all_resumed = await wait_for(
        lambda: all(len(b.welcomes) > welcomes_before[b.index] for b in books),
        args.welcome_timeout,
    )
    resumed = [b for b in books if len(b.welcomes) > welcomes_before[b.index]]
    # A client has resumed when its first welcome on B came.
    t_resumed = max((b.welcomes[welcomes_before[b.index]][0] for b in resumed), default=now_us())
    cpu = meter.stop()
    stats = commandstats_delta(stats0, commandstats(args.redis_port))
    refusals = sum((b.refusals for b in books), Counter())
    print(
        f"resumed {len(resumed)}/{len(books)} on B, the last "
        f"{(t_resumed - t_drop) / 1e6:.2f} s after the drop; retries {dict(refusals) or 0}",
        file=sys.stderr,
    )
    await asyncio.sleep(args.after)
    sending = False
    await sender
    sent = [pub.seq for pub in publishers]

    def answered() -> bool:
        return all(len(p.accepted) + p.refused.total() >= p.seq for p in publishers)

    await wait_for(answered, args.drain)
    accepted = [sorted(pub.accepted) for pub in publishers]
    await wait_for(lambda: all(len(b.seqs) >= len(accepted[b.room]) for b in books), args.drain)
    stop.set()
    await asyncio.gather(*keepers)
    for pub in publishers:
        pub.abort()
    order = check_order(books, accepted)
    refused = sum((pub.refused for pub in publishers), Counter())
    unanswered = sum(sent) - sum(len(a) for a in accepted) - refused.total()
    # Latency of the messages sent during the storm (drop to last welcome on B).
    storm_live, storm_all = array("q"), array("q")
    for t_sent, latency, live in zip(run.sent_us, run.latency_us, run.live, strict=True):
        if t_drop <= t_sent <= t_resumed:
            storm_all.append(latency)
            if live:
                storm_live.append(latency)
    print(
        f"order: {order['clients_exact']}/{len(books)} exact, missing {order['missing']}, "
        f"dups {order['dups']}, reordered {order['reordered']}; storm latency live "
        f"{storm_latency(storm_live)} all {storm_latency(storm_all)}",
        file=sys.stderr,
    )
    return {
        "clients": args.clients,
        "rooms": args.rooms,
        "rate": args.rate,
        "drop": args.drop,
        "concurrency": args.concurrency,
        "clients_without_since": no_since,
        "resumed": len(resumed),
        "retries": dict(refusals),
        "all_resumed": all_resumed,
        "resumed_within_s": round((t_resumed - t_drop) / 1e6, 3),
        "messages_sent": sum(sent),
        "messages_accepted": sum(len(a) for a in accepted),
        "messages_refused": dict(refused),
        "messages_unanswered": unanswered,
        "order": order,
        "gaps": sum(b.gaps for b in books),
        "errors": dict(sum((b.errors for b in books), Counter())),
        "storm_latency_live": storm_latency(storm_live),
        "storm_latency_all": storm_latency(storm_all),
        "latency_all_run": storm_latency(run.latency_us),
        "redis": stats,
        **cpu,
    }


# --- tables for docs/storms.md --------------------------------------------------------------------


def report(paths: Sequence[str]) -> None:
    """Markdown tables from result lines: one row per run, in file order."""
    runs = []
    for path in paths:
        with open(path) as lines:
            runs += [json.loads(line) for line in lines if line.strip()]
    joins = [r for r in runs if r.get("mode") == "join"]
    if joins:
        print(
            "| run | connected | connects/s | last welcome s | server CPU µs/join | Redis µs/join"
            " | Redis calls/join | presence frames | broadcast 1 s after: all in ms | probe count"
            " | load |"
        )
        print("|---" * 11 + "|")
        for r in joins:
            redis = r.get("redis") or {}
            redis = redis if redis.get("calls") else {}  # the memory broker's run
            calls = round(redis["calls"] / max(r["welcomed"], 1), 1) if redis else "-"
            print(
                f"| {r['label']} | {r['connected']} | {r['connects_per_s']} | "
                f"{r['last_welcome_s']} | {r['server_cpu_us_per_join']} | "
                f"{r['redis_us_per_join'] if redis else '-'} | {calls} | {r['presence_frames']} |"
                f" {r['broadcast']['all_in_ms']} | {r['probe']['member_count']}/"
                f"{r['probe']['expected_count']} | {r['loadavg'][0]} |"
            )
    storms = [r for r in runs if r.get("mode") == "reconnect"]
    if storms:
        print(
            "\n| run | resumed | within s | exact order | missing/dup | accepted/sent"
            " | storm p50/p99 ms (live) | p99 ms (all, with replays) | B's CPU % | Redis calls"
            " | retries | load |"
        )
        print("|---" * 12 + "|")
        for r in storms:
            order = r["order"]
            live, every = r["storm_latency_live"], r["storm_latency_all"]
            cpu = r.get("server_cpu_pct_each") or {}
            b_cpu = list(cpu.values())[-1] if cpu else r.get("server_cpu_pct")
            print(
                f"| {r['label']} | {r['resumed']}/{r['clients']} | {r['resumed_within_s']} | "
                f"{order['clients_exact']}/{r['clients']} | {order['missing']}/{order['dups']} |"
                f" {r.get('messages_accepted', '?')}/{r['messages_sent']} |"
                f" {live['p50_ms']}/{live['p99_ms']} | {every['p99_ms']} | {b_cpu} | "
                f"{(r.get('redis') or {}).get('calls', '-')} | {sum(r['retries'].values())} | "
                f"{r['loadavg'][0]} |"
            )


# --- command line ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="storms.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=("join", "reconnect"))
    ap.add_argument("--url", default="ws://127.0.0.1:8091/ws", help="the instance joined")
    ap.add_argument("--resume-url", help="reconnect: the instance clients resume on")
    ap.add_argument("--clients", type=bounded(int, 1, MAX_CLIENTS), default=1000)
    ap.add_argument("--rooms", type=bounded(int, 1, MAX_ROOMS), default=1)
    ap.add_argument("--room-prefix", default="storm")
    ap.add_argument("--concurrency", type=bounded(int, 1, 5000), default=200)
    ap.add_argument("--connect-timeout", type=bounded(float, 1, 120), default=60.0)
    ap.add_argument("--welcome-timeout", type=bounded(float, 1, MAX_SECONDS), default=60.0)
    ap.add_argument("--presence-limit", type=int, default=200, help="the server's, for checks")
    ap.add_argument("--broadcast-after", type=bounded(float, 0, 60), default=1.0)
    ap.add_argument("--broadcast-timeout", type=bounded(float, 1, 120), default=30.0)
    ap.add_argument("--rate", type=bounded(float, 0.1, MAX_RATE), default=100.0)
    ap.add_argument("--tick", type=bounded(float, 0.001, 0.1), default=0.01)
    ap.add_argument("--warmup", type=bounded(float, 0, 120), default=3.0)
    ap.add_argument("--after", type=bounded(float, 0, 120), default=3.0, help="send on after")
    ap.add_argument("--drain", type=bounded(float, 0, 120), default=10.0)
    ap.add_argument("--drop", choices=("abort", "kill"), default="abort")
    ap.add_argument("--server-pid", "--server-pids", dest="server_pid", type=pid_list, default=[])
    ap.add_argument("--redis-pid", type=int)
    ap.add_argument("--redis-port", type=int, help="read INFO commandstats from this Redis")
    ap.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    ap.add_argument("--out", help="also append the JSON result line to this file")
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)
    if args.mode == "reconnect" and not args.resume_url:
        ap.error("reconnect needs --resume-url (the second instance)")
    if args.drop == "kill" and not args.server_pid:
        ap.error("--drop kill needs --server-pid (the first is killed)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        report(argv[1:])
        return 0
    args = parse_args(argv)
    target = Target(args.url)
    factory, loop_name = pick_loop(args.loop, "storms")
    coro = mode_join(args, target) if args.mode == "join" else mode_reconnect(args, target)
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(coro)
    record = {
        "tool": "loadtest/storms.py",
        "mode": args.mode,
        "label": args.label,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loop": loop_name,
        "server_pids": args.server_pid,
        **result,
    }
    write_line(record, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
