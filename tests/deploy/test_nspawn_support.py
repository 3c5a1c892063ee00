"""The deployment test's host machinery stops what it starts, and says how to use it.

The containers themselves are only booted by tests/e2e/test_deploy.py (slow); here the parts
that can go wrong on their own: a process that ignores SIGTERM, the cluster's real apt-cacher-ng
when it does not exit on SIGTERM or when the test process dies, and the command line.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import nspawn
from tests.support.servers import ROOT, stop_process, wait_until
from tests.support.timing import seconds

# A process that ignores SIGTERM, with a child that does too: both sleep only to stay alive
# until the code under test kills them.
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import signal, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"],
    stdout=subprocess.PIPE)
child.stdout.readline()
print(child.pid, flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    """No such process, or only its zombie (its parent died and init has not reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_stop_process_kills_a_process_group_that_ignores_sigterm():
    with subprocess.Popen(
        [sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, start_new_session=True
    ) as proc:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())  # both ignore SIGTERM from here on
        stop_process(proc, grace=0.5)
    assert proc.returncode == -signal.SIGKILL
    wait_until(lambda: gone(child), seconds(5), "the child in its group to be killed too")


def low_free_port() -> int:
    """A free port below 32768: apt-cacher-ng cannot bind the kernel's ephemeral range."""
    for port in random.sample(range(20000, 32000), 200):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port in 20000-32000")


def proxy_cluster(monkeypatch: pytest.MonkeyPatch) -> nspawn.Cluster:
    """A cluster with only its apt-cacher-ng, on 127.0.0.1 (no bridge, no container)."""
    monkeypatch.setattr(nspawn, "APT_PROXY_PORT", low_free_port())
    cluster = nspawn.Cluster([])
    cluster.gateway = "127.0.0.1"
    cluster._start_proxy()
    return cluster


def test_the_clusters_proxy_is_killed_when_sigterm_does_not_stop_it(monkeypatch):
    monkeypatch.setattr(nspawn, "PROXY_GRACE", 0.5)
    cluster = proxy_cluster(monkeypatch)
    proxy = cluster.proxy
    assert proxy is not None
    try:
        os.kill(proxy.pid, signal.SIGSTOP)  # a stopped process leaves SIGTERM pending
        cluster.cleanup()
        assert proxy.returncode == -signal.SIGKILL
        assert not cluster.dir.exists()
    finally:
        stop_process(proxy, grace=0)


def test_the_clusters_proxy_dies_with_the_process_that_started_it():
    """Even a test process killed outright (no cleanup runs) leaves no apt-cacher-ng behind."""
    script = (
        "import os, signal; from tests.support import nspawn; "
        f"nspawn.APT_PROXY_PORT = {low_free_port()}; c = nspawn.Cluster([]); "
        "c.gateway = '127.0.0.1'; c._start_proxy(); print(c.proxy.pid, c.dir, flush=True); "
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=seconds(60),
        check=False,
    )
    assert run.returncode == -signal.SIGKILL, run.stderr
    pid, folder = run.stdout.split()
    try:
        wait_until(lambda: gone(int(pid)), seconds(5), "apt-cacher-ng to die with its parent")
    finally:
        with_pid = Path(f"/proc/{pid}/cmdline")
        if with_pid.exists() and b"apt-cacher-ng" in with_pid.read_bytes():
            os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["rm", "-rf", folder], check=False)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ([], "the following arguments are required: NAME"),
        (["web 1"], "names must be unique, 1-6 lowercase letters or digits, got ['web 1']"),
        (["lb", "lb"], "names must be unique"),
    ],
)
def test_the_command_line_explains_itself(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        nspawn.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m tests.support.nspawn"), err
    assert says in err
