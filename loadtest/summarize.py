#!/usr/bin/env python3
"""Markdown tables from result lines of loadtest/fanout.py and of wsbench (JSONL files).

    python loadtest/summarize.py /tmp/webchat-perf/*.jsonl

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
                    fanout_rows.append(fanout_row(line, line.get("result", line)))
    if fanout_rows:
        print(table(FANOUT_COLUMNS, fanout_rows))
        print()
    if conns_rows:
        print(table(CONNS_COLUMNS, conns_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
