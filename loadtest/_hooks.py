"""Locust event wiring: one Engine per test and process, the settle at the end, distributed mode.

- `init`: options are checked (a bad one stops Locust with one line), remote targets guarded,
  SmallRooms made the default scenario when no user class is named, and the StepLoad shape
  switched on by --steps/--step-rates.
- `test_start` (local runner and every worker): a fresh Engine. `test_stop`: it is closed.
- `test_stopping`: the engine settles (senders stop, stragglers arrive, final judgement). With
  workers, the master asks every worker to settle and waits for their answers, which follow
  their final statistics, before it stops them: a loss found at the end still reaches the
  master's totals and the exit code.
- Workers add their socket count and offered load to each report to the master
  (`report_to_master`), which the step shape reads; the master tells workers a new message rate
  with a custom message.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent
import locust.runners
import locust.stats
from locust import events
from locust.runners import MasterRunner, WorkerRunner

from _engine import Engine, Settings
from _gws import Target, tls_context
from _options import (
    OptionError,
    add_arguments,
    argv,
    check_targets,
    command_line_targets,
    number,
    text_list,
)
from _shape import StepLoad, plan_from
from _tokens import Tokens

log = logging.getLogger("webchat.loadtest")

# Workers report every second rather than every 3: the step shape reads these reports.
locust.runners.WORKER_REPORT_INTERVAL = 1.0

DEFAULT_USER_CLASS = "SmallRooms"
_state: dict[str, Any] = {"engine": None, "reports": {}, "awaiting": set(), "named": set()}


def engine() -> Engine:
    """The running test's engine (users call this in on_start)."""
    current = _state["engine"]
    if current is None:
        raise RuntimeError("no webchat load test is running in this process")
    return current  # type: ignore[no-any-return]


def settings_from(opts: Any) -> Settings:
    """Options to Settings, checked; raises OptionError naming the bad option."""
    n = number
    return Settings(
        msg_rate=n(opts, "msg-rate", float, 0, 10_000),
        room_size=n(opts, "room-size", int, 1, 100_000),
        talkers=n(opts, "talkers", int, 0, 10_000),
        sockets_per_user=n(opts, "sockets-per-user", int, 1, 10_000),
        text_size=n(opts, "text-size", int, 1, 100_000),
        idle_probe=n(opts, "idle-probe", float, 0, 86_400),
        rooms=n(opts, "rooms", int, 1, 1_000_000),
        churn_stay=n(opts, "churn-stay", float, 0.1, 86_400),
        churn_away=n(opts, "churn-away", float, 0, 86_400),
        storm_every=n(opts, "storm-every", float, 0, 86_400),
        storm_at=n(opts, "storm-at", float, 0, 86_400),
        reconnect_base=n(opts, "reconnect-base", float, 0, 60),
        reconnect_cap=n(opts, "reconnect-cap", float, 0, 600),
        connect_timeout=n(opts, "connect-timeout", float, 0.1, 600),
        connect_concurrency=n(opts, "connect-concurrency", int, 1, 10_000),
        ack_timeout=n(opts, "ack-timeout", float, 0.1, 600),
        loss_timeout=n(opts, "loss-timeout", float, 0.1, 600),
        resume_timeout=n(opts, "resume-timeout", float, 0.1, 3600),
    )


def targets_from(environment: Any) -> list[Target]:
    opts = environment.parsed_options
    urls = text_list(opts, "targets") or [environment.host or ""]
    tls = any(url.startswith(("https:", "wss:")) for url in urls)
    ctx = tls_context(bool(opts.insecure), opts.ca_file or None) if tls else None
    return [Target(url, ctx) for url in urls]


events.init_command_line_parser.add_listener(add_arguments)


def _exit(message: str) -> None:
    raise SystemExit(f"webchat locustfile: {message}")


@events.init.add_listener
def _on_init(environment: Any, runner: Any, **_kwargs: Any) -> None:
    # gevent's loop caches the time of its last turn, and it has not turned since it was made,
    # before Locust imported everything: --run-time, scheduled next from that cached time, would
    # end the run early by however long start-up took (seconds on a busy machine).
    gevent.get_hub().loop.update_now()
    opts = environment.parsed_options
    if opts is None:  # used as a library
        return
    try:
        settings_from(opts)
        Tokens.from_options(opts)  # a secret file that cannot be used, early
        plan = plan_from(opts)
        if not isinstance(runner, WorkerRunner):
            urls = text_list(opts, "targets") or ([opts.host] if opts.host else [])
            _state["named"] = command_line_targets(argv())
            if opts.headless or opts.autostart:
                if not urls:
                    raise OptionError("no host: give --host http://HOST:PORT")
                check_targets(urls, _state["named"], bool(opts.allow_remote))
            for url in urls:
                Target(url)  # the URL's shape, early
    except (OptionError, ValueError) as exc:
        _exit(str(exc))
    if isinstance(runner, WorkerRunner):
        runner.register_message("webchat_rate", _on_rate_message)
        runner.register_message("webchat_settle", _on_settle_message, concurrent=True)
        return
    if isinstance(runner, MasterRunner):
        runner.register_message("webchat_settled", _on_settled_message)
    if not opts.user_classes:
        default = environment.available_user_classes.get(DEFAULT_USER_CLASS)
        if default is not None:
            environment.user_classes[:] = [default]
    if plan:
        shape = StepLoad(plan, environment, fleet=fleet, set_rate=set_rate)
        shape.runner = runner
        environment.shape_class = shape


@events.test_start.add_listener
def _on_test_start(environment: Any, **_kwargs: Any) -> None:
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        _state["reports"] = {}
        return
    old = _state["engine"]
    if old is not None:
        old.close()
    settings = settings_from(environment.parsed_options)
    tokens = Tokens.from_options(environment.parsed_options)
    _state["engine"] = Engine(environment, settings, targets_from(environment), tokens)


@events.test_stopping.add_listener
def _on_test_stopping(environment: Any, **_kwargs: Any) -> None:
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        _settle_workers(runner, settings_from(environment.parsed_options).loss_timeout)
    elif _state["engine"] is not None:
        _state["engine"].settle()


@events.test_stop.add_listener
def _on_test_stop(environment: Any, **_kwargs: Any) -> None:
    current = _state["engine"]
    if current is not None:
        _state["engine"] = None
        current.close()


@events.quitting.add_listener
def _on_quitting(environment: Any, **_kwargs: Any) -> None:
    # Locust rewrites its --csv files every CSV_STATS_INTERVAL_SEC and closes them at exit
    # without a last write: give the writer one more turn, so the CSV has the final counts
    # (the settle's last judgement included) and agrees with the summary.
    opts = environment.parsed_options
    if opts is not None and opts.csv_prefix and not isinstance(environment.runner, WorkerRunner):
        gevent.sleep(locust.stats.CSV_STATS_INTERVAL_SEC + 0.2)


@events.report_to_master.add_listener
def _on_report_to_master(client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
    current = _state["engine"]
    if current is not None:
        data["webchat"] = current.report()


@events.worker_report.add_listener
def _on_worker_report(client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
    if "webchat" in data:
        _state["reports"][client_id] = data["webchat"]


def fleet(runner: Any) -> dict[str, Any]:
    """Sockets and offered load of the whole test: this process's, or all workers' reports."""
    if isinstance(runner, MasterRunner):
        reports = list(_state["reports"].values())
    else:
        current = _state["engine"]
        reports = [current.report()] if current is not None else []
    out = {"sockets": 0, "msgs_per_s": 0.0, "deliveries_per_s": 0.0, "processes": len(reports)}
    for report in reports:
        for key in ("sockets", "msgs_per_s", "deliveries_per_s"):
            out[key] += report.get(key, 0)
    return out


def set_rate(runner: Any, rate: float) -> None:
    """A new --msg-rate for every talking client of the test."""
    if isinstance(runner, MasterRunner):
        runner.send_message("webchat_rate", {"rate": rate})
    elif _state["engine"] is not None:
        _state["engine"].rate = rate


def _on_rate_message(environment: Any, msg: Any, **_kwargs: Any) -> None:
    if _state["engine"] is not None:
        _state["engine"].rate = float(msg.data["rate"])


def _on_settle_message(environment: Any, msg: Any, **_kwargs: Any) -> None:
    runner = environment.runner
    if _state["engine"] is not None:
        _state["engine"].settle()
    # The final counts go to the master before the answer (one connection, in order).
    send_stats = getattr(runner, "_send_stats", None)
    if send_stats is not None:
        send_stats()
    runner.send_message("webchat_settled", {})


def _on_settled_message(environment: Any, msg: Any, **_kwargs: Any) -> None:
    _state["awaiting"].discard(msg.node_id)


def _settle_workers(runner: MasterRunner, loss_timeout: float) -> None:
    workers = [w.id for w in runner.clients.values() if w.state in ("running", "spawning")]
    if not workers:
        return
    _state["awaiting"] = set(workers)
    for worker in workers:
        runner.send_message("webchat_settle", {}, client_id=worker)
    deadline = time.monotonic() + loss_timeout + 10
    while _state["awaiting"] and time.monotonic() < deadline:
        gevent.sleep(0.05)
    if _state["awaiting"]:
        log.warning("workers %s did not settle in time", sorted(_state["awaiting"]))
