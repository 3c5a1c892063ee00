"""pytest-timeout's per-test limit follows WEBCHAT_TEST_UNIT, like every wait of the suite (a real
nested pytest run shows a hung test stopped at the scaled limit)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.servers import ROOT
from tests.support.timing import seconds

HUNG = """
import time

def test_hung():
    time.sleep(30)  # the hang that pytest-timeout must stop
"""


def test_a_test_without_its_own_marker_gets_the_scaled_limit(request: pytest.FixtureRequest):
    marker = request.node.get_closest_marker("timeout")
    assert marker is not None, "tests/conftest.py gave this test no timeout marker"
    assert marker.args == (seconds(float(request.config.getini("timeout"))),)


def test_a_small_unit_stops_a_hung_test_at_the_scaled_limit(tmp_path):
    """With WEBCHAT_TEST_UNIT=0.02 the 120 s limit is 2.4 s: a 30 s test is stopped by it."""
    (tmp_path / "test_hung.py").write_text(HUNG)
    env = {**os.environ, "WEBCHAT_TEST_UNIT": "0.02"}
    env.pop("PYTEST_TIMEOUT", None)
    command = [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml")]
    command += ["--rootdir", str(tmp_path), "-p", "tests.conftest", "-p", "no:cacheprovider"]
    run = subprocess.run(
        [*command, str(tmp_path / "test_hung.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds(60),
        check=False,
    )
    assert run.returncode == 1, run.stdout[-3000:]
    assert "Timeout (>2.4s) from pytest-timeout" in run.stdout, run.stdout[-3000:]
