"""The locustfile's command-line options (each also an environment variable) and the host guard.

Every option is `--name` on the command line or `LOCUST_NAME` in the environment (Locust's own
config files work too); _hooks.py registers them with Locust's parser. Values are checked when
Locust starts; a bad one stops it with one line that names the option. Pure (no locust import),
so tests/loadtest/ unit-tests it.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import _tokens

# (name, type, default, help). Rates are messages per second per talking client.
OPTIONS: list[tuple[str, type, Any, str]] = [
    (
        "msg-rate",
        float,
        1.0,
        "messages/s each talking client sends (SmallRooms, BusyRoom "
        "talkers, Churn, ReconnectStorm); 0: nobody talks",
    ),
    ("room-size", int, 10, "clients per room (SmallRooms, ReconnectStorm); a room talks once full"),
    ("talkers", int, 5, "BusyRoom: talkers in each busy room"),
    ("sockets-per-user", int, 50, "BusyRoom listeners and IdleConnections sockets per Locust user"),
    ("text-size", int, 64, "message text length in characters (at least the marker's ~30)"),
    (
        "idle-probe",
        float,
        10.0,
        "IdleConnections: seconds between probe messages per room (0: none)",
    ),
    ("rooms", int, 10, "Churn: rooms the churning clients move between"),
    ("churn-stay", float, 10.0, "Churn: mean seconds a client stays in a room"),
    ("churn-away", float, 2.0, "Churn: mean seconds a client stays away"),
    ("storm-every", float, 30.0, "ReconnectStorm: seconds between storms (every client drops)"),
    ("storm-at", float, 0.0, "ReconnectStorm: seconds to the first storm (0: --storm-every)"),
    ("reconnect-base", float, 0.25, "backoff of reconnects: full jitter in [0, base * 2^n]"),
    ("reconnect-cap", float, 5.0, "backoff cap, seconds"),
    (
        "targets",
        str,
        "",
        "comma-separated base URLs to spread clients over (several instances "
        "without a load balancer); default: --host",
    ),
    ("insecure", bool, False, "https/wss: accept any certificate (a self-signed one)"),
    ("ca-file", str, "", "https/wss: trust this CA bundle (PEM) instead of the system's"),
    (
        "allow-remote",
        bool,
        False,
        "allow a non-loopback host that did not come from --host on "
        "the command line or the web UI (e.g. from LOCUST_HOST or a config file)",
    ),
    ("connect-timeout", float, 15.0, "seconds from TCP connect to welcome"),
    ("connect-concurrency", int, 50, "handshakes in flight per Locust user"),
    ("ack-timeout", float, 10.0, "seconds before a message without echo or error is unanswered"),
    (
        "loss-timeout",
        float,
        5.0,
        "seconds after its echo before a message missing at a receiver counts as lost",
    ),
    ("resume-timeout", float, 30.0, "seconds a resume may take before it is a failure"),
    # Step load (the StepLoad shape is used when --steps or --step-rates is given).
    ("steps", str, "", "step load: comma-separated Locust user counts, one per step"),
    ("step-rates", str, "", "step load: comma-separated --msg-rate values, one per step"),
    ("step-time", float, 30.0, "step load: measured seconds per step"),
    ("step-warmup", float, 5.0, "step load: seconds at a step's load before measuring"),
    ("p99-max", float, 50.0, "step load: a step whose delivery p99 exceeds this (ms) is bad"),
    ("step-out", str, "", "step load: append one JSON line per step to this file"),
    ("label", str, "", "step load: a name for this run in the step file and the report"),
    ("server-pids", str, "", "step load: comma-separated PIDs of the server (CPU from /proc)"),
    ("server-parent", str, "", "step load: PID of `webchat --workers N`; its workers are added"),
    (
        "metrics-urls",
        str,
        "",
        "step load: comma-separated /metrics URLs; server CPU from their "
        "process_cpu_seconds_total when they export it",
    ),
]


def add_arguments(parser: Any) -> None:
    """Add OPTIONS to Locust's (configargparse) parser."""
    group = parser.add_argument_group("webchat", "webchat load tests (see loadtest/locustfile.py)")
    _tokens.add_arguments(group)  # authenticated deployments: users sign their own tokens
    for name, kind, default, text in OPTIONS:
        env = "LOCUST_" + name.upper().replace("-", "_")
        if kind is bool:
            group.add_argument(
                f"--{name}", action="store_true", default=False, env_var=env, help=text
            )
        else:
            group.add_argument(f"--{name}", type=str, default=str(default), env_var=env, help=text)


class OptionError(ValueError):
    """A bad option value; the message names the option."""


def number(opts: Any, name: str, kind: type = float, low: float = 0.0, high: float = 1e9) -> Any:
    raw = getattr(opts, name.replace("-", "_"))
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        raise OptionError(f"--{name}: expected a {kind.__name__}, got {raw!r}") from None
    if not low <= value <= high:
        raise OptionError(f"--{name}: must be between {low:g} and {high:g}, got {raw!r}")
    return value


def number_list(opts: Any, name: str, kind: type = float, low: float = 0.0) -> list[Any]:
    raw = str(getattr(opts, name.replace("-", "_")) or "")
    try:
        values = [kind(x) for x in raw.split(",") if x.strip()]
    except ValueError:
        raise OptionError(f"--{name}: expected comma-separated numbers, got {raw!r}") from None
    if any(v < low for v in values):
        raise OptionError(f"--{name}: every value must be at least {low:g}, got {raw!r}")
    return values


def text_list(opts: Any, name: str) -> list[str]:
    raw = str(getattr(opts, name.replace("-", "_")) or "")
    return [x.strip() for x in raw.split(",") if x.strip()]


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_from_command_line(argv: Sequence[str]) -> str | None:
    """The value of -H/--host given on the command line itself, if any."""
    for i, arg in enumerate(argv):
        if arg in ("-H", "--host") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--host="):
            return arg.split("=", 1)[1]
        if arg.startswith("-H") and len(arg) > 2 and not arg.startswith("--"):
            return arg[2:]
    return None


def check_targets(urls: Sequence[str], named: set[str], allow_remote: bool) -> None:
    """Refuse a non-loopback target that nobody named on purpose.

    A target is named on purpose when it is the --host of the command line, one of --targets
    on the command line, or typed into the web UI (`named` holds those). One that came only
    from the environment or a config file needs --allow-remote: a load test must not hit a
    host by accident.
    """
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
            raise OptionError(
                f"host {url!r}: expected http(s)://host[:port] or ws(s)://host[:port]"
            )
        if is_loopback(parts.hostname) or allow_remote or url.rstrip("/") in named:
            continue
        raise OptionError(
            f"host {parts.hostname!r} is not loopback and was not given with --host or --targets "
            "on the command line (nor in the web UI); pass --allow-remote to load it"
        )


def command_line_targets(argv: Sequence[str]) -> set[str]:
    named: set[str] = set()
    host = host_from_command_line(argv)
    if host:
        named.add(host.rstrip("/"))
    for i, arg in enumerate(argv):
        value = None
        if arg == "--targets" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--targets="):
            value = arg.split("=", 1)[1]
        if value:
            named.update(x.strip().rstrip("/") for x in value.split(",") if x.strip())
    return named


def argv() -> list[str]:
    return list(sys.argv[1:])
