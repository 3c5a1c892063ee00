"""The playbooks parse, and ansible-lint's production profile finds nothing."""

from __future__ import annotations

import subprocess

from tests.deploy.ansible import ANSIBLE_DIR, BIN, env
from tests.support.timing import seconds


def test_playbooks_pass_syntax_check():
    result = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "--syntax-check",
            "-i",
            "inventories/example",
            "deploy.yml",
            "upgrade.yml",
            "preflight.yml",
        ],
        cwd=ANSIBLE_DIR,
        env=env(),
        capture_output=True,
        text=True,
        timeout=seconds(60),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_production_profile_is_clean():
    result = subprocess.run(
        [str(BIN / "ansible-lint"), "--offline", "--profile", "production", "--nocolor"],
        cwd=ANSIBLE_DIR,
        env=env(),
        capture_output=True,
        text=True,
        timeout=seconds(240),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed." in result.stderr, result.stderr
