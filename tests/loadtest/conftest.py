"""Locust as a subprocess against real webchat processes, and its CSV read back.

Locust is never imported here: importing it patches this process with gevent. The pure modules
of loadtest/ (_ledger, _wsproto, _stepcalc, _options, report) are importable for unit tests.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.servers import ROOT
from tests.support.timing import seconds

LOADTEST = ROOT / "loadtest"
sys.path.insert(0, str(LOADTEST))


@dataclass
class LocustRun:
    returncode: int
    output: str
    stats: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> _stats.csv row
    failures: list[dict[str, str]] = field(default_factory=list)  # _failures.csv rows

    def requests(self, name: str) -> int:
        row = self.stats.get(name)
        return int(row["Request Count"]) if row else 0

    def failed(self, name: str | None = None) -> int:
        """Failures of `name` (all names: None), from the failures table."""
        return sum(
            int(row["Occurrences"]) for row in self.failures if name is None or row["Name"] == name
        )

    def explain(self) -> str:
        return (
            f"exit {self.returncode}; failures {self.failures}\n--- locust output ---\n"
            + (self.output[-6000:])
        )


class Locust:
    """`locust -f loadtest --headless ...` running in the background; `wait()` reads its CSV."""

    def __init__(
        self, workdir: Path, args: list[str], run_time: float, env: dict[str, str] | None = None
    ) -> None:
        self.prefix = workdir / "run"
        self.log = workdir / "locust.log"
        self.run_time = run_time
        # The test decides every option: nothing from the caller's environment.
        extra_env = env
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra_env or {})
        command = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOADTEST),
            "--headless",
            "--csv",
            str(self.prefix),
            *args,
        ]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, extra: float = 60) -> LocustRun:
        try:
            code = self.proc.wait(timeout=seconds(self.run_time + extra))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"locust did not finish:\n{self.output()[-4000:]}") from None
        run = LocustRun(code, self.output())
        stats = Path(f"{self.prefix}_stats.csv")
        if stats.exists():
            with stats.open() as f:
                run.stats = {row["Name"]: row for row in csv.DictReader(f)}
        failures = Path(f"{self.prefix}_failures.csv")
        if failures.exists():
            with failures.open() as f:
                run.failures = list(csv.DictReader(f))
        return run

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def locust(tmp_path: Path):  # type: ignore[no-untyped-def]
    """`locust(*args, run_time=S)` starts a headless run in tmp_path; killed after the test."""
    started: list[Locust] = []

    def start(
        *args: str, run_time: float, env: dict[str, str] | None = None, limit: bool = True
    ) -> Locust:
        """`limit`: pass --run-time; without it `run_time` only bounds the wait (a step shape
        ends the run itself)."""
        time_args = ["--run-time", f"{run_time:g}s"] if limit else []
        run = Locust(tmp_path, [*args, *time_args], run_time, env)
        started.append(run)
        return run

    yield start
    for run in started:
        run.stop()
