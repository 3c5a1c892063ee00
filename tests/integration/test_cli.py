"""The `webchat` command line: bad configuration exits 2 with one line; good ones serve.

Each case runs `python -m webchat` (the venv's python) as a real child process.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import aiohttp
import pytest

from tests.support.client import ChatClient
from tests.support.redis import RedisServer
from tests.support.servers import ROOT, WebchatProcess, http_status, wait_until
from tests.support.timing import poll, seconds
from webchat.config import OPTION_NAMES

# Every option's environment variable: removed from the children's environment, so a
# variable that happens to be set where the tests run cannot change their outcome.
OPTION_VARIABLES = {name.upper() for name in OPTION_NAMES}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in OPTION_VARIABLES}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def run_webchat(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m webchat ARGS` to completion (it must exit by itself)."""
    return subprocess.run(
        [sys.executable, "-m", "webchat", *args],
        cwd=ROOT,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=seconds(20),
        check=False,
    )


def assert_refused(result: subprocess.CompletedProcess[str], option: str) -> None:
    """Exit status 2, nothing on stdout, exactly one line on stderr naming `option`."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stdout == ""
    assert result.stderr.endswith("\n"), repr(result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {result.stderr!r}"
    assert option in lines[0], f"{option} not named in {lines[0]!r}"
    assert "Traceback" not in lines[0]


INVALID_FLAGS = [
    (["--port", "abc"], "--port"),
    (["--port", "70000"], "--port"),
    (["--port="], "--port"),
    (["--port"], "--port"),  # the value is missing
    (["--rate", "-1"], "--rate"),
    (["--rate", "0"], "--rate"),
    (["--rate", "nan"], "--rate"),
    (["--burst", "1.5"], "--burst"),
    (["--send-buffer", "1x"], "--send-buffer"),
    (["--send-buffer", "10"], "--send-buffer"),
    (["--max-frame", "16k", "--max-text", "0"], "--max-text"),
    (["--drain-delay", "inf"], "--drain-delay"),
    (["--drain-spread", "-0.5"], "--drain-spread"),
    (["--heartbeat", "0"], "--heartbeat"),
    (["--redis-url", "http://x"], "--redis-url"),
    (["--redis-url", "redis://h:notaport"], "--redis-url"),
    (["--allowed-origins", "nope"], "--allowed-origins"),
    (["--allowed-origins", "https://ok.example,https://bad.example/path"], "--allowed-origins"),
    (["--log-level", "loud"], "--log-level"),
    (["--host", " "], "--host"),
    (["--bogus"], "--bogus"),
    (["--bogus", "two\nlines"], "--bogus"),  # argparse quotes nothing it echoes
    (["stray"], "stray"),
]


@pytest.mark.parametrize(
    ("args", "option"), [pytest.param(*case, id=" ".join(case[0])) for case in INVALID_FLAGS]
)
def test_invalid_flag_exits_2_with_one_line_naming_it(args: list[str], option: str) -> None:
    assert_refused(run_webchat(*args), option)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "abc"),
        ("RATE", "-1"),
        ("SEND_BUFFER", "1x"),
        ("REDIS_URL", "http://x"),
        ("ALLOWED_ORIGINS", "nope"),
        ("PRESENCE_GRACE", "soon"),
    ],
)
def test_invalid_environment_variable_exits_2_naming_it(variable: str, value: str) -> None:
    assert_refused(run_webchat(env=clean_env(**{variable: value})), variable)


def test_several_workers_need_redis() -> None:
    result = run_webchat("--workers", "2")
    assert_refused(result, "--workers")
    assert "--redis-url" in result.stderr
    result = run_webchat(env=clean_env(WORKERS="2"))
    assert result.returncode == 2
    assert "redis" in result.stderr.lower()


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_option_and_exits_0(flag: str) -> None:
    # An invalid variable does not get in the way of reading the help.
    result = run_webchat(flag, env=clean_env(PORT="abc"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("usage: webchat")
    for name in sorted(OPTION_VARIABLES):
        flag_name = "--" + name.lower().replace("_", "-")
        assert re.search(rf"{flag_name}\b", result.stdout), f"{flag_name} missing from --help"
        assert name in result.stdout, f"variable {name} missing from --help"


async def test_valid_flags_and_variables_configure_a_serving_process() -> None:
    # Flags win over variables: PORT and RATE are invalid but overridden by flags.
    server = WebchatProcess(
        *("--rate", "3", "--max-text", "500"),
        env=clean_env(PORT="abc", RATE="abc", BURST="7", SEND_BUFFER="128KiB"),
    )
    with server:
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + "/healthz") as response:
                assert response.status == 200
                assert await response.json() == {"status": "ok"}
            client = await ChatClient.connect(session, server.ws_url, room="cli", name="cli")
            assert client.welcome is not None
            assert client.welcome["limits"] == {"max_text": 500, "rate_per_s": 3, "burst": 7}
            await client.close()
        server.signal(signal.SIGTERM)
        assert server.wait(timeout=seconds(10)) == 0


def test_port_0_picks_a_free_port_and_logs_it(tmp_path) -> None:
    log_path = tmp_path / "webchat.log"
    listening = re.compile(r"listening on \[\('127\.0\.0\.1', (\d+)\)\]")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "webchat", "--host", "127.0.0.1", "--port", "0"],
            cwd=ROOT,
            env=clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def logged_port() -> bool:
            assert proc.poll() is None, log_path.read_text()
            return listening.search(log_path.read_text()) is not None

        wait_until(logged_port, seconds(15), "the listening line")
        match = listening.search(log_path.read_text())
        assert match is not None
        assert http_status(f"http://127.0.0.1:{match[1]}/healthz") == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=seconds(10)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=seconds(5))


async def test_two_workers_share_one_port_and_drain_on_sigterm(
    redis_server: RedisServer,
) -> None:
    server = WebchatProcess("--workers", "2", "--redis-url", redis_server.url, env=clean_env())
    with server:
        # Both workers are up once each has logged its listening line.
        def listening() -> set[str]:
            pids = set(re.findall(r"listening on .* \(pid (\d+),", server.log()))
            return pids if len(pids) == 2 else set()

        pids = await poll(listening, 15, "two workers' listening lines")
        assert server.proc is not None
        assert str(server.proc.pid) not in pids, "the parent only supervises"
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + "/readyz") as response:
                assert response.status == 200
            client = await ChatClient.connect(session, server.ws_url, room="w", name="w")
            server.signal(signal.SIGTERM)
            assert await client.closed(timeout=10) == 1012
        assert server.wait(timeout=seconds(10)) == 0
