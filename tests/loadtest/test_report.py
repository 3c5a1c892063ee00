"""loadtest/report.py: step files to Markdown and plots; the committed report is up to date."""

from __future__ import annotations

import json
from pathlib import Path

import report
from tests.support.servers import ROOT


def step(n: int, sockets: int, p99: float, good: bool, **extra: object) -> dict[str, object]:
    return {
        "type": "step",
        "step": n,
        "users": n * 2,
        "msg_rate": 10,
        "sockets": sockets,
        "offered_msgs_per_s": 100,
        "offered_deliveries_per_s": 100 * sockets,
        "deliveries_per_s": 100 * sockets,
        "p50_ms": p99 / 4,
        "p95_ms": p99 / 2,
        "p99_ms": p99,
        "max_ms": p99 * 2,
        "server_cpu_pct": sockets / 15,
        "generator_cpu_pct": sockets / 12,
        "loadavg": [0.5, 0.4, 0.3],
        "failures": {} if good else {"missing": 2, "error rate_limited": 1},
        "lost": 0 if good else 2,
        "good": good,
        "why": "ok" if good else "failures: error rate_limited 1, missing 2",
        **extra,
    }


def write_run(path: Path, label: str) -> None:
    lines = [
        {"type": "run", "label": label, "user_classes": ["BusyRoom"], "p99_max_ms": 50},
        step(1, 110, 8, True),
        step(2, 510, 20, True),
        step(3, 1010, 400, False),
        {
            "type": "capacity",
            "last_good_step": 2,
            "first_bad_step": 3,
            "capacity": {
                "users": 4,
                "msg_rate": 10,
                "sockets": 510,
                "deliveries_per_s": 51000,
                "p99_ms": 20,
            },
        },
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_report_from_step_files(tmp_path: Path) -> None:
    write_run(tmp_path / "a.jsonl", "one worker")
    (tmp_path / "notes.jsonl").write_text('{"type": "something else"}\n')  # not a step file
    out = tmp_path / "doc.md"
    out.write_text(
        "# Capacity\n\nHand-written intro.\n\n"
        + report.BEGIN
        + "\nold\n"
        + report.END
        + "\n\nHand-written end.\n"
    )
    assert report.main(["--data", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("# Capacity\n\nHand-written intro.\n") and "Hand-written end." in text
    assert "old" not in text
    assert (
        "| one worker | 2 | 510 | 51,000 | 20 | 3: failures: error rate_limited 1, missing 2 |"
        in text
    )
    assert "| 2 | 4 | 510 | 100.0 | 51,000 | 51,000 | 5 | 10 | 20 | 40 | 0 | 0 |" in text
    assert "**good: capacity**" in text and "**bad**: failures" in text
    assert "| 400 | 800 | 2 | error rate_limited 1, missing 2 |" in text  # lost, failures
    for name in ("capacity-sockets.png", "capacity-rate.png"):
        png = (tmp_path / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 20_000
    # Run again: the generated block is replaced, not added twice.
    assert report.main(["--data", str(tmp_path), "--out", str(out), "--no-plots"]) == 0
    assert out.read_text().count(report.BEGIN) == 1


def test_committed_report_matches_its_data() -> None:
    """docs/capacity.md's generated part is what report.py makes of docs/capacity/*.jsonl."""
    data = ROOT / "docs" / "capacity"
    document = (ROOT / "docs" / "capacity.md").read_text()
    generated = report.markdown(
        report.read_runs(data),
        report.read_fanout(data),
        "capacity",
        report.read_runs(data / "generator"),
    )
    assert report.splice(document, generated) == document, (
        "docs/capacity.md is stale: run .venv/bin/python loadtest/report.py"
    )
