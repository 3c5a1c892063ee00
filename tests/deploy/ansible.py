"""Running the repository's playbooks from tests: ansible-playbook with ansible/ansible.cfg."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.servers import ROOT
from tests.support.timing import seconds

ANSIBLE_DIR = ROOT / "ansible"
BIN = Path(sys.executable).parent


def env(**extra: str) -> dict[str, str]:
    """The environment of an Ansible run: the repository's ansible.cfg, no user config."""
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": os.environ.get("TMPDIR", "/tmp") + "/ansible-local",
        **extra,
    }


def playbook(
    name: str, inventory: Path | str, *args: str, timeout: float = 600, **env_extra: str
) -> subprocess.CompletedProcess[str]:
    """`ansible-playbook -i inventory ansible/<name> args...` from ansible/, output captured."""
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), name, *args],
        cwd=ANSIBLE_DIR,
        env=env(**env_extra),
        capture_output=True,
        text=True,
        timeout=seconds(timeout),
        check=False,
    )


_RESULT = re.compile(r"^(ok|changed|failed|fatal|skipping): \[([^\]]+)\].*?=> (\{.*\})$")
_PLAY = re.compile(r"^PLAY \[(.*)\] \*+$")
_RECAP = re.compile(r"^(\S+)\s+: ((?:\w+=\d+\s*)+)$")


@dataclass
class Run:
    """What one ansible-playbook run reported (default callback, results as one-line JSON)."""

    returncode: int
    output: str
    plays: list[str] = field(default_factory=list)
    failures: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    recap: dict[str, dict[str, int]] = field(default_factory=dict)

    def failed_msgs(self, host: str) -> list[str]:
        return [str(r.get("msg", "")) for r in self.failures.get(host, [])]

    def total(self, counter: str) -> int:
        return sum(stats[counter] for stats in self.recap.values())


def parse(returncode: int, output: str) -> Run:
    run = Run(returncode, output)
    in_recap = False
    for line in output.splitlines():
        if play := _PLAY.match(line):
            run.plays.append(play[1])
        elif line.startswith("PLAY RECAP"):
            in_recap = True
        elif in_recap and (recap := _RECAP.match(line.strip())):
            run.recap[recap[1]] = {
                k: int(v) for k, v in (item.split("=") for item in recap[2].split())
            }
        elif (result := _RESULT.match(line)) and result[1] in ("failed", "fatal"):
            data = json.loads(result[3])
            run.failures.setdefault(result[2], []).append(data)
    return run


def run_playbook(name: str, inventory: Path | str, *args: str, **kw: Any) -> Run:
    """A run whose output is parsed: plays, failures by host (with their msg), the recap."""
    result = playbook(
        name,
        inventory,
        *args,
        ANSIBLE_STDOUT_CALLBACK="ansible.builtin.default",
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
        ANSIBLE_CALLBACK_FORMAT_PRETTY="false",
        **kw,
    )
    return parse(result.returncode, result.stdout + result.stderr)


RENDER = Path(__file__).with_name("render.yml")


def render(inventory: Path, out: Path, *args: str) -> Path:
    """render.yml: every host's templates under `out/<host>/`, as deploy.yml would write them
    for `inventory`, rendered on the control node (no host is contacted). Fails the test if
    the run fails; returns `out`."""
    monitoring = ROOT / "monitoring" / "prometheus"
    extra = {
        "render_dir": str(out),
        "ansible_dir": str(ANSIBLE_DIR),
        "prometheus_config_src": str(monitoring / "prometheus-vm.yml"),
        "prometheus_rules_src_dir": str(monitoring / "rules"),
    }
    run = run_playbook(str(RENDER), inventory, "-e", json.dumps(extra), *args, timeout=120)
    assert run.returncode == 0, run.output[-6000:]
    return out


def conf_lines(path: Path) -> list[str]:
    """The lines of a rendered file that are not blank and not comments."""
    return [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]


def env_file(path: Path) -> dict[str, str]:
    """The variables of an environment file as systemd reads them (values in double quotes)."""
    return {k: json.loads(v) for k, v in (ln.split("=", 1) for ln in conf_lines(path))}
