"""What the standalone benchmarks (fanout, storms, soak, redis_*, rooms_poll) share, once.

Latency percentiles of microsecond samples, bounded argument types, the event loop choice,
the result line, the loopback check of a URL, and a Redis INFO section read over a plain
socket. Standard library only; the leading underscore keeps Locust from loading it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def percentile(sorted_us: Sequence[int], p: float, digits: int = 2) -> float | None:
    """The nearest-rank `p` quantile of sorted microsecond samples, in ms; None without any."""
    if not sorted_us:
        return None
    index = min(len(sorted_us) - 1, max(0, int(len(sorted_us) * p + 0.999999) - 1))
    return round(sorted_us[index] / 1000, digits)


def latency_summary(
    latencies_us: Iterable[int],
    points: Sequence[float] = (0.50, 0.95, 0.99, 0.999),
    digits: int = 2,
    mean: bool = True,
) -> dict[str, Any]:
    """samples, `p50_ms`... for each of `points`, max_ms and (with `mean`) mean_ms."""
    values = sorted(latencies_us)
    summary: dict[str, Any] = {"samples": len(values)}
    for p in points:
        summary[f"p{p * 100:g}_ms".replace(".", "")] = percentile(values, p, digits)
    summary["max_ms"] = round(values[-1] / 1000, digits) if values else None
    if mean:
        summary["mean_ms"] = round(sum(values) / len(values) / 1000, digits) if values else None
    return summary


def bounded(kind: type, low: float, high: float) -> Callable[[str], Any]:
    """An argparse type: `kind(raw)`, refused with a one-line message outside [low, high]."""

    def convert(raw: str) -> Any:
        value = kind(raw)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, got {raw}")
        return value

    return convert


def pid_list(raw: str) -> list[int]:
    return [int(x) for x in raw.split(",") if x.strip()]


def pick_loop(choice: str, prog: str) -> tuple[LoopFactory | None, str]:
    """`--loop auto|asyncio|uvloop`: uvloop's factory when importable (or demanded), else None."""
    if choice == "asyncio":
        return None, "asyncio"
    try:
        import uvloop  # optional: ~10% cheaper reads for the generator
    except ImportError:
        if choice == "uvloop":
            raise SystemExit(f"{prog}: --loop uvloop but uvloop is not installed") from None
        return None, "asyncio"
    return uvloop.new_event_loop, "uvloop"


def loopback(url: str) -> str:
    """`url` without a trailing slash; exits with a message unless its host is loopback."""
    host = urlsplit(url).hostname or ""
    if not (host == "localhost" or host.startswith("127.") or host == "::1"):
        raise SystemExit(f"only loopback targets are allowed, not {host!r}")
    return url.rstrip("/")


def write_line(record: dict[str, Any], out: str | None) -> None:
    """The result as one JSON line on stdout, and appended to `out` when given."""
    line = json.dumps(record)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
    print(line)


def redis_info(port: int | None, section: str) -> dict[str, str]:
    """`INFO section` of the Redis on 127.0.0.1:port as a dict; {} without a port."""
    if not port:
        return {}
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"*2\r\n$4\r\nINFO\r\n${len(section)}\r\n{section}\r\n".encode())
        data = b""
        while b"\r\n" not in data:
            data += sock.recv(65536)
        head, _, rest = data.partition(b"\r\n")
        size = int(head[1:])
        while len(rest) < size:
            rest += sock.recv(65536)
    out = {}
    for line in rest[:size].decode().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key] = value
    return out
