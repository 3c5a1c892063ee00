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
                     (VmRSS of --server-pid before and after), survivors after --hold seconds,
                     and one broadcast to all of them.

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
import json
import os
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

# Siblings, found because Python puts this script's folder first on sys.path (and Locust puts
# it there when it loads the folder). Their leading underscore keeps Locust from loading them.
from _procstat import CpuMeter, proc_rss_kb
from _wsclient import Target, WsClient, close_all, now_us, open_many

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


# --- fan-out ---------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[int], p: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, int(len(sorted_values) * p + 0.999999) - 1))
    return round(sorted_values[index] / 1000, 2)


def latency_summary(latencies: array[int]) -> dict[str, Any]:
    values = sorted(latencies)
    return {
        "samples": len(values),
        "p50_ms": percentile(values, 0.50),
        "p95_ms": percentile(values, 0.95),
        "p99_ms": percentile(values, 0.99),
        "p999_ms": percentile(values, 0.999),
        "max_ms": round(values[-1] / 1000, 2) if values else None,
        "mean_ms": round(sum(values) / len(values) / 1000, 2) if values else None,
    }


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
    pubs: list[WsClient],
    rate: float,
    duration: float,
    run: int,
) -> dict[str, Any]:
    """Send `rate * duration` messages round-robin over the publishers, then wait for the rest."""
    total = int(rate * duration)
    step = Step(run, total + 16, len(pubs), now_us())
    for sub in subs:
        sub.begin(step)
    pad = "x" * args.pad
    meter = CpuMeter(args.server_pid)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
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
    # Polled, not an Event: signalling from the per-delivery hot path would cost more.
    while step.recv < expected and loop.time() - send_end < args.drain:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    cpu = meter.stop()
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
        "dup": sum(s.dups for s in subs),
        "reorders": sum(s.reorders for s in subs),
        "order_mismatch_subs": order_mismatch,
        "foreign_frames": step.foreign,
        "deliveries_per_s": round(step.recv / max(send_secs, deliver_secs, 1e-9)),
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
        f"open={r['subs_open_at_end']} closes={r['sub_close_codes']} errors={r['server_errors']} "
        f"load={r['loadavg']}"
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
    s = await open_many(
        target,
        args.subs,
        args.concurrency,
        lambda: Subscriber(target.host_header, target.path),
        args.connect_timeout,
    )
    p = await open_many(
        target,
        args.pubs,
        args.concurrency,
        lambda: WsClient(target.host_header, target.path),
        args.connect_timeout,
    )
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
    # Let the welcome (and presence) frames of the last joins arrive before measuring.
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
    r = await fanout_step(args, c["subs"], c["pubs"], args.rate, args.duration, base + 1)
    print(brief(r), file=sys.stderr)
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


def bounded(kind: type, low: float, high: float) -> Callable[[str], Any]:
    def convert(raw: str) -> Any:
        value = kind(raw)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, got {raw}")
        return value

    return convert


def rate_list(raw: str) -> list[float]:
    rates = [float(x) for x in raw.split(",") if x.strip()]
    if not rates or len(rates) > MAX_STEPS or any(not 0 < r <= MAX_RATE for r in rates):
        raise argparse.ArgumentTypeError(
            f"expected 1-{MAX_STEPS} comma-separated rates in (0, {MAX_RATE:g}]"
        )
    return rates


def pid_list(raw: str) -> list[int]:
    return [int(x) for x in raw.split(",") if x.strip()]


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
    ap.add_argument("--server-pid", type=pid_list, default=[], help="comma-separated PIDs")
    ap.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    ap.add_argument("--out", help="also append the JSON result line to this file")
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)
    if args.ramp and args.conns:
        ap.error("--ramp and --conns are different modes; give one")
    return args


def pick_loop(choice: str) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    if choice == "asyncio":
        return None, "asyncio"
    try:
        import uvloop  # optional: ~10% cheaper reads
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("fanout: --loop uvloop but uvloop is not installed") from None
        return None, "asyncio"
    return uvloop.new_event_loop, "uvloop"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    target = Target(args.url)
    loop_factory, loop_name = pick_loop(args.loop)
    if args.conns:
        mode, coro = "conns", mode_conns(args, target)
    elif args.ramp:
        mode, coro = "ramp", mode_ramp(args, target)
    else:
        mode, coro = "fanout", mode_fanout(args, target)
    if loop_factory is None:
        result = asyncio.run(coro)
    else:
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
        **result,
    }
    line = json.dumps(result)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
