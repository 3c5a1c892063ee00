"""The step-load shape against a server whose rate limit makes a known step fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import MakeServer


@pytest.mark.parametrize("broker", ["memory"], indirect=True)
def test_step_load_stops_at_the_first_bad_step(
    make_server: MakeServer, locust, tmp_path: Path
) -> None:
    # 3 messages/s per connection: steps at 1 and 2/s are good, 6/s is refused (rate_limited).
    server = make_server("--rate", "3", "--burst", "3", "--drain-delay", "0")
    out = tmp_path / "steps.jsonl"
    run = locust(
        "SmallRooms",
        "-u",
        "4",
        "-r",
        "50",
        "--host",
        server.url,
        "--room-size",
        "2",
        "--step-rates",
        "1,2,6,12",
        "--step-time",
        "2",
        "--step-warmup",
        "0.5",
        "--loss-timeout",
        "1",
        "--p99-max",
        "1000",
        "--step-out",
        str(out),
        "--label",
        "rate-limit test",
        "--server-pids",
        str(server.proc.pid),
        run_time=40,
        limit=False,
    ).wait()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = [line["type"] for line in lines]
    assert kinds == ["run", "step", "step", "step", "capacity"], run.explain()
    steps = lines[1:4]
    assert [s["msg_rate"] for s in steps] == [1, 2, 6]
    assert [s["good"] for s in steps] == [True, True, False], steps
    assert steps[0]["failures"] == steps[1]["failures"] == {}
    assert steps[2]["failures"].get("error rate_limited", 0) > 0, steps[2]
    assert "error rate_limited" in steps[2]["why"]
    for step in steps:
        assert step["sockets"] == 4
        assert step["deliveries"] > 0 and step["p99_ms"] is not None
        assert step["server_cpu_pct"] is not None
    # Offered deliveries/s: 4 talkers x rate x 2 members.
    assert [s["offered_deliveries_per_s"] for s in steps] == [8, 16, 48]
    capacity = lines[4]
    assert capacity["last_good_step"] == 2 and capacity["first_bad_step"] == 3
    assert capacity["capacity"]["msg_rate"] == 2
    assert "Shape test completed" in run.output
    assert run.returncode == 1  # the bad step's refusals are failures of the run
