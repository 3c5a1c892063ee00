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
    redis_pool: int = 64
    allowed_origins: tuple[str, ...] = ()
    history_size: int = 1000
    room_ttl: float = 7 * 24 * 3600.0
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
    # Hardening (docs/security.md): bounds on what one client can hold.
    send_timeout: float = 5.0
    api_concurrency: int = 16
    api_max_bytes: int = 1024 * 1024
    api_timeout: float = 10.0
    header_timeout: float = 10.0
    max_connections: int = 0  # 0: derived from the file-descriptor limit (limits.py)
    max_loop_lag: float = 0.5
    gc_after: int = 1000  # collector.py: a full collection after this many closed sockets
    allowed_hosts: tuple[str, ...] = ()  # empty: any Host
    # Authenticated mode (PROTOCOL.md 1.1 "Identity"): at most one key source; none at all
    # is anonymous mode. Files are read by the node (auth.py), so secrets stay out of `ps`.
    auth_secret_file: str = ""
    auth_public_key_file: str = ""
    auth_jwks_url: str = ""
    auth_audience: str = ""
    auth_issuer: str = ""
    auth_leeway: float = 30.0
    auth_token_url: str = ""
    # Derived, not an option: OpenTelemetry's own variables switch tracing on (see
    # tracing_requested); the SDK reads the rest of them itself.
    tracing: bool = False

    @property
    def memory_broker(self) -> bool:
        return not self.redis_url

    @property
    def authenticated(self) -> bool:
        """Whether every client must bring a token (a key source is configured)."""
        return bool(self.auth_secret_file or self.auth_public_key_file or self.auth_jwks_url)


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


# A host name (letters, digits, '-', '.'; a trailing dot is dropped), an IPv4 address, or an
# IPv6 address in brackets, as the Host header spells them (without the port).
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")
_HOST_V6 = re.compile(r"\[[0-9a-f:.]{2,45}\]")


def _hosts(raw: str) -> tuple[str, ...]:
    hosts = tuple(item.strip().lower().rstrip(".") for item in raw.split(",") if item.strip())
    for host in hosts:
        if not (_HOST_NAME.fullmatch(host) or _HOST_V6.fullmatch(host)):
            raise ValueError(
                f"{host!r} is not a host name; expected names such as chat.example.com "
                "(no scheme, no port), comma-separated"
            )
    return hosts


def _file(raw: str) -> str:
    path = raw.strip()
    if not path:
        return ""
    if any(not c.isprintable() for c in path):
        raise ValueError("expected a file path without control characters")
    return path


def _jwks_url(raw: str) -> str:
    url = raw.strip()
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # raises on a non-numeric or out-of-range port
    except ValueError as exc:
        raise ValueError(f"malformed URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
    return url


def _claim(raw: str) -> str:
    value = raw.strip()
    if any(not c.isprintable() for c in value):
        raise ValueError("must not contain control characters")
    return value


def _same_origin_path(raw: str) -> str:
    path = raw.strip()
    if not path:
        return ""
    # A path on this origin, not a URL: the browser fetches it with the user's cookies.
    if not path.startswith("/") or path.startswith("//") or any(c.isspace() for c in path):
        raise ValueError(f"expected a path on this origin such as /auth/token, got {raw!r}")
    if any(c in path for c in "\"<>'`") or any(not c.isprintable() for c in path):
        raise ValueError(f"the path {raw!r} holds characters a URL path cannot")
    return path


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
    "redis_pool": (_int(1, 10_000), "Redis connections per process for requests; others wait"),
    "allowed_origins": (_origins, "comma-separated origins allowed besides same-origin; * = any"),
    "history_size": (_int(1, 1_000_000), "messages of history kept per room"),
    "room_ttl": (_float(1), "seconds an idle room (no message, no member) keeps its history"),
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
    "send_timeout": (
        _float(0.5),
        "seconds unsent data may wait in a client's send buffer before it is closed 1013",
    ),
    "api_concurrency": (_int(1, 10_000), "HTTP API requests served at once; more get 503"),
    "api_max_bytes": (_size(64 * 1024), "largest HTTP API answer; a longer page is cut short"),
    "api_timeout": (_float(0.5), "seconds a client may take to read an HTTP API answer"),
    "header_timeout": (_float(0.5), "seconds a new connection may take to send its headers"),
    "max_connections": (
        _int(0, 10_000_000),
        "WebSocket connections served at once; more get 503 (0: from the descriptor limit)",
    ),
    "max_loop_lag": (
        _float(0),
        "event-loop lag (seconds) above which new upgrades get 503 (0: never)",
    ),
    "gc_after": (
        _int(0, 10_000_000),
        "closed sockets (at least a quarter of those open) after which garbage is collected"
        " in full (0: never)",
    ),
    "allowed_hosts": (_hosts, "comma-separated Host names served; others get 421 (empty: any)"),
    "auth_secret_file": (_file, "file holding the HS256 secret of signed tokens (auth mode)"),
    "auth_public_key_file": (_file, "PEM public key verifying tokens: RS256 or ES256 by type"),
    "auth_jwks_url": (_jwks_url, "JWKS URL of the keys verifying tokens (RS256/ES256)"),
    "auth_audience": (_claim, "the aud claim tokens must have; empty = not checked"),
    "auth_issuer": (_claim, "the iss claim tokens must have; empty = not checked"),
    "auth_leeway": (_float(0), "seconds of clock skew allowed on exp, nbf and iat"),
    "auth_token_url": (_same_origin_path, "path the browser client fetches its token from"),
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
            default = ",".join(default) or (
                "any" if name == "allowed_hosts" else "same origin only"
            )
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
    if not config.memory_broker and config.room_ttl < 3 * config.presence_timeout:
        # On Redis a room with members is kept alive by the presence refresh, every third of the
        # presence timeout; a shorter TTL could expire a room between two refreshes.
        source = sources.get("room_ttl") or sources.get("presence_timeout", "--room-ttl")
        raise ConfigError(
            f"{source}: with Redis the room TTL ({config.room_ttl:g} s) must be at least "
            f"3 x the presence timeout ({3 * config.presence_timeout:g} s)"
        )
    _check_auth(config, sources)
    return config


_KEY_SOURCES = ("auth_secret_file", "auth_public_key_file", "auth_jwks_url")


def _check_auth(config: Config, sources: Mapping[str, str]) -> None:
    """At most one key source, its file usable; the other auth options only with one."""
    given = [name for name in _KEY_SOURCES if getattr(config, name)]
    if len(given) > 1:
        raise ConfigError(
            f"{sources[given[0]]} and {sources[given[1]]}: give one key source, not several"
        )
    if not given:
        for name in ("auth_audience", "auth_issuer", "auth_token_url"):
            if getattr(config, name):
                raise ConfigError(
                    f"{sources[name]}: only used in authenticated mode; also give "
                    "--auth-secret-file, --auth-public-key-file or --auth-jwks-url"
                )
        return
    from webchat.auth import check_config  # PyJWT and cryptography only when needed

    try:
        check_config(config)
    except ValueError as exc:
        raise ConfigError(f"{sources[given[0]]}: {exc}") from None


assert {f.name for f in fields(Config)} - {"tracing"} == set(_OPTIONS), "fields are options"
