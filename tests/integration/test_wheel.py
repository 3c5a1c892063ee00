"""The wheel, installed the way the Ansible role installs it, serves the browser client.

build_wheelhouse.py (the role's build step) builds the wheel and a wheelhouse for this
machine's Python; a fresh venv installs it with `pip --no-index` (no PyPI, as on the hosts);
the installed `webchat`, started outside the source tree, serves / and /static/app.js from
the files inside the wheel.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tarfile
import venv
from pathlib import Path

import pytest

from tests.support.servers import ROOT, alive_and, free_port, http_status, wait_until
from tests.support.timing import seconds

BUILD = ROOT / "ansible/roles/webchat/files/build_wheelhouse.py"

pytestmark = pytest.mark.timeout(seconds(300))


def build(out: Path, timeout: float) -> dict:
    """Run the role's build step for this machine's Python; its JSON report."""
    target = {
        "python": platform.python_version(),
        "glibc": platform.libc_ver()[1],
        "machine": platform.machine(),
    }
    command = [sys.executable, str(BUILD), "--source", str(ROOT), "--out", str(out)]
    built = subprocess.run(
        [*command, "--target", json.dumps(target)],
        capture_output=True,
        text=True,
        timeout=seconds(timeout),
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return json.loads(built.stdout)


def test_the_installed_wheel_serves_the_client(tmp_path: Path):
    report = build(tmp_path / "build", 240)
    assert report["changed"] is True
    (archive,) = report["wheelhouses"].values()
    wheelhouse = tmp_path / "wheels"
    with tarfile.open(archive) as tar:
        tar.extractall(wheelhouse, filter="data")
    wheels = sorted(p.name for p in wheelhouse.glob("*.whl"))
    assert any(w.startswith("webchat-") for w in wheels), wheels

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    subprocess.run(
        [
            str(env_dir / "bin/pip"),
            "install",
            "-q",
            "--no-index",
            "--find-links",
            wheelhouse,
            "webchat",
        ],
        check=True,
        capture_output=True,
        timeout=seconds(120),
    )
    port = free_port()
    log = tmp_path / "webchat.log"
    with log.open("wb") as out:
        # Outside the source tree, so nothing but the installed wheel can be imported.
        proc = subprocess.Popen(
            [str(env_dir / "bin/webchat"), "--port", str(port)],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(
            alive_and(proc, "webchat", log.read_text, lambda: http_status(base + "/readyz") == 200),
            seconds(20),
            "the installed webchat to be ready",
        )
        assert http_status(base + "/") == 200
        assert http_status(base + "/static/app.js") == 200
        where = subprocess.run(
            [str(env_dir / "bin/python"), "-c", "import webchat.web as w; print(w.FRONTEND)"],
            capture_output=True,
            text=True,
            check=True,
            cwd=tmp_path,
            timeout=seconds(30),
        ).stdout.strip()
        assert where.startswith(str(env_dir)), f"served from the wheel, not the tree: {where}"
    finally:
        proc.terminate()
        proc.wait(timeout=seconds(15))

    again = build(tmp_path / "build", 60)
    assert again["changed"] is False, "built once: a second run builds nothing"
