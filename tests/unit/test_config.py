"""config.py: flags, environment variables, precedence, and one-line errors naming the option."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, fields

import pytest

from webchat.config import OPTION_NAMES, Config, ConfigError, build_parser, load_config

ALL_OPTIONS = list(OPTION_NAMES)


def test_every_field_is_an_option_but_the_tracing_switch():
    # `tracing` is derived from OpenTelemetry's own variables (test_observability.py).
    assert {f.name for f in fields(Config)} == {*OPTION_NAMES, "tracing"}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def refused(argv: list[str], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(argv, env or {})
    text = str(info.value)
    assert text and "\n" not in text, f"not one line: {text!r}"
    return text


def test_defaults():
    config = load_config([], {})
    assert config == Config()
    assert (config.host, config.port, config.workers) == ("127.0.0.1", 8080, 1)
    assert config.redis_url == "" and config.memory_broker
    assert config.allowed_origins == ()
    assert (config.history_size, config.max_text, config.rate, config.burst) == (1000, 2000, 10, 20)
    assert config.send_buffer == 256 * 1024
    assert (config.presence_grace, config.presence_timeout, config.presence_limit) == (5, 30, 200)
    assert (config.drain_delay, config.drain_spread) == (1.0, 2.0)
    assert config.max_frame == 16384
    assert config.log_level == "info"


def test_config_is_frozen():
    with pytest.raises(FrozenInstanceError):
        load_config([], {}).port = 1  # type: ignore[misc]


GOOD = {
    "host": ("0.0.0.0", "0.0.0.0"),
    "port": ("9000", 9000),
    "workers": ("1", 1),
    "redis_url": ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    # Above 0 it needs --redis-url too: test_replicas_ack_needs_redis.
    "redis_replicas_ack": ("0", 0),
    "allowed_origins": (
        "https://a.example, http://b.example:8080",
        ("https://a.example", "http://b.example:8080"),
    ),
    "history_size": ("50", 50),
    "max_text": ("500", 500),
    "rate": ("2.5", 2.5),
    "burst": ("7", 7),
    "send_buffer": ("64KiB", 64 * 1024),
    "presence_grace": ("0", 0.0),
    "presence_timeout": ("12.5", 12.5),
    "presence_limit": ("3", 3),
    "drain_delay": ("0.5", 0.5),
    "drain_spread": ("0", 0.0),
    "max_frame": ("32768", 32768),
    "heartbeat": ("10", 10.0),
    "log_level": ("DEBUG", "debug"),
}


def test_every_option_is_tested():
    assert set(GOOD) == set(ALL_OPTIONS) == set(BAD)


@pytest.mark.parametrize("name", ALL_OPTIONS)
def test_every_option_has_a_flag(name):
    raw, value = GOOD[name]
    assert getattr(load_config([flag(name), raw], {}), name) == value
    assert getattr(load_config([f"{flag(name)}={raw}"], {}), name) == value


@pytest.mark.parametrize("name", ALL_OPTIONS)
def test_every_option_has_an_env_variable(name):
    raw, value = GOOD[name]
    assert getattr(load_config([], {name.upper(): raw}), name) == value


@pytest.mark.parametrize("name", ALL_OPTIONS)
def test_every_option_is_in_the_help(name):
    text = build_parser().format_help()
    assert flag(name) in text
    assert name.upper() in text


def test_flag_wins_over_env():
    config = load_config(["--port", "9001", "--rate", "3"], {"PORT": "9002", "RATE": "4"})
    assert (config.port, config.rate) == (9001, 3.0)


def test_env_wins_over_default_and_unrelated_env_is_ignored():
    config = load_config([], {"BURST": "5", "PATH": "/bin", "WEBCHAT_PORT": "1"})
    assert config.burst == 5 and config.port == 8080


def test_a_bad_env_value_is_ignored_when_the_flag_is_given():
    assert load_config(["--port", "1"], {"PORT": "nope"}).port == 1


def test_values_are_trimmed():
    config = load_config(["--port", " 81 ", "--log-level", " Warning "], {})
    assert (config.port, config.log_level) == (81, "warning")


@pytest.mark.parametrize(
    ("raw", "size"),
    [
        ("1024", 1024),
        ("2048b", 2048),
        ("256k", 256 * 1024),
        ("256KB", 256 * 1024),
        ("256 KiB", 256 * 1024),
        ("1m", 1024**2),
        ("2MiB", 2 * 1024**2),
    ],
)
def test_sizes(raw, size):
    assert load_config(["--send-buffer", raw], {}).send_buffer == size


@pytest.mark.parametrize(
    "url",
    ["redis://h", "redis://h:6380", "redis://:pw@h:6379/2", "rediss://h/0", "unix:///run/r.sock"],
)
def test_redis_urls(url):
    assert load_config(["--redis-url", url], {}).redis_url == url


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://10.0.0.1:26379/mymaster",
        "redis+sentinel://:s3cret@h1:26379,h2:26379,h3:26380/mymaster/2",
        "redis+sentinel://h1:26379/my-master.1/",
        "redis+cluster://h:7000",
        "redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7000,[::1]:7001",
        "redis+cluster://h:7000/",
    ],
)
def test_sentinel_and_cluster_urls(url):
    assert load_config(["--redis-url", url], {}).redis_url == url


def test_replicas_ack_needs_redis():
    text = refused(["--redis-replicas-ack", "1"])
    assert text.startswith("--redis-replicas-ack:") and "--redis-url" in text
    assert refused([], {"REDIS_REPLICAS_ACK": "2"}).startswith("REDIS_REPLICAS_ACK:")
    config = load_config(
        ["--redis-url", "redis+sentinel://h:26379/m", "--redis-replicas-ack", "2"], {}
    )
    assert config.redis_replicas_ack == 2
    assert (
        load_config([], {"REDIS_URL": "redis://h", "REDIS_REPLICAS_ACK": "1"}).redis_replicas_ack
        == 1
    )


def test_empty_redis_url_means_memory_broker():
    assert load_config(["--redis-url", " "], {}).memory_broker


def test_allowed_origins_star_and_empty_items():
    assert load_config(["--allowed-origins", "*"], {}).allowed_origins == ("*",)
    assert load_config(["--allowed-origins", " , "], {}).allowed_origins == ()
    assert load_config(["--allowed-origins", "http://a,"], {}).allowed_origins == ("http://a",)


def test_workers_need_redis():
    text = refused(["--workers", "2"])
    assert "--workers" in text and "redis" in text.lower()
    assert "WORKERS" in refused([], {"WORKERS": "4"}).upper()
    config = load_config(["--workers", "2", "--redis-url", "redis://h"], {})
    assert config.workers == 2 and not config.memory_broker
    assert load_config([], {"WORKERS": "3", "REDIS_URL": "redis://h"}).workers == 3


BAD: dict[str, list[str]] = {
    "host": ["", " ", "a b"],
    "port": ["-1", "65536", "http", "80.5", ""],
    "workers": ["0", "257", "two"],
    "redis_url": [
        "http://h",
        "redis://",
        "redis://h:port",
        "redis://h:99999",
        "redis://h/db",
        "unix://",
        "h:6379",
        "redis+sentinel://h:26379",
        "redis+sentinel://h:26379/",
        "redis+sentinel://h/mymaster",
        "redis+sentinel://h:26379,:26380/mymaster",
        "redis+sentinel://h:26379,h2:x/mymaster",
        "redis+sentinel://h:26379/my master",
        "redis+sentinel://h:26379/mymaster/db",
        "redis+sentinel://h:26379/mymaster/0/extra",
        "redis+sentinel://pw@h:26379/mymaster",
        "redis+sentinel://h:26379/mymaster?ssl=true",
        "redis+sentinel:///mymaster",
        "redis+cluster://",
        "redis+cluster://h",
        "redis+cluster://h:7000/0",
        "redis+cluster://h:0",
        "redis+cluster://h:7000,h:70000",
        "redis+cluster://::1:7000",
    ],
    "redis_replicas_ack": ["-1", "101", "one", "1.5"],
    "allowed_origins": ["example.com", "http://a.example/", "http://a b", "https://a/path"],
    "history_size": ["0", "-5", "1000001", "many"],
    "max_text": ["0", "100001", "1.5"],
    "rate": ["0", "-1", "nan", "inf", "fast", ""],
    "burst": ["0", "100001", "x"],
    "send_buffer": ["1023", "1KB?", "-1", "lots", "1.5k", "1g"],
    "presence_grace": ["-0.1", "nan", "inf", "soon"],
    "presence_timeout": ["0.5", "-1", "inf"],
    "presence_limit": ["0", "100001", "x"],
    "drain_delay": ["-1", "nan", "x"],
    "drain_spread": ["-1", "inf", "x"],
    "max_frame": ["63", "0", "big"],
    "heartbeat": ["0", "0.5", "nan", "x"],
    "log_level": ["trace", "", "critical", "verbose"],
}
BAD_CASES = [(name, raw) for name, raws in BAD.items() for raw in raws]


@pytest.mark.parametrize(("name", "raw"), BAD_CASES)
def test_bad_flag_value(name, raw):
    text = refused([f"{flag(name)}={raw}"])
    assert text.startswith(f"{flag(name)}:"), text


@pytest.mark.parametrize(("name", "raw"), BAD_CASES)
def test_bad_env_value(name, raw):
    text = refused([], {name.upper(): raw})
    assert text.startswith(f"{name.upper()}:"), text


@pytest.mark.parametrize("raw", ["1\n2", "x\ny", "a\n\nb"])
def test_newlines_in_values_still_give_one_line(raw):
    for name in ("port", "rate", "send_buffer", "host", "allowed_origins", "log_level"):
        refused([f"{flag(name)}={raw}"])


def test_argparse_errors_are_config_errors():
    assert "--nope" in refused(["--nope"])
    assert "--port" in refused(["--port"])
    assert "stray" in refused(["stray"])
