"""The step-load shape: raise users (or the message rate) step by step until the service gives out.

    locust -f loadtest --headless BusyRoom --steps 2,4,8,16 --step-time 30 --p99-max 50 \\
        --step-out /tmp/steps.jsonl --server-pids PID --host http://127.0.0.1:8080

Each step: spawn to its user count (and send its message rate to every process), wait until the
connected sockets stop changing, warm up (--step-warmup), measure for --step-time (deliveries/s,
delivery p50/p95/p99 from Locust's own histogram over exactly that window, server CPU), then keep
the load for --loss-timeout more so that a message lost in the window is counted in it. A step
is bad when its p99 exceeds --p99-max or anything failed from its start to the end of that grace
(loss, duplicates, refusals such as rate_limited, closes, connect failures). The shape stops at
the first bad step; the capacity is the last good one. One JSON line per step goes to --step-out
(loadtest/report.py turns the file into docs/capacity.md and plots).

Not picked up by Locust on its own (`abstract`): --steps or --step-rates switches it on.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import locust
from locust import LoadTestShape
from locust.runners import MasterRunner

from _options import number, number_list, text_list
from _procstat import CpuMeter, children_of, proc_name
from _stepcalc import Step, capacity, diff, lost, make_plan, percentile, verdict

log = logging.getLogger("webchat.loadtest")
STABLE_FOR = 2.0  # seconds the socket count must hold still before a step warms up
GENERATOR_BUSY = 85.0  # % of a core per Locust process: beyond, it is a bottleneck itself


def plan_from(opts: Any) -> list[Step]:
    users = [int(u) for u in number_list(opts, "steps", float, 1)]
    rates = number_list(opts, "step-rates", float, 0)
    if not users and not rates:
        return []
    number(opts, "step-time", float, 1, 86_400)
    number(opts, "step-warmup", float, 0, 86_400)
    number(opts, "p99-max", float, 0.001, 1e9)
    return make_plan(users, rates, int(opts.num_users or 0))


def metrics_cpu_seconds(urls: list[str]) -> float | None:
    """Sum of process_cpu_seconds_total over the /metrics pages, or None if one lacks it."""
    total = 0.0
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
        except OSError as exc:
            log.warning("could not read %s: %s", url, exc)
            return None
        values = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("process_cpu_seconds_total")
        ]
        if not values:
            return None
        total += sum(values)
    return total


class StepLoad(LoadTestShape):
    """See the module docstring."""

    abstract = True
    use_common_options = True

    def __init__(
        self,
        plan: list[Step],
        environment: Any,
        fleet: Callable[[Any], dict[str, Any]],
        set_rate: Callable[[Any, float], None],
    ) -> None:
        super().__init__()
        self.plan = plan
        self.environment = environment
        self.fleet = fleet
        self.set_rate = set_rate
        opts = environment.parsed_options
        self.step_time = float(opts.step_time)
        self.warmup = float(opts.step_warmup)
        self.p99_max = float(opts.p99_max)
        # Losses are judged --loss-timeout after the echo; workers report every second.
        remote = isinstance(environment.runner, MasterRunner)
        self.grace = float(opts.loss_timeout) + (2.0 if remote else 0.5)
        self.spawn_rate = float(opts.spawn_rate or 10)
        self.out = opts.step_out or None
        self.label = opts.label or ""
        pids = [int(p) for p in text_list(opts, "server-pids")]
        for parent in text_list(opts, "server-parent"):
            pids += [
                p
                for p in children_of(int(parent))
                if "resource_tracker" not in (proc_name(p) or "")
            ]
        self.server_pids = pids
        self.metrics_urls = text_list(opts, "metrics-urls")
        self.results: list[dict[str, Any]] = []
        self.reset()

    def reset(self) -> None:
        self.index = 0
        self.phase = "start"
        self.phase_at = 0.0
        self.stable: tuple[int, float] = (-1, 0.0)
        self.results = []
        self.snap: dict[str, Any] = {}
        self.failures0: dict[str, int] = {}
        self.header_written = False

    def reset_time(self) -> None:
        super().reset_time()
        self.reset()

    # --- the state machine, run by Locust about once a second -------------------------------

    def tick(self) -> tuple[int, float] | None:
        # Several phases may end within one tick (Locust ticks once a second).
        while self.index < len(self.plan) and self._advance(self.plan[self.index]):
            pass
        if self.index >= len(self.plan):
            return None
        return self.plan[self.index].users, self.spawn_rate

    def _advance(self, step: Step) -> bool:
        """Move to the next phase if this one is over; True if it moved."""
        now = time.monotonic()
        runner = self.runner
        if self.phase == "start":  # may run twice: Locust resets the shape as it starts
            if step.rate is not None:
                self.set_rate(runner, step.rate)
            self.failures0 = self._failures()
            self.phase = "spawn"
            # With more users to start, let Locust start spawning them first.
            return runner.user_count >= step.users
        if self.phase == "spawn":
            sockets = self.fleet(runner)["sockets"]
            if sockets != self.stable[0]:
                self.stable = (sockets, now)
            settled = runner.user_count >= step.users and runner.state != "spawning"
            if not settled or now - self.stable[1] < STABLE_FOR:
                return False
            if not self.header_written:
                self.header_written = True
                self._write({"type": "run", **self._run_info()})
            if step.rate is not None:  # again: the first step's engines start after "start"
                self.set_rate(runner, step.rate)
            self.phase, self.phase_at = "warm", now
        elif self.phase == "warm":
            if now - self.phase_at < self.warmup:
                return False
            self.snap = self._snapshot()
            self.phase, self.phase_at = "measure", now
        elif self.phase == "measure":
            if now - self.phase_at < self.step_time:
                return False
            self.measured = self._measure(step, self.snap, self._snapshot())
            self.phase, self.phase_at = "grace", now
        elif self.phase == "grace":
            if now - self.phase_at < self.grace:
                return False
            result = self._judge(self.measured)
            if not result["good"] or self.index + 1 >= len(self.plan):
                self._finish()
                self.index = len(self.plan)
                return False
            self.index += 1
            self.phase = "start"
        return True

    # --- measuring ------------------------------------------------------------------------------

    def _failures(self) -> dict[str, int]:
        stats = self.environment.runner.stats
        return {name: e.num_failures for (name, _), e in stats.entries.items() if e.num_failures}

    def _snapshot(self) -> dict[str, Any]:
        stats = self.environment.runner.stats
        deliver = stats.entries.get(("deliver", "WS"))
        connect = stats.entries.get(("connect", "WS"))
        workers = self._worker_pids()
        return {
            "t": time.monotonic(),
            "deliveries": deliver.num_requests if deliver else 0,
            "times": dict(deliver.response_times) if deliver else {},
            "connects": dict(connect.response_times) if connect else {},
            "cpu": CpuMeter(self.server_pids),
            "gen": CpuMeter(workers) if workers else None,
            "metrics_cpu": metrics_cpu_seconds(self.metrics_urls) if self.metrics_urls else None,
        }

    def _worker_pids(self) -> list[int]:
        if isinstance(self.runner, MasterRunner):
            return children_of(os.getpid())  # --processes N: the workers are our children
        return []

    def _measure(self, step: Step, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        secs = max(b["t"] - a["t"], 1e-9)
        hist = diff(b["times"], a["times"])
        cpu = a["cpu"].stop()
        gen = a["gen"].stop()["server_cpu_pct"] if a["gen"] is not None else None
        if gen is None:
            gen = (
                self._locust_cpu()
                if isinstance(self.runner, MasterRunner)
                else cpu["generator_cpu_pct"]
            )
        server_cpu = cpu["server_cpu_pct"]
        if server_cpu is None and a["metrics_cpu"] is not None and b["metrics_cpu"] is not None:
            server_cpu = round((b["metrics_cpu"] - a["metrics_cpu"]) / secs * 100, 1)
        fleet = self.fleet(self.runner)
        deliveries = b["deliveries"] - a["deliveries"]
        connects = diff(b["connects"], a["connects"]) or b["connects"]
        return {
            "type": "step",
            "label": self.label,
            "step": self.index + 1,
            "users": self.runner.user_count,
            "msg_rate": step.rate
            if step.rate is not None
            else float(self.environment.parsed_options.msg_rate),
            "sockets": fleet["sockets"],
            "processes": fleet["processes"],
            "offered_msgs_per_s": round(fleet["msgs_per_s"], 2),
            "offered_deliveries_per_s": round(fleet["deliveries_per_s"], 1),
            "deliveries": deliveries,
            "deliveries_per_s": round(deliveries / secs, 1),
            "p50_ms": percentile(hist, 0.50),
            "p95_ms": percentile(hist, 0.95),
            "p99_ms": percentile(hist, 0.99),
            "max_ms": max(hist) if hist else None,
            "connect_p50_ms": percentile(connects, 0.5),
            "connect_p99_ms": percentile(connects, 0.99),
            "measured_s": round(secs, 2),
            "server_cpu_pct": server_cpu,
            "server_cpu_pct_each": cpu["server_cpu_pct_each"],
            "generator_cpu_pct": gen,
            # Above this the figures measure the load generator as much as the server.
            "generator_saturated": gen is not None
            and gen / max(1, fleet["processes"]) >= GENERATOR_BUSY,
            "core_busy_pct": cpu["core_busy_pct"],
            "loadavg": cpu["loadavg"],
        }

    def _locust_cpu(self) -> float | None:
        usages = [getattr(w, "cpu_usage", None) for w in self.runner.clients.values()]
        values = [u for u in usages if u is not None]
        return round(sum(values), 1) if values else None

    def _judge(self, result: dict[str, Any]) -> dict[str, Any]:
        now_failures = self._failures()
        failures = {
            name: n - self.failures0.get(name, 0)
            for name, n in now_failures.items()
            if n - self.failures0.get(name, 0) > 0
        }
        good, why = verdict(
            result["p99_ms"],
            self.p99_max,
            failures,
            result["deliveries"],
            result["offered_deliveries_per_s"],
        )
        result.update(failures=failures, lost=lost(failures), good=good, why=why)
        self.results.append(result)
        log.info(
            "step %d %s: %d users, %d sockets, %.0f deliveries/s (offered %.0f), p50 %s p99 %s "
            "ms, server CPU %s%%, generator CPU %s%%: %s",
            result["step"],
            "GOOD" if good else "BAD",
            result["users"],
            result["sockets"],
            result["deliveries_per_s"],
            result["offered_deliveries_per_s"],
            result["p50_ms"],
            result["p99_ms"],
            result["server_cpu_pct"],
            result["generator_cpu_pct"],
            why,
        )
        if result["generator_saturated"]:
            log.warning(
                "step %d: the load generator used %s%% CPU: add Locust processes (--processes) "
                "or machines, or its latency is part of these figures",
                result["step"],
                result["generator_cpu_pct"],
            )
        self._write(result)
        return result

    def _finish(self) -> None:
        best = capacity(self.results)
        line = {
            "type": "capacity",
            "label": self.label,
            "p99_max_ms": self.p99_max,
            "last_good_step": best["step"] if best else None,
            "first_bad_step": next((r["step"] for r in self.results if not r["good"]), None),
            "capacity": best
            and {
                k: best[k] for k in ("users", "msg_rate", "sockets", "deliveries_per_s", "p99_ms")
            },
        }
        log.info("capacity: %s", json.dumps(line))
        self._write(line)

    def _run_info(self) -> dict[str, Any]:
        env = self.environment
        opts = env.parsed_options
        return {
            "label": self.label,
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": env.host,
            "targets": opts.targets or env.host,
            "user_classes": sorted(c.__name__ for c in env.user_classes),
            "plan": [{"users": s.users, "msg_rate": s.rate} for s in self.plan],
            "step_time_s": self.step_time,
            "warmup_s": self.warmup,
            "p99_max_ms": self.p99_max,
            "options": {
                k: getattr(opts, k.replace("-", "_"), None)
                for k in (
                    "msg-rate",
                    "room-size",
                    "talkers",
                    "sockets-per-user",
                    "text-size",
                    "loss-timeout",
                )
            },
            "server_pids": self.server_pids,
            "machine": {
                "nproc": os.cpu_count(),
                "cpu": _cpu_model(),
                "kernel": platform.release(),
                "python": platform.python_version(),
                "locust": locust.__version__,
            },
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        }

    def _write(self, line: dict[str, Any]) -> None:
        if not self.out:
            return
        with open(self.out, "a") as f:
            f.write(json.dumps(line) + "\n")


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None
