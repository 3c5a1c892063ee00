"""Service configuration: one frozen dataclass built from CLI flags and the environment.

Nothing else in the service reads the environment. Every option has a flag, an environment
variable and a default; a flag wins over the variable. A bad value raises `ConfigError` whose
text is one line naming the option and what is wrong, so the CLI can print it and exit 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from webchat.redis_url import parse_redis_url


class ConfigError(ValueError):
    """A configuration value is invalid; the text names the option and the problem."""


@dataclass(frozen=True, slots=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    redis_url: str = ""
    redis_replicas_ack: int = 0
    allowed_origins: tuple[str, ...] = ()
    history_size: int = 1000
    max_text: int = 2000
    rate: float = 10.0
    burst: int = 20
    send_buffer: int = 256 * 1024
    presence_grace: float = 5.0
    presence_timeout: float = 30.0
    presence_limit: int = 200
    drain_delay: float = 1.0
    drain_spread: float = 2.0
    max_frame: int = 16384
    heartbeat: float = 25.0
    log_level: str = "info"
    # Derived, not an option: OpenTelemetry's own variables switch tracing on (see
    # tracing_requested); the SDK reads the rest of them itself.
    tracing: bool = False

    @property
    def memory_broker(self) -> bool:
        return not self.redis_url


def _int(low: int, high: int | None = None) -> Callable[[str], int]:
    def convert(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"expected a whole number, got {raw!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bound}, got {value}")
        return value

    return convert


def _float(low: float, *, strict: bool = False) -> Callable[[str], float]:
    def convert(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"expected a number, got {raw!r}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            relation = "greater than" if strict else "at least"
            raise ValueError(f"must be a finite number {relation} {low:g}, got {raw.strip()}")
        return value

    return convert


_SIZE = re.compile(r"^\s*(\d+)\s*(b|k|kb|kib|m|mb|mib)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2}
_UNITS["mib"] = 1024**2


def _size(low: int) -> Callable[[str], int]:
    def convert(raw: str) -> int:
        match = _SIZE.match(raw)
        if not match:
            raise ValueError(f"expected a size in bytes such as 262144 or 256KiB, got {raw!r}")
        value = int(match[1]) * _UNITS[(match[2] or "").lower()]
        if value < low:
            raise ValueError(f"must be at least {low} bytes, got {value}")
        return value

    return convert


def _host(raw: str) -> str:
    host = raw.strip()
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"expected a host name or IP address, got {raw!r}")
    return host


def _redis_url(raw: str) -> str:
    url = raw.strip()
    if url:
        parse_redis_url(url)  # raises ValueError saying what is wrong
    return url


_ORIGIN = re.compile(r"^[a-z][a-z0-9+.-]*://[^/\s?#]+$", re.IGNORECASE)


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(item.strip() for item in raw.split(",") if item.strip())
    for origin in origins:
        if origin != "*" and not _ORIGIN.match(origin):
            raise ValueError(f"{origin!r} is not an origin; expected scheme://host[:port] or *")
    return origins


def _log_level(raw: str) -> str:
    level = raw.strip().lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ValueError(f"expected debug, info, warning or error, got {raw!r}")
    return level


# option name -> (converter, help). The env variable is the option name upper-cased.
_OPTIONS: dict[str, tuple[Callable[[str], Any], str]] = {
    "host": (_host, "address to listen on"),
    "port": (_int(0, 65535), "TCP port to listen on (0 picks a free one)"),
    "workers": (_int(1, 256), "worker processes sharing the port (needs --redis-url)"),
    "redis_url": (
        _redis_url,
        "Redis URL (redis://, rediss://, redis+sentinel://, redis+cluster://); empty = in-memory",
    ),
    "redis_replicas_ack": (
        _int(0, 100),
        "acknowledge a message once this many replicas have it (WAIT); 0 = once the master has",
    ),
    "allowed_origins": (_origins, "comma-separated origins allowed besides same-origin; * = any"),
    "history_size": (_int(1, 1_000_000), "messages of history kept per room"),
    "max_text": (_int(1, 100_000), "longest message text, in code points"),
    "rate": (_float(0, strict=True), "messages per second refilled into each token bucket"),
    "burst": (_int(1, 100_000), "token bucket size per connection"),
    "send_buffer": (_size(1024), "bytes buffered per connection before it is closed 1013"),
    "presence_grace": (_float(0), "seconds without a connection before a name leaves"),
    "presence_timeout": (_float(1), "seconds before members of a dead instance leave"),
    "presence_limit": (_int(1, 100_000), "rooms larger than this get no presence frames"),
    "drain_delay": (_float(0), "seconds to keep serving after SIGTERM before closing"),
    "drain_spread": (_float(0), "seconds over which clients are closed with 1012"),
    "max_frame": (_size(64), "largest client frame payload accepted; larger closes 1009"),
    "heartbeat": (_float(1), "seconds between WebSocket pings to detect dead clients"),
    "log_level": (_log_level, "debug, info, warning or error"),
}

# Every option's name; each has a flag and an environment variable (the name upper-cased).
OPTION_NAMES = tuple(_OPTIONS)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own errors, e.g. an unknown flag
        # argparse echoes arguments unquoted: escape what would break the one-line rule.
        raise ConfigError("".join(c if c.isprintable() else repr(c)[1:-1] for c in message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="webchat", description="Real-time group chat service.")
    defaults = Config()
    for name, (_, help_text) in _OPTIONS.items():
        default = getattr(defaults, name)
        if isinstance(default, tuple):
            default = ",".join(default) or "same origin only"
        parser.add_argument(
            _flag(name),
            dest=name,
            metavar=name.upper(),
            default=None,
            help=f"{help_text} (env {name.upper()}, default {default!r})",
        )
    return parser


# OTEL_TRACES_SAMPLER values the SDK knows (opentelemetry.sdk.trace.sampling).
_SAMPLERS = {
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
}


def tracing_requested(env: Mapping[str, str]) -> bool:
    """Whether OpenTelemetry's standard variables switch tracing on; ConfigError if they are
    set to something this service cannot do.

    On: OTEL_EXPORTER_OTLP_ENDPOINT (or _TRACES_ENDPOINT) is set, or OTEL_TRACES_EXPORTER is
    `otlp`. Off: neither, or OTEL_TRACES_EXPORTER=none, or OTEL_SDK_DISABLED=true. The export
    is OTLP over HTTP/protobuf, the one exporter installed with the `tracing` extra.
    """
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER")
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if exporter is not None and exporter.strip():
        names = {name.strip().lower() for name in exporter.split(",") if name.strip()}
        if names - {"otlp", "none"}:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER: only otlp (or none) is supported, got {exporter!r}"
            )
        if "otlp" not in names:
            return False
    elif not endpoint:
        return False
    if endpoint:
        parts = urlsplit(endpoint.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            source = (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
                if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                else "OTEL_EXPORTER_OTLP_ENDPOINT"
            )
            raise ConfigError(f"{source}: expected an http:// or https:// URL, got {endpoint!r}")
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(name, "").strip()
        if protocol and protocol != "http/protobuf":
            raise ConfigError(f"{name}: only http/protobuf is supported, got {protocol!r}")
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if sampler and sampler not in _SAMPLERS:
        raise ConfigError(
            f"OTEL_TRACES_SAMPLER: expected one of {', '.join(sorted(_SAMPLERS))}, got {sampler!r}"
        )
    ratio = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if ratio and sampler.endswith("traceidratio"):
        try:
            valid = 0.0 <= float(ratio) <= 1.0
        except ValueError:
            valid = False
        if not valid:
            raise ConfigError(
                f"OTEL_TRACES_SAMPLER_ARG: expected a ratio from 0 to 1, got {ratio!r}"
            )
    for module in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"):
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                "tracing is switched on by the OTEL_ variables, but OpenTelemetry is not "
                "installed: pip install 'webchat[tracing]'"
            )
    return True


def load_config(argv: Sequence[str], env: Mapping[str, str]) -> Config:
    """Build the Config from flags, then environment variables, then defaults."""
    args = vars(build_parser().parse_args(list(argv)))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, (convert, _) in _OPTIONS.items():
        raw, source = args.get(name), _flag(name)
        if raw is None and name.upper() in env:
            raw, source = env[name.upper()], name.upper()
        if raw is None:
            continue
        sources[name] = source
        try:
            values[name] = convert(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    config = Config(**values, tracing=tracing_requested(env))
    if config.workers > 1 and config.memory_broker:
        raise ConfigError(
            f"{sources['workers']}: more than one worker needs --redis-url "
            "(the in-memory broker cannot be shared between processes)"
        )
    if config.redis_replicas_ack and config.memory_broker:
        raise ConfigError(
            f"{sources['redis_replicas_ack']}: replica acknowledgements need --redis-url "
            "(a Redis master with replicas)"
        )
    return config


assert {f.name for f in fields(Config)} - {"tracing"} == set(_OPTIONS), "fields are options"
