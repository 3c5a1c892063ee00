#!/usr/bin/env python3
"""Markdown tables from result lines of loadtest/fanout.py and of wsbench (JSONL files).

    python loadtest/summarize.py /tmp/webchat-perf/*.jsonl

Runs on the Redis broker (labels `redis...`, from scenarios.sh) get their own table, with
Redis's CPU and the deliveries per server CPU-second (summed over the workers); runs with an
event (the Redis restart) get an outage table.

Standard library only; no locust import (Locust loads every .py in loadtest/ as a locustfile,
and this file defines no User, so it is inert there).
"""

from __future__ import annotations

import json
import sys
from typing import Any

FANOUT_COLUMNS = (
    "tool",
    "label",
    "N",
    "R",
    "deliveries/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "spread p50/p99 ms",
    "lost",
    "dup",
    "closes",
    "server CPU %",
    "gen CPU %",
    "load",
)
REDIS_COLUMNS = (
    "tool",
    "label",
    "workers",
    "N",
    "R",
    "deliveries/s",
    "p50 ms",
    "p99 ms",
    "max ms",
    "lost",
    "server CPU %",
    "per worker %",
    "deliveries per server CPU-s",
    "Redis CPU %",
    "gen CPU %",
    "load",
)
OUTAGE_COLUMNS = (
    "label",
    "sent",
    "accepted",
    "refused",
    "lost (accepted)",
    "Redis stopped → up s",
    "last delivery before s",
    "first delivery after s",
    "resume after up s",
    "longest gap s",
    "/readyz",
    "p99 ms",
    "load",
)
CONNS_COLUMNS = (
    "tool",
    "label",
    "conns ok",
    "fail",
    "connects/s",
    "RSS/conn KiB",
    "RSS before→after MiB",
    "open after hold",
    "broadcast all-in ms",
    "load",
)


def _tool(line: dict[str, Any]) -> str:
    return "fanout.py" if line.get("tool") == "loadtest/fanout.py" else "wsbench"


def _load(line: dict[str, Any], step: dict[str, Any]) -> str:
    if "loadavg" in step:
        return " ".join(str(x) for x in step["loadavg"][:1])
    label = str(line.get("label", ""))
    return label.split("load=", 1)[1].split()[0] if "load=" in label else ""


def _label(line: dict[str, Any]) -> str:
    return str(line.get("label", "")).split(" load=", 1)[0]


def _spread(step: dict[str, Any]) -> str:
    """Fan-out spread: last minus first delivery of one message (fanout.py only)."""
    per = step.get("per_message")
    return f"{per['spread_p50_ms']}/{per['spread_p99_ms']}" if per else ""


def fanout_row(line: dict[str, Any], step: dict[str, Any]) -> list[Any]:
    lat = step.get("latency", {})
    closes = step.get("sub_close_codes")
    if closes is None:
        closes = step["subs"] - step.get("subs_open_at_end", step["subs"])
    return [
        _tool(line),
        _label(line),
        step["subs"],
        step["rate_target"],
        step["deliveries_per_s"],
        lat.get("p50_ms"),
        lat.get("p95_ms"),
        lat.get("p99_ms"),
        lat.get("max_ms"),
        _spread(step),
        step["lost"],
        step.get("dup", step.get("dups")),
        closes or "",
        step.get("server_cpu_pct"),
        step.get("generator_cpu_pct"),
        _load(line, step),
    ]


def _server_cpu_s(step: dict[str, Any]) -> float | None:
    if step.get("server_cpu_s") is not None:
        return float(step["server_cpu_s"])
    pct, wall = step.get("server_cpu_pct"), step.get("wall_s")
    return pct / 100 * wall if pct is not None and wall else None


def _workers(line: dict[str, Any]) -> Any:
    pids = line.get("server_pids")
    if pids:
        return len(pids)
    return 2 if _label(line).startswith("redis2") else 1


def redis_row(line: dict[str, Any], step: dict[str, Any]) -> list[Any]:
    lat = step.get("latency", {})
    cpu_s = _server_cpu_s(step)
    each = step.get("server_cpu_pct_each")
    redis = step.get("redis_cpu_pct", step.get("other_cpu_pct"))
    return [
        _tool(line),
        _label(line),
        _workers(line),
        step["subs"],
        step["rate_target"],
        step["deliveries_per_s"],
        lat.get("p50_ms"),
        lat.get("p99_ms"),
        lat.get("max_ms"),
        step["lost"],
        step.get("server_cpu_pct"),
        "/".join(str(v) for v in each.values()) if each else "",
        round(step["received"] / cpu_s) if cpu_s else "",
        redis,
        step.get("generator_cpu_pct"),
        _load(line, step),
    ]


def outage_row(line: dict[str, Any], step: dict[str, Any]) -> list[Any]:
    o = step["outage"]
    ready = ", ".join(f"{status or '-'}@{t}" for t, status in o.get("readyz") or [])
    refused = sum(step.get("refused", {}).values())
    return [
        _label(line),
        step["sent"],
        step["accepted"],
        refused,
        step["lost_accepted"],
        f"{o['stopped_s']} → {o['up_s']}",
        o["last_delivery_before_stop_s"],
        o["first_delivery_after_up_s"],
        o["resume_after_up_s"],
        o["longest_gap_s"],
        ready,
        step.get("latency", {}).get("p99_ms"),
        _load(line, step),
    ]


def conns_row(line: dict[str, Any]) -> list[Any]:
    def mib(kb: Any) -> str:
        return f"{kb / 1024:.0f}" if isinstance(kb, int | float) else "?"

    return [
        _tool(line),
        _label(line),
        line["ok"],
        line["fail"],
        line["connect_rate_per_s"],
        line["rss_per_conn_kb"],
        f"{mib(line['server_rss_kb_before'])}→{mib(line['server_rss_kb_after_hold'])}",
        line["open_after_hold"],
        line["broadcast"]["all_in_ms"],
        _load(line, line),
    ]


def table(columns: tuple[str, ...], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def main(paths: list[str]) -> int:
    fanout_rows: list[list[Any]] = []
    redis_rows: list[list[Any]] = []
    outage_rows: list[list[Any]] = []
    conns_rows: list[list[Any]] = []
    for path in paths:
        with open(path) as f:
            for raw in f:
                if not raw.strip():
                    continue
                line = json.loads(raw)
                mode = line.get("mode")
                if mode == "conns":
                    conns_rows.append(conns_row(line))
                elif mode == "ramp":
                    fanout_rows += [fanout_row(line, step) for step in line["steps"]]
                elif mode == "fanout":
                    step = line.get("result", line)
                    if "outage" in step:
                        outage_rows.append(outage_row(line, step))
                    elif _label(line).startswith("redis"):
                        redis_rows.append(redis_row(line, step))
                    else:
                        fanout_rows.append(fanout_row(line, step))
    if fanout_rows:
        print(table(FANOUT_COLUMNS, fanout_rows))
        print()
    if redis_rows:
        print(table(REDIS_COLUMNS, redis_rows))
        print()
    if outage_rows:
        print(table(OUTAGE_COLUMNS, outage_rows))
        print()
    if conns_rows:
        print(table(CONNS_COLUMNS, conns_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
