"""Real servers for tests, each on a free loopback port, stopped after use.

`WebchatProcess` runs `python -m webchat` as a child process; `RedisServer` runs redis-server.
Each `start()` returns only once the server answers (no sleeps).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.timing import seconds
from webchat.config import OPTION_NAMES

ROOT = Path(__file__).resolve().parents[2]
OPTION_VARIABLES = {name.upper() for name in OPTION_NAMES}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02) -> None:  # type: ignore[no-untyped-def]
    """Poll `predicate` until true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)  # the polling interval; the deadline bounds the loop
    raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")


def alive_and(proc: subprocess.Popen[bytes], what: str, log, ready):  # type: ignore[no-untyped-def]
    """A readiness check for `wait_until` that fails at once, with the log, if `proc` exited."""

    def check() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log()}")
        return bool(ready())

    return check


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 10) -> None:
    """SIGTERM, and SIGKILL to its process group if it has not exited `grace` (scaled) seconds
    later: a process that ignores SIGTERM, or hangs on its way out, is gone on return."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=seconds(grace))
    except subprocess.TimeoutExpired:
        try:  # its group and whatever it started there (start_new_session=True)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # not a group leader: the process alone
            proc.kill()
        proc.wait(timeout=seconds(5))


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=seconds(2)) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


class WebchatProcess:
    """A `webchat` process. `args` are extra CLI flags; the port is free unless given."""

    def __init__(
        self,
        *args: str,
        port: int | None = None,
        env: dict[str, str] | None = None,
        nofile: int | None = None,
        module: str = "webchat",
    ):
        self.port = port or free_port()
        self.nofile = nofile  # a file-descriptor limit (soft and hard) for the process
        # `python -m <module>`: a test-only launcher (tests/support/lossy_webchat.py) that
        # patches the service in its own process before running the real CLI.
        self.module = module
        self.args = ["--host", "127.0.0.1", "--port", str(self.port), *args]
        # A stray RATE or REDIS_URL in the test's environment must not change the server.
        inherited = {k: v for k, v in os.environ.items() if k not in OPTION_VARIABLES}
        self.env = {**inherited, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="webchat-", suffix=".log")[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def start(self, wait_ready: bool = True) -> WebchatProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=self._limit if self.nofile else None,
        )
        log.close()
        wanted = "/readyz" if wait_ready else "/healthz"
        try:
            wait_until(
                alive_and(
                    self.proc, "webchat", self.log, lambda: http_status(self.url + wanted) == 200
                ),
                seconds(15),
                f"webchat on port {self.port} to answer {wanted}",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _limit(self) -> None:
        """In the child, before exec: the descriptor limit (hard too, so it cannot be raised)."""
        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=seconds(12))
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=seconds(5))

    def kill(self) -> None:
        """SIGKILL: the process dies without closing its sockets or leaving rooms."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=seconds(5))

    def __enter__(self) -> WebchatProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def require_binary(name: str) -> str:
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None
    )
    if path is None:
        raise RuntimeError(f"{name} is not installed; run `make test`, which installs it")
    return path
