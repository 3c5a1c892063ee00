#!/usr/bin/env python3
"""The project's fan-out benchmark: N subscribers in one room, P publishers at a total rate R.

    python loadtest/fanout.py --url 'ws://127.0.0.1:8091/ws?room=bench' \
        --subs 1000 --pubs 25 --rate 100 --duration 10 --server-pid PID

Every message text carries the marker `BM:<run>:<seq>:<t_us>:` (t_us = CLOCK_MONOTONIC in
microseconds, the same clock and format as wsbench in ../shared/bench, so the two instruments
measure the same thing). Subscribers find the marker in each frame with `bytes.find` and record
the per-delivery latency (one host, one clock), loss, duplicates, reorders (per publisher) and
whether every subscriber saw the room in the same order. The result is one JSON line on stdout;
a human summary goes to stderr.

Why no WebSocket library: a receiver must take ~100k deliveries/s on one core, and a general
client costs several microseconds per frame before the benchmark sees it. `WsClient` is an
`asyncio.Protocol` that writes the HTTP upgrade itself and cuts the server's (unmasked) frames
straight out of the byte stream: 5-8 us per delivery, so one core takes 120-200k deliveries/s
(more when the server coalesces frames). uvloop is used when importable (`--loop`); it saves
~10%. Still check `generator_cpu_pct`: above ~85% the run measured the generator, not the
server, and the tool says so (and when a pinned core was shared with other busy processes).

Modes (exactly one):
  fanout (default)   a warm-up, then one measured step at --rate for --duration seconds.
  --ramp 50,100,200  steps through the rates on the same connections; stops at the first step
                     with p99 > --p99-max or loss, unless --keep-going (for overload runs).
  --conns K          opens K idle connections: connect rate, server RSS per connection
                     (VmRSS of --server-pid before, and --hold seconds after every client has
                     its welcome), survivors, and one broadcast to all of them.

Publishers must stay under the server's per-connection rate limit (PROTOCOL.md: a token bucket
of `burst` at `rate_per_s`; defaults 20 and 10/s): use --pubs >= R / rate_per_s, or start the
server with a higher --rate/--burst. The tool reads the limits from the welcome frame and warns.

Only loopback targets are accepted, and every count and duration is bounded. Standard library
only (uvloop optional); nothing here imports locust, so `locust -f loadtest` ignores this file
(it defines no User) and pytest never sees it.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import shlex
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

# Siblings, found because Python puts this script's folder first on sys.path (and Locust puts
# it there when it loads the folder). Their leading underscore keeps Locust from loading them.
from _bench import bounded, latency_summary, percentile, pick_loop, pid_list, write_line
from _procstat import CpuMeter, children_of, established_on_port, proc_name, proc_rss_kb
from _wsclient import ERROR_PREFIX, Target, WsClient, close_all, now_us, open_many

MARK = b"BM:"
MASK64 = (1 << 61) - 1  # order hash modulus (a Mersenne prime)
GEN_CPU_WARN = 85.0
CORE_BUSY_WARN = 95.0

# Bounds: this is a benchmark for one machine, not a stress weapon.
MAX_SUBS = 20_000
MAX_PUBS = 2_000
MAX_RATE = 50_000.0
MAX_DURATION = 600.0
MAX_CONNS = 60_000
MAX_STEPS = 30
MAX_PAD = 8_000
TIMELINE_US = 10_000  # delivery timeline bucket (event mode): 10 ms
EVENT_TIMEOUT = 120.0  # the --event-cmd is killed after this


# --- measuring ------------------------------------------------------------------------------


class Step:
    """Shared state of one measured step: which run, how many messages, latency samples."""

    def __init__(self, run: int, max_msgs: int, pubs: int, t0: int) -> None:
        self.run = run
        self.max_msgs = max_msgs
        self.pubs = max(pubs, 1)
        self.t0 = t0
        self.latencies = array("q")
        self.recv = 0
        self.last_recv = 0
        self.foreign = 0
        # Per message: latency of its first and of its last delivery. The first says how long
        # the server took to accept and start the fan-out; last - first is the fan-out spread.
        self.first = array("q", [1 << 62]) * max_msgs
        self.last = array("q", [-1]) * max_msgs
        # What the publishers learnt: a message is accepted once its publisher got it back
        # (the echo), refused when the server answered an error frame instead.
        self.sent_at = array("q", [0]) * max_msgs
        self.echoed = bytearray(max_msgs)
        self.accepted = 0
        self.refused: Counter[str] = Counter()
        self.refused_at: list[int] = []
        # Event mode only: deliveries per TIMELINE_US bucket since t0.
        self.timeline: array[int] | None = None

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())


class Subscriber(WsClient):
    """Counts benchmark deliveries; the hot path is `on_text`, run once per frame."""

    def __init__(self, host: str, path: str) -> None:
        super().__init__(host, path)
        self.step: Step | None = None
        self.recv = 0
        self.dups = 0
        self.reorders = 0
        self.out_of_range = 0
        self.order_hash = 0
        self._seen = bytearray()
        self._last: list[int] = []
        self._run = -1
        self._lat_append: Callable[[int], None] = array("q").append

    def begin(self, step: Step) -> None:
        self.step = step
        self.recv = self.dups = self.reorders = self.out_of_range = self.order_hash = 0
        self._seen = bytearray(step.max_msgs)
        self._last = [-1] * step.pubs
        self._run = step.run
        self._lat_append = step.latencies.append

    def on_text(self, data: bytes, start: int, end: int, now: int) -> None:
        i = data.find(MARK, start, end)
        if i < 0:
            WsClient.on_text(self, data, start, end, now)
            return
        parts = data[i + 3 : i + 64].split(b":", 3)
        step = self.step
        if step is None or int(parts[0]) != self._run:
            if step is not None:
                step.foreign += 1
            return
        seq = int(parts[1])
        if seq >= step.max_msgs:
            self.out_of_range += 1
            return
        seen = self._seen
        if seen[seq]:
            self.dups += 1
            return
        seen[seq] = 1
        last = self._last
        p = seq % step.pubs
        if seq < last[p]:
            self.reorders += 1
        else:
            last[p] = seq
        lat = now - int(parts[2])
        self._lat_append(lat)
        if lat < step.first[seq]:
            step.first[seq] = lat
        if lat > step.last[seq]:
            step.last[seq] = lat
        self.order_hash = (self.order_hash * 1_000_003 + seq) % MASK64
        self.recv += 1
        step.recv += 1
        step.last_recv = now


class TimedSubscriber(Subscriber):
    """A Subscriber that also counts its deliveries on the step's 10 ms timeline (event mode)."""

    def on_text(self, data: bytes, start: int, end: int, now: int) -> None:
        before = self.recv
        Subscriber.on_text(self, data, start, end, now)
        step = self.step
        if self.recv != before and step is not None and step.timeline is not None:
            k = (now - step.t0) // TIMELINE_US
            if 0 <= k < len(step.timeline):
                step.timeline[k] += 1


class Publisher(WsClient):
    """Sends; notes which of its messages came back to it (accepted) and the error frames.

    The server answers a frame it cannot publish with an error (`unavailable` while the broker
    is down, `rate_limited`); a published one reaches every member of the room, the publisher
    included. Publisher `index` sends the sequence numbers `seq % pubs == index`.
    """

    def __init__(self, host: str, path: str) -> None:
        super().__init__(host, path)
        self.index = 0
        self.step: Step | None = None

    def begin(self, step: Step) -> None:
        self.step = step

    def on_text(self, data: bytes, start: int, end: int, now: int) -> None:
        step = self.step
        i = data.find(MARK, start, end)
        if i < 0:
            if step is not None and data.startswith(ERROR_PREFIX, start):
                try:
                    code = str(json.loads(data[start:end]).get("code", "?"))
                except ValueError:
                    code = "unparsable"
                step.refused[code] += 1
                step.refused_at.append(now)
            WsClient.on_text(self, data, start, end, now)
            return
        if step is None:
            return
        parts = data[i + 3 : i + 64].split(b":", 3)
        if int(parts[0]) != step.run:
            return
        seq = int(parts[1])
        if seq < step.max_msgs and seq % step.pubs == self.index and not step.echoed[seq]:
            step.echoed[seq] = 1
            step.accepted += 1


# --- fan-out ---------------------------------------------------------------------------------


def per_message_summary(step: Step) -> dict[str, Any]:
    """First-delivery latency and fan-out spread (last - first delivery) over the messages."""
    firsts = array("q")
    spreads = array("q")
    for first, last in zip(step.first, step.last, strict=True):
        if last >= 0:
            firsts.append(first)
            spreads.append(last - first)
    f, s = sorted(firsts), sorted(spreads)
    return {
        "first_delivery_p50_ms": percentile(f, 0.5),
        "first_delivery_p99_ms": percentile(f, 0.99),
        "spread_p50_ms": percentile(s, 0.5),
        "spread_p99_ms": percentile(s, 0.99),
    }


def build_text(run: int, seq: int, pad: str, nonce: bool) -> bytes:
    text = f"BM:{run}:{seq}:{now_us()}:{pad}"
    if nonce:
        return b'{"type":"message","text":"%s","nonce":"lt-%d-%d"}' % (text.encode(), run, seq)
    return b'{"type":"message","text":"%s"}' % text.encode()


async def fanout_step(
    args: argparse.Namespace,
    subs: list[Subscriber],
    pubs: list[Publisher],
    rate: float,
    duration: float,
    run: int,
    event: bool = False,
) -> dict[str, Any]:
    """Send `rate * duration` messages round-robin over the publishers, then wait for the rest.

    With `event`, runs --event-cmd --event-at seconds into the step (e.g. a Redis restart)
    and reports the outage it caused.
    """
    total = int(rate * duration)
    step = Step(run, total + 16, len(pubs), now_us())
    if event:
        span = duration + args.drain + 5
        step.timeline = array("q", [0]) * int(span * 1_000_000 / TIMELINE_US)
    for sub in subs:
        sub.begin(step)
    for pub in pubs:
        pub.begin(step)
    pad = "x" * args.pad
    meter = CpuMeter(args.server_pid, args.redis_pid)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    event_task = asyncio.create_task(run_event(args, step)) if event else None
    readyz_task = (
        asyncio.create_task(poll_readyz(args.readyz, step, duration + args.drain))
        if event and args.readyz
        else None
    )
    sent = send_errors = 0
    sent_per_s: list[int] = []
    recv_per_s: list[int] = []
    recv_mark = 0
    next_second = 1.0
    while sent < total:
        await asyncio.sleep(args.tick)
        elapsed = loop.time() - t0
        while elapsed >= next_second:  # per-second delivery timeline, sampled by the sender
            recv_per_s.append(step.recv - recv_mark)
            recv_mark = step.recv
            next_second += 1.0
        due = min(total, int(rate * elapsed)) - sent
        for _ in range(due):
            pub = pubs[sent % len(pubs)]
            step.sent_at[sent] = now_us()
            if pub.send_text(build_text(run, sent, pad, args.nonce)):
                second = int(elapsed)
                while len(sent_per_s) <= second:
                    sent_per_s.append(0)
                sent_per_s[second] += 1
            else:
                send_errors += 1
            sent += 1
    send_end = loop.time()
    ok_sent = sent - send_errors
    expected = ok_sent * len(subs)
    # Done when every send is answered (echo or error) and every accepted message is in.
    # Polled, not an Event: signalling from the per-delivery hot path would cost more.
    while loop.time() - send_end < args.drain:
        answered = step.accepted + step.refused_total >= ok_sent
        if (answered and step.recv >= step.accepted * len(subs)) or step.recv >= expected:
            break
        await asyncio.sleep(0.02)
    cpu = meter.stop()
    event_result: dict[str, Any] | None = None
    if event_task is not None:
        event_result = await event_task
    readyz = await readyz_task if readyz_task is not None else None
    recv_per_s.append(step.recv - recv_mark)
    send_secs = send_end - t0
    deliver_secs = (step.last_recv - step.t0) / 1e6 if step.last_recv else send_secs
    open_subs = [s for s in subs if s.is_open]
    lost_open = ok_sent * len(open_subs) - sum(s.recv for s in open_subs)
    hashes = Counter(s.order_hash for s in subs if s.recv == ok_sent)
    order_mismatch = sum(hashes.values()) - max(hashes.values()) if hashes else 0
    close_codes = Counter(str(s.close_code) for s in subs if s.close_code is not None)
    errors: Counter[str] = Counter()
    for client in [*subs, *pubs]:
        errors.update(client.errors)
    accepted_mask = int.from_bytes(step.echoed, "little")
    lost_accepted = delivered_unaccepted = 0
    for s in subs:
        seen = int.from_bytes(s._seen, "little")
        lost_accepted += (accepted_mask & ~seen).bit_count()
        delivered_unaccepted += (seen & ~accepted_mask).bit_count()
    srv_secs = cpu.get("server_cpu_s")
    outage = (
        outage_summary(step, event_result, readyz, ok_sent, send_end - t0)
        if event_result is not None
        else None
    )
    return {
        "rate_target": rate,
        "duration_s": duration,
        "subs": len(subs),
        "pubs": len(pubs),
        "sent": ok_sent,
        "send_errors": send_errors,
        "send_rate_achieved": round(ok_sent / send_secs, 1) if send_secs else None,
        "expected_deliveries": expected,
        "received": step.recv,
        "lost": expected - step.recv,
        "lost_on_open_subs": lost_open,
        # Publishers' view: accepted = the publisher got its message back; refused = an error
        # frame answered it. A message accepted must reach every subscriber: lost_accepted
        # counts (message, subscriber) pairs where it did not.
        "accepted": step.accepted,
        "refused": dict(step.refused),
        "unanswered": ok_sent - step.accepted - step.refused_total,
        "lost_accepted": lost_accepted,
        "delivered_unaccepted": delivered_unaccepted,
        "dup": sum(s.dups for s in subs),
        "reorders": sum(s.reorders for s in subs),
        "order_mismatch_subs": order_mismatch,
        "foreign_frames": step.foreign,
        "deliveries_per_s": round(step.recv / max(send_secs, deliver_secs, 1e-9)),
        # Efficiency: deliveries per CPU-second of the server processes (summed over workers).
        "deliveries_per_server_cpu_s": round(step.recv / srv_secs) if srv_secs else None,
        "drain_tail_s": round(max(0.0, deliver_secs - send_secs), 2) if step.last_recv else None,
        "latency": latency_summary(step.latencies),
        "per_message": per_message_summary(step),
        "subs_open_at_end": len(open_subs),
        "pubs_open_at_end": sum(1 for p in pubs if p.is_open),
        "sub_close_codes": dict(close_codes),
        "server_errors": dict(errors),
        "recv_per_s_timeline": recv_per_s,
        "sent_per_s_timeline": sent_per_s,
        **cpu,
        **({"outage": outage} if outage is not None else {}),
    }


# --- event mode: an outage during the step ---------------------------------------------------


async def run_event(args: argparse.Namespace, step: Step) -> dict[str, Any]:
    """Run --event-cmd at --event-at s into the step; time-stamp each line it prints.

    The command is run without a shell. loadtest/redis_ctl.sh restart prints `stopped` once
    the old Redis is gone and `up` once the new one answers PING.
    """
    await asyncio.sleep(args.event_at)
    started = now_us()
    marks: dict[str, float] = {}
    proc = await asyncio.create_subprocess_exec(
        *shlex.split(args.event_cmd),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    output: list[str] = []

    async def read_lines() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            output.append(line)
            word = line.split(" ", 1)[0]
            if word and word not in marks:
                marks[word] = round((now_us() - step.t0) / 1e6, 3)

    reader = asyncio.create_task(read_lines())
    try:
        async with asyncio.timeout(EVENT_TIMEOUT):
            rc = await proc.wait()
    except TimeoutError:
        proc.kill()
        rc = await proc.wait()
    ended = now_us()
    # A grandchild that inherited the pipe (a server it started) must not keep us waiting.
    done, _ = await asyncio.wait({reader}, timeout=1.0)
    if not done:
        reader.cancel()
    try:
        async with asyncio.timeout(1.0):
            err_raw = await proc.stderr.read()
    except TimeoutError:
        err_raw = b"(stderr still open)"
    err = err_raw.decode(errors="replace").strip()
    return {
        "cmd": args.event_cmd,
        "rc": rc,
        "start_s": round((started - step.t0) / 1e6, 3),
        "end_s": round((ended - step.t0) / 1e6, 3),
        "marks_s": marks,
        "output": output[-10:],
        "stderr": err[-500:],
    }


async def http_status(url: str, timeout: float = 1.0) -> int | None:
    """Status code of a GET on a loopback http:// URL, or None if there was no answer."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode()
            )
            line = await reader.readline()
            return int(line.split()[1])
    except (OSError, TimeoutError, ValueError, IndexError):
        return None
    finally:
        if writer is not None:
            writer.close()


async def poll_readyz(url: str, step: Step, span: float) -> list[tuple[float, int | None]]:
    """Poll the readiness URL every 100 ms for `span` s; keep the transitions."""
    loop = asyncio.get_running_loop()
    end = loop.time() + span
    changes: list[tuple[float, int | None]] = []
    last: int | str | None = "none yet"
    while loop.time() < end:
        status = await http_status(url)
        if status != last:
            changes.append((round((now_us() - step.t0) / 1e6, 3), status))
            last = status
        await asyncio.sleep(0.1)
    return changes


def outage_summary(
    step: Step,
    event: dict[str, Any],
    readyz: list[tuple[float, int | None]] | None,
    sent: int,
    send_secs: float,
) -> dict[str, Any]:
    """When delivery stopped and resumed around the event, and what the publishers saw.

    Times are seconds since the step began. `up_s` is when the new Redis answered PING
    (the `up` line of redis_ctl.sh), `stopped_s` when the old one was gone.
    """
    timeline = step.timeline
    assert timeline is not None
    bucket = TIMELINE_US / 1e6
    marks = event["marks_s"]
    t_event = event["start_s"]
    t_stop = marks.get("stopped", t_event)
    t_up = marks.get("up", event["end_s"])
    end_k = min(len(timeline), int((send_secs + 1) / bucket))

    def first_delivery_at_or_after(t: float) -> float | None:
        for k in range(int(t / bucket), end_k):
            if timeline[k]:
                return round(k * bucket, 3)
        return None

    def last_delivery_before(t: float) -> float | None:
        for k in range(min(int(t / bucket), end_k) - 1, -1, -1):
            if timeline[k]:
                return round((k + 1) * bucket, 3)
        return None

    # The longest stretch without any delivery, from 1 s before the event to the end.
    gap_start = gap_len = 0.0
    prev: float | None = None
    for k in range(max(0, int((t_event - 1) / bucket)), end_k):
        if timeline[k]:
            t = k * bucket
            if prev is not None and t - prev > gap_len:
                gap_start, gap_len = prev, t - prev
            prev = t + bucket
    resumed = first_delivery_at_or_after(t_up)
    # The first message sent after Redis was back that its publisher got back (accepted).
    t0 = step.t0
    up_us = t0 + int(t_up * 1e6)
    first_ok = next(
        (seq for seq in range(sent) if step.sent_at[seq] >= up_us and step.echoed[seq]),
        None,
    )
    refused_at = sorted(step.refused_at)
    return {
        "event": event,
        "stopped_s": t_stop,
        "up_s": t_up,
        "last_delivery_before_stop_s": last_delivery_before(t_stop),
        "first_delivery_after_up_s": resumed,
        # The figure for the target "delivery resumes within 5 s" of the restart.
        "resume_after_up_s": round(resumed - t_up, 3) if resumed is not None else None,
        "resume_after_stop_s": round(resumed - t_stop, 3) if resumed is not None else None,
        "longest_gap_s": round(gap_len, 3),
        "longest_gap_from_s": round(gap_start, 3),
        "first_accepted_send_after_up_s": (
            round((step.sent_at[first_ok] - t0) / 1e6 - t_up, 3) if first_ok is not None else None
        ),
        "refused_first_s": round((refused_at[0] - t0) / 1e6, 3) if refused_at else None,
        "refused_last_s": round((refused_at[-1] - t0) / 1e6, 3) if refused_at else None,
        "readyz": readyz,
        "deliveries_per_100ms_around": [
            sum(timeline[k : k + 10])
            for k in range(
                max(0, int((t_stop - 1) / bucket)), min(end_k, int((t_up + 6) / bucket)), 10
            )
        ],
    }


def brief(r: dict[str, Any]) -> str:
    lat = r["latency"]
    pm = r["per_message"]
    return (
        f"R={r['rate_target']:g} N={r['subs']} sent={r['sent']} ({r['send_rate_achieved']}/s) "
        f"recv={r['received']}/{r['expected_deliveries']} lost={r['lost']} dup={r['dup']} "
        f"reord={r['reorders']} deliv/s={r['deliveries_per_s']} p50={lat['p50_ms']} "
        f"p95={lat['p95_ms']} p99={lat['p99_ms']} max={lat['max_ms']}ms "
        f"first-p99={pm['first_delivery_p99_ms']} spread-p50/p99={pm['spread_p50_ms']}/"
        f"{pm['spread_p99_ms']}ms "
        f"gen={r['generator_cpu_pct']}% srv={r['server_cpu_pct']}% "
        f"srv-core={r['server_core_busy_pct']}% (softirq {r['server_core_softirq_pct']}%) "
        f"redis={r['redis_cpu_pct']}% deliv/srv-cpu-s={r['deliveries_per_server_cpu_s']} "
        f"accepted={r['accepted']} refused={r['refused']} lost-accepted={r['lost_accepted']} "
        f"open={r['subs_open_at_end']} closes={r['sub_close_codes']} errors={r['server_errors']} "
        f"load={r['loadavg']}"
    )


def brief_outage(r: dict[str, Any]) -> str:
    o = r["outage"]
    return (
        f"event at {o['event']['start_s']}s (rc {o['event']['rc']}): stopped {o['stopped_s']}s, "
        f"up {o['up_s']}s; last delivery before {o['last_delivery_before_stop_s']}s, first "
        f"after up {o['first_delivery_after_up_s']}s: resumed {o['resume_after_up_s']}s after up "
        f"({o['resume_after_stop_s']}s after stop); longest gap {o['longest_gap_s']}s from "
        f"{o['longest_gap_from_s']}s; first accepted send {o['first_accepted_send_after_up_s']}s "
        f"after up; refused {r['refused']} from {o['refused_first_s']} to {o['refused_last_s']}s; "
        f"accepted {r['accepted']}/{r['sent']} unanswered {r['unanswered']} lost-accepted "
        f"{r['lost_accepted']} delivered-unaccepted {r['delivered_unaccepted']}; readyz "
        f"{o['readyz']}"
    )


def warn_generator(r: dict[str, Any]) -> None:
    """Say when a step measured the generator or CPU contention rather than the server."""
    warnings = r.setdefault("warnings", [])
    if r["generator_cpu_pct"] > GEN_CPU_WARN:
        warnings.append(
            f"generator at {r['generator_cpu_pct']}% CPU (> {GEN_CPU_WARN:g}%): this step "
            "measured the generator, not the server"
        )
    for who in ("generator", "server"):
        busy, own = r.get(f"{who}_core_busy_pct"), r.get(f"{who}_cpu_pct")
        if busy is not None and own is not None and busy >= CORE_BUSY_WARN:
            warnings.append(
                f"the {who}'s core was {busy}% busy, {own}% of it the {who}: other processes "
                f"competed with the {who}, so latency includes waiting for the CPU"
            )
    for warning in warnings:
        print(f"WARNING: {warning}", file=sys.stderr)


def warn_rate_limit(pubs: list[WsClient], rates: Sequence[float]) -> None:
    welcome = next((p.welcome for p in pubs if p.welcome), None)
    if not welcome or not pubs:
        return
    limits = welcome.get("limits", {})
    per_pub = max(rates) / len(pubs)
    server_rate = limits.get("rate_per_s")
    if isinstance(server_rate, int | float) and per_pub > server_rate:
        print(
            f"WARNING: each publisher sends {per_pub:g}/s but the server allows "
            f"{server_rate}/s per connection (burst {limits.get('burst')}): use "
            f"--pubs >= {int(-(-max(rates) // server_rate))} or start the server with a "
            "higher --rate/--burst; expect rate_limited errors",
            file=sys.stderr,
        )


async def setup_fanout(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    t0 = time.monotonic()
    sub_class = TimedSubscriber if args.event_cmd else Subscriber
    s = await open_many(
        target,
        args.subs,
        args.concurrency,
        lambda: sub_class(target.host_header, target.path),
        args.connect_timeout,
    )
    p = await open_many(
        target,
        args.pubs,
        args.concurrency,
        lambda: Publisher(target.host_header, target.path),
        args.connect_timeout,
    )
    for index, pub in enumerate(p["clients"]):
        pub.index = index
    connect = {
        "subs_ok": s["ok"],
        "subs_fail": s["fail"],
        "pubs_ok": p["ok"],
        "pubs_fail": p["fail"],
        "errors": {**s["errors"], **p["errors"]},
        "connect_rate_per_s": s["rate"],
        "connect_secs": round(time.monotonic() - t0, 2),
    }
    print(
        f"connected subs={s['ok']} (fail {s['fail']}) pubs={p['ok']} (fail {p['fail']}) "
        f"in {connect['connect_secs']}s {connect['errors'] or ''}",
        file=sys.stderr,
    )
    if not s["ok"] or not p["ok"]:
        raise SystemExit("fanout: could not open the connections; is the server running?")
    if len(args.server_pid) > 1:
        # How SO_REUSEPORT spread the clients over the workers.
        connect["conns_per_server_pid"] = {
            str(pid): n for pid, n in established_on_port(args.server_pid, target.port).items()
        }
        print(f"connections per server pid: {connect['conns_per_server_pid']}", file=sys.stderr)
    # Measure only once every client has its welcome: a server may accept the upgrade well
    # before the client has joined (the Redis broker's presence join is a round trip per
    # name), and deliveries to a client that has not joined yet are held until it has.
    clients: list[WsClient] = [*s["clients"], *p["clients"]]
    waited = 0.0
    while waited < args.connect_timeout and any(c.welcome is None for c in clients):
        await asyncio.sleep(0.05)
        waited += 0.05
    connect["welcomed"] = sum(1 for c in clients if c.welcome is not None)
    connect["all_welcomed_secs"] = round(time.monotonic() - t0, 2)
    if connect["welcomed"] < len(clients):
        print(
            f"WARNING: {len(clients) - connect['welcomed']} clients got no welcome in "
            f"{args.connect_timeout:g}s",
            file=sys.stderr,
        )
    elif connect["all_welcomed_secs"] - connect["connect_secs"] > 1:
        print(
            f"all welcomed {connect['all_welcomed_secs']}s after the first connect "
            f"(connected in {connect['connect_secs']}s)",
            file=sys.stderr,
        )
    # Let the presence frames of the last joins arrive before measuring.
    await asyncio.sleep(0.5)
    return {"subs": s["clients"], "pubs": p["clients"], "connect": connect}


def run_base() -> int:
    return (int(time.time()) % 100_000) * 100


async def mode_fanout(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    c = await setup_fanout(args, target)
    warn_rate_limit(c["pubs"], [args.rate])
    base = run_base()
    if args.warmup > 0:
        await fanout_step(args, c["subs"], c["pubs"], args.rate, args.warmup, base + 99)
        await asyncio.sleep(0.5)
    event = bool(args.event_cmd)
    r = await fanout_step(args, c["subs"], c["pubs"], args.rate, args.duration, base + 1, event)
    print(brief(r), file=sys.stderr)
    if event:
        print(brief_outage(r), file=sys.stderr)
    warn_generator(r)
    close_all([*c["subs"], *c["pubs"]])
    return {"connect": c["connect"], **r}


async def mode_ramp(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    rates = args.ramp
    c = await setup_fanout(args, target)
    warn_rate_limit(c["pubs"], rates)
    base = run_base()
    if args.warmup > 0:
        await fanout_step(args, c["subs"], c["pubs"], rates[0], args.warmup, base + 99)
        await asyncio.sleep(0.5)
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    first_fail: float | None = None
    for k, rate in enumerate(rates):
        r = await fanout_step(args, c["subs"], c["pubs"], rate, args.step_duration, base + 10 + k)
        p99 = r["latency"]["p99_ms"]
        r["pass"] = r["lost"] == 0 and p99 is not None and p99 <= args.p99_max
        steps.append(r)
        print(("PASS " if r["pass"] else "FAIL ") + brief(r), file=sys.stderr)
        warn_generator(r)
        if r["pass"]:
            best = r
        elif first_fail is None:
            first_fail = rate
            if not args.keep_going:
                break
        if not any(s.is_open for s in c["subs"]):
            break
        await asyncio.sleep(args.step_pause)
    close_all([*c["subs"], *c["pubs"]])
    return {
        "connect": c["connect"],
        "p99_max_ms": args.p99_max,
        "best": best
        and {
            k: best[k] if k != "p99_ms" else best["latency"]["p99_ms"]
            for k in ("rate_target", "deliveries_per_s", "p99_ms", "server_cpu_pct")
        },
        "first_fail_rate": first_fail,
        "steps": steps,
    }


async def mode_conns(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    pid = args.server_pid[0] if args.server_pid else None
    rss0 = proc_rss_kb(pid) if pid else None
    meter = CpuMeter(args.server_pid)
    c = await open_many(
        target,
        args.conns,
        args.concurrency,
        lambda: Subscriber(target.host_header, target.path),
        args.connect_timeout,
    )
    cpu_connect = meter.stop()
    print(
        f"opened {c['ok']}/{args.conns} (fail {c['fail']}) in {c['secs']}s = {c['rate']}/s "
        f"{c['errors'] or ''}",
        file=sys.stderr,
    )
    subs: list[Subscriber] = c["clients"]
    # Idle means joined: on the Redis broker the welcomes come well after the upgrades, and
    # until then the server holds work (and memory) for the clients still joining.
    t_join = time.monotonic()
    while time.monotonic() - t_join < args.connect_timeout and any(  # noqa: ASYNC110
        s.welcome is None for s in subs
    ):
        await asyncio.sleep(0.05)  # polled: a welcome is one field set by each receiver
    welcomed = sum(1 for s in subs if s.welcome is not None)
    welcomed_secs = round(c["secs"] + time.monotonic() - t_join, 2)
    print(f"welcomed {welcomed}/{c['ok']} within {welcomed_secs}s", file=sys.stderr)
    await asyncio.sleep(args.hold)
    rss1 = proc_rss_kb(pid) if pid else None
    open_after = sum(1 for s in subs if s.is_open)
    # One broadcast: every idle connection should get it.
    p = await open_many(
        target, 1, 1, lambda: WsClient(target.host_header, target.path), args.connect_timeout
    )
    step = Step(run_base() + 5, 8, 1, now_us())
    for sub in subs:
        sub.begin(step)
    if p["clients"]:
        p["clients"][0].send_text(build_text(step.run, 0, "", nonce=False))
    t0 = time.monotonic()
    # Polled, not an Event: signalling from the per-delivery hot path would cost more.
    while step.recv < open_after and time.monotonic() - t0 < 30:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    broadcast = {
        "expected": open_after,
        "received": step.recv,
        "all_in_ms": round((step.last_recv - step.t0) / 1000, 1) if step.last_recv else None,
        "latency": latency_summary(step.latencies),
    }
    print(
        f"broadcast to {open_after}: got {step.recv} in {broadcast['all_in_ms']} ms",
        file=sys.stderr,
    )
    close_all([*subs, *p["clients"]])
    await asyncio.sleep(3)
    rss2 = proc_rss_kb(pid) if pid else None
    per_conn = (
        round((rss1 - rss0) / c["ok"], 2)
        if rss0 is not None and rss1 is not None and c["ok"]
        else None
    )
    return {
        "conns": args.conns,
        "concurrency": args.concurrency,
        "ok": c["ok"],
        "fail": c["fail"],
        "errors": c["errors"],
        "connect_secs": c["secs"],
        "connect_rate_per_s": c["rate"],
        "welcomed": welcomed,
        "all_welcomed_secs": welcomed_secs,
        "open_after_hold": open_after,
        "hold_s": args.hold,
        "server_rss_kb_before": rss0,
        "server_rss_kb_after_hold": rss1,
        "server_rss_kb_after_close": rss2,
        "rss_per_conn_kb": per_conn,
        "cpu_during_connect": cpu_connect,
        "broadcast": broadcast,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


# --- command line ----------------------------------------------------------------------------


def rate_list(raw: str) -> list[float]:
    rates = [float(x) for x in raw.split(",") if x.strip()]
    if not rates or len(rates) > MAX_STEPS or any(not 0 < r <= MAX_RATE for r in rates):
        raise argparse.ArgumentTypeError(
            f"expected 1-{MAX_STEPS} comma-separated rates in (0, {MAX_RATE:g}]"
        )
    return rates


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="fanout.py",
        description="Fan-out benchmark for webchat (loopback only). See the module docstring.",
    )
    ap.add_argument("--url", default="ws://127.0.0.1:8080/ws?room=bench")
    ap.add_argument("--subs", type=bounded(int, 1, MAX_SUBS), default=100)
    ap.add_argument("--pubs", type=bounded(int, 1, MAX_PUBS), default=4)
    ap.add_argument("--rate", type=bounded(float, 0.1, MAX_RATE), default=10.0, help="msgs/s total")
    ap.add_argument("--duration", type=bounded(float, 1, MAX_DURATION), default=10.0)
    ap.add_argument("--warmup", type=bounded(float, 0, 60), default=2.0)
    ap.add_argument("--drain", type=bounded(float, 0, 60), default=5.0, help="wait after sending")
    ap.add_argument("--pad", type=bounded(int, 0, MAX_PAD), default=0, help="filler bytes")
    ap.add_argument("--nonce", action="store_true", help="send a nonce with every message")
    ap.add_argument("--tick", type=bounded(float, 0.0005, 0.1), default=0.002, help="send tick, s")
    ap.add_argument("--ramp", type=rate_list, help="ramp mode: comma-separated rates")
    ap.add_argument("--p99-max", type=float, default=50.0, help="ramp pass limit, ms")
    ap.add_argument("--step-duration", type=bounded(float, 1, MAX_DURATION), default=10.0)
    ap.add_argument("--step-pause", type=bounded(float, 0, 60), default=3.0)
    ap.add_argument("--keep-going", action="store_true", help="ramp on past a failed step")
    ap.add_argument("--conns", type=bounded(int, 1, MAX_CONNS), help="idle-connections mode")
    ap.add_argument("--hold", type=bounded(float, 0, 600), default=5.0)
    ap.add_argument("--concurrency", type=bounded(int, 1, 2000), default=200)
    ap.add_argument("--connect-timeout", type=bounded(float, 1, 120), default=30.0)
    ap.add_argument(
        "--server-pid",
        "--server-pids",
        dest="server_pid",
        type=pid_list,
        default=[],
        help="comma-separated PIDs of the server processes; their CPU is summed",
    )
    ap.add_argument(
        "--server-parent",
        type=int,
        help="PID of `webchat --workers N`: its worker processes are added to --server-pid",
    )
    ap.add_argument("--redis-pid", type=int, help="redis-server PID: report its CPU too")
    ap.add_argument(
        "--event-cmd",
        help="fanout mode: run this command (no shell) --event-at s into the measured step "
        "and report the outage, e.g. 'loadtest/redis_ctl.sh restart'",
    )
    ap.add_argument("--event-at", type=bounded(float, 0, MAX_DURATION), default=10.0)
    ap.add_argument("--readyz", help="with --event-cmd: poll this loopback http URL meanwhile")
    ap.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    ap.add_argument("--out", help="also append the JSON result line to this file")
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)
    if args.ramp and args.conns:
        ap.error("--ramp and --conns are different modes; give one")
    if args.event_cmd and (args.ramp or args.conns):
        ap.error("--event-cmd is for fanout mode")
    if args.readyz and not _loopback_http(args.readyz):
        ap.error("--readyz must be an http:// URL on the loopback interface")
    if args.server_parent:
        workers = [
            pid
            for pid in children_of(args.server_parent)
            if "resource_tracker" not in (proc_name(pid) or "")
        ]
        if not workers:
            ap.error(f"--server-parent {args.server_parent}: no worker processes found")
        args.server_pid = [*args.server_pid, *workers]
    return args


def _loopback_http(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    try:
        host = parts.hostname or ""
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    target = Target(args.url)
    loop_factory, loop_name = pick_loop(args.loop, "fanout")
    if args.conns:
        mode, coro = "conns", mode_conns(args, target)
    elif args.ramp:
        mode, coro = "ramp", mode_ramp(args, target)
    else:
        mode, coro = "fanout", mode_fanout(args, target)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        result = runner.run(coro)
    result = {
        "tool": "loadtest/fanout.py",
        "mode": mode,
        "label": args.label,
        "url": args.url,
        "loop": loop_name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "nproc": os.cpu_count(),
        "server_pids": args.server_pid,
        **result,
    }
    write_line(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
