"""config.py: flags, environment variables, precedence, and one-line errors naming the option."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, fields
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from webchat.config import OPTION_NAMES, Config, ConfigError, build_parser, load_config

ALL_OPTIONS = list(OPTION_NAMES)


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, private: bool = False) -> bytes:
    if private:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="session")
def key_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Key files for the auth options, written once: `{name}` in a value is replaced by one."""
    folder: Path = tmp_path_factory.mktemp("keys")
    rsa_key = rsa.generate_private_key(65537, 2048)
    contents = {
        "secret": b"s3cret-" * 6 + b"\n",
        "short_secret": b"0123456789\n",
        "empty": b"",
        "public_key": _pem(rsa_key),
        "private_key": _pem(rsa_key, private=True),
        "p384": _pem(ec.generate_private_key(ec.SECP384R1())),
        "rsa1024": _pem(rsa.generate_private_key(65537, 1024)),
        "not_pem": b"-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n",
    }
    paths = {}
    for name, data in contents.items():
        (folder / name).write_bytes(data)
        paths[name] = str(folder / name)
    return paths


# Options that mean something only in authenticated mode are set with a key source.
NEEDS_KEY_SOURCE = {"auth_audience", "auth_issuer", "auth_token_url"}


@pytest.fixture
def with_keys(key_files: dict[str, str]):
    """(argv, env) of an option's raw value, `{name}` filled in with a key file, plus a key
    source when the option needs one."""

    def fill(name: str, raw: str) -> tuple[str, list[str], dict[str, str]]:
        raw = raw.format(**key_files)
        if name in NEEDS_KEY_SOURCE:
            return raw, ["--auth-secret-file", key_files["secret"]], {}
        return raw, [], {}

    return fill


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
    assert config.room_ttl == 7 * 24 * 3600 and config.redis_pool == 64
    # Hardening bounds (docs/security.md).
    assert (config.send_timeout, config.api_concurrency, config.api_max_bytes) == (
        5.0,
        16,
        1024**2,
    )
    assert (config.api_timeout, config.header_timeout, config.max_loop_lag) == (10, 10, 0.5)
    assert config.max_connections == 0  # derived from the descriptor limit (limits.py)
    assert config.allowed_hosts == ()  # any Host


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
    "redis_pool": ("8", 8),
    "allowed_origins": (
        "https://a.example, http://b.example:8080",
        ("https://a.example", "http://b.example:8080"),
    ),
    "history_size": ("50", 50),
    "room_ttl": ("3600", 3600.0),
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
    "send_timeout": ("2.5", 2.5),
    "api_concurrency": ("4", 4),
    "api_max_bytes": ("2MiB", 2 * 1024**2),
    "api_timeout": ("3", 3.0),
    "header_timeout": ("0.5", 0.5),
    "max_connections": ("5000", 5000),
    "max_loop_lag": ("0", 0.0),
    "gc_after": ("0", 0),
    "allowed_hosts": (
        "Chat.Example.com., 127.0.0.1, [::1]",
        ("chat.example.com", "127.0.0.1", "[::1]"),
    ),
    "auth_secret_file": ("{secret}", "{secret}"),
    "auth_public_key_file": (" {public_key} ", "{public_key}"),
    "auth_jwks_url": (
        "https://id.example/.well-known/jwks.json",
        "https://id.example/.well-known/jwks.json",
    ),
    "auth_audience": ("webchat", "webchat"),
    "auth_issuer": ("https://id.example/", "https://id.example/"),
    "auth_leeway": ("5", 5.0),
    "auth_token_url": ("/auth/token?for=chat", "/auth/token?for=chat"),
}


def test_every_option_is_tested():
    assert set(GOOD) == set(ALL_OPTIONS) == set(BAD)


@pytest.mark.parametrize("name", ALL_OPTIONS)
def test_every_option_has_a_flag(name, with_keys, key_files):
    raw, value = GOOD[name]
    raw, argv, _ = with_keys(name, raw)
    if isinstance(value, str):
        value = value.format(**key_files)
    assert getattr(load_config([*argv, flag(name), raw], {}), name) == value
    assert getattr(load_config([*argv, f"{flag(name)}={raw}"], {}), name) == value


@pytest.mark.parametrize("name", ALL_OPTIONS)
def test_every_option_has_an_env_variable(name, with_keys, key_files):
    raw, value = GOOD[name]
    raw, argv, _ = with_keys(name, raw)
    if isinstance(value, str):
        value = value.format(**key_files)
    assert getattr(load_config(argv, {name.upper(): raw}), name) == value


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
    "room_ttl": ["0", "0.5", "-1", "inf", "nan", "7d", ""],
    "redis_pool": ["0", "10001", "1.5", "many"],
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
    "send_timeout": ["0.4", "0", "-1", "nan", "x"],
    "api_concurrency": ["0", "10001", "many"],
    "api_max_bytes": ["65535", "1g", "x"],
    "api_timeout": ["0", "0.4", "inf", "x"],
    "header_timeout": ["0", "-1", "inf", "x"],
    "max_connections": ["-1", "10000001", "1.5", "lots"],
    "max_loop_lag": ["-0.1", "nan", "inf", "x"],
    "gc_after": ["-1", "10000001", "1.5", "often"],
    "allowed_hosts": [
        "http://chat.example.com",
        "chat.example.com:443",
        "a b",
        "chat.example.com/",
        "*",
        "-bad.example",
        "[::1",
    ],
    "auth_secret_file": ["/nonexistent/secret", "{short_secret}", "{empty}", "a\x01b"],
    "auth_public_key_file": [
        "/nonexistent/key.pem",
        "{secret}",
        "{not_pem}",
        "{private_key}",
        "{p384}",
        "{rsa1024}",
    ],
    "auth_jwks_url": ["ftp://id.example/jwks", "http://", "jwks.json", "https://h:port/jwks"],
    "auth_audience": ["a\x01b"],
    "auth_issuer": ["iss\x7f"],
    "auth_leeway": ["-1", "nan", "x"],
    "auth_token_url": ["auth/token", "//evil.example/token", "https://x/token", "/a b", '/a"b'],
}
BAD_CASES = [(name, raw) for name, raws in BAD.items() for raw in raws]


@pytest.mark.parametrize(("name", "raw"), BAD_CASES)
def test_bad_flag_value(name, raw, key_files):
    text = refused([f"{flag(name)}={raw.format(**key_files)}"])
    assert text.startswith(f"{flag(name)}:"), text


@pytest.mark.parametrize(("name", "raw"), BAD_CASES)
def test_bad_env_value(name, raw, key_files):
    text = refused([], {name.upper(): raw.format(**key_files)})
    assert text.startswith(f"{name.upper()}:"), text


@pytest.mark.parametrize(
    ("name", "raw", "says"),
    [
        ("auth_secret_file", "{short_secret}", "at least 32"),
        ("auth_secret_file", "/nonexistent/secret", "No such file"),
        ("auth_public_key_file", "{private_key}", "private key"),
        ("auth_public_key_file", "{p384}", "P-256"),
        ("auth_public_key_file", "{rsa1024}", "2048"),
        ("auth_public_key_file", "{not_pem}", "not a PEM"),
    ],
)
def test_a_bad_key_file_says_why(name, raw, says, key_files):
    assert says in refused([f"{flag(name)}={raw.format(**key_files)}"])


def test_one_key_source_at_most(key_files):
    text = refused(
        ["--auth-secret-file", key_files["secret"], "--auth-jwks-url", "https://id.example/j"]
    )
    assert text.startswith("--auth-secret-file and --auth-jwks-url:"), text
    assert "AUTH_PUBLIC_KEY_FILE" in refused(
        ["--auth-secret-file", key_files["secret"]],
        {"AUTH_PUBLIC_KEY_FILE": key_files["public_key"]},
    )


@pytest.mark.parametrize("name", sorted(NEEDS_KEY_SOURCE))
def test_auth_options_without_a_key_source_are_refused(name):
    # Otherwise a misspelt key variable would leave the service open (anonymous mode).
    raw = GOOD[name][0]
    text = refused([f"{flag(name)}={raw}"])
    assert text.startswith(f"{flag(name)}:") and "authenticated mode" in text, text


def test_authenticated_mode_is_any_key_source(key_files):
    assert not Config().authenticated
    assert load_config(["--auth-public-key-file", key_files["public_key"]], {}).authenticated
    assert load_config([], {"AUTH_JWKS_URL": "http://127.0.0.1:1/jwks"}).authenticated
    config = load_config([], {"AUTH_SECRET_FILE": key_files["secret"]})
    assert config.authenticated and config.auth_leeway == 30.0


@pytest.mark.parametrize("raw", ["1\n2", "x\ny", "a\n\nb"])
def test_newlines_in_values_still_give_one_line(raw):
    for name in ("port", "rate", "send_buffer", "host", "allowed_origins", "log_level"):
        refused([f"{flag(name)}={raw}"])


def test_argparse_errors_are_config_errors():
    assert "--nope" in refused(["--nope"])
    assert "--port" in refused(["--port"])
    assert "stray" in refused(["stray"])


def test_room_ttl_with_redis_outlasts_three_presence_timeouts():
    redis = ["--redis-url", "redis://h"]
    text = refused([*redis, "--room-ttl", "89"])
    assert text.startswith("--room-ttl:") and "90 s" in text, text
    text = refused(redis, {"PRESENCE_TIMEOUT": "100", "ROOM_TTL": "299.5"})
    assert text.startswith("ROOM_TTL:") and "300 s" in text, text
    assert refused([*redis, "--presence-timeout", "300000"]).startswith("--presence-timeout:")
    config = load_config([*redis, "--room-ttl", "3", "--presence-timeout", "1"], {})
    assert (config.room_ttl, config.presence_timeout) == (3.0, 1.0)
    # The memory broker has no presence refresh to outlast: any TTL from 1 s.
    assert load_config(["--room-ttl", "1"], {}).room_ttl == 1.0


def test_allowed_hosts_empty_items_and_help():
    assert load_config(["--allowed-hosts", " , "], {}).allowed_hosts == ()
    assert load_config([], {"ALLOWED_HOSTS": "a.example,"}).allowed_hosts == ("a.example",)
    assert "default 'any'" in build_parser().format_help().replace("\n", " ")
