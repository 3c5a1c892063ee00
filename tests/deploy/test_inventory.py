"""ansible/inventories/terraform/inventory.py on a recorded `terraform output -json`, used the
way Ansible uses it (`ansible-inventory -i inventory.py`), and its one-line refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import ROOT
from tests.support.timing import seconds

SCRIPT = ROOT / "ansible" / "inventories" / "terraform" / "inventory.py"
RECORDED = ROOT / "tests" / "deploy" / "data" / "terraform-output.json"
BIN = Path(sys.executable).parent


def run(*args: str, output: Path | None = RECORDED, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WEBCHAT_TF_")}
    if output is not None:
        environment["WEBCHAT_TF_OUTPUT"] = str(output)
    environment.update(env)
    return subprocess.run(
        [*args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=seconds(60),
        check=False,
        cwd=ROOT / "ansible",
    )


def recorded() -> dict[str, Any]:
    return json.loads(RECORDED.read_text())  # type: ignore[no-any-return]


def test_ansible_reads_the_groups_and_addresses() -> None:
    result = run(str(BIN / "ansible-inventory"), "-i", str(SCRIPT), "--list")
    assert result.returncode == 0, result.stderr
    inventory = json.loads(result.stdout)
    hosts = recorded()["hosts"]["value"]
    for group in ("lb", "web", "redis", "monitoring"):
        assert inventory[group]["hosts"] == [h["name"] for h in hosts[group]]
    hostvars = inventory["_meta"]["hostvars"]
    for members in hosts.values():
        for host in members:
            assert hostvars[host["name"]] == {
                "ansible_host": host["public_ip"],
                "ansible_user": "admin",
                "webchat_private_address": host["private_ip"],
            }
    assert len(inventory["web"]["hosts"]) == 3


def test_one_host_and_the_static_rendering_agree(tmp_path: Path) -> None:
    listed = json.loads(run(sys.executable, str(SCRIPT), "--list").stdout)
    one = run(sys.executable, str(SCRIPT), "--host", "webchat-web-2")
    assert one.returncode == 0
    assert json.loads(one.stdout) == listed["_meta"]["hostvars"]["webchat-web-2"]
    static = run(sys.executable, str(SCRIPT), "--static")
    assert static.returncode == 0
    children = json.loads(static.stdout)["all"]["children"]
    for group in ("lb", "web", "redis", "monitoring"):
        assert list(children[group]["hosts"]) == listed[group]["hosts"]
    # Ansible reads the rendered file as a YAML inventory (JSON is YAML) to the same result.
    rendered = tmp_path / "hosts.yml"
    rendered.write_text(static.stdout)
    graph = run(str(BIN / "ansible-inventory"), "-i", str(rendered), "--list", output=None)
    assert graph.returncode == 0, graph.stderr
    assert json.loads(graph.stdout)["_meta"]["hostvars"] == listed["_meta"]["hostvars"]


def mutate(tmp_path: Path, change: Any) -> Path:
    outputs = recorded()
    change(outputs)
    path = tmp_path / "output.json"
    path.write_text(json.dumps(outputs))
    return path


def drop_web(o: dict[str, Any]) -> None:
    o["hosts"]["value"]["web"] = []


def bad_address(o: dict[str, Any]) -> None:
    o["hosts"]["value"]["redis"][0]["private_ip"] = "10.42.1"


def no_user(o: dict[str, Any]) -> None:
    del o["ssh_user"]


def clash(o: dict[str, Any]) -> None:
    o["hosts"]["value"]["monitoring"][0]["name"] = "webchat-lb"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (drop_web, "output 'hosts' has no 'web' hosts (needs at least one)"),
        (bad_address, "hosts.redis[0].private_ip is '10.42.1', not an IP address"),
        (no_user, "output 'ssh_user' is missing: is this the output of infra/?"),
        (clash, "host 'webchat-lb' appears twice with different addresses"),
    ],
)
def test_bad_outputs_are_refused_in_one_line(tmp_path: Path, change: Any, message: str) -> None:
    result = run(sys.executable, str(SCRIPT), "--list", output=mutate(tmp_path, change))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == f"inventory.py: {message}\n"


def test_empty_missing_and_garbled_outputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    garbled = tmp_path / "garbled.json"
    garbled.write_text("Error: No outputs found")
    cases = {
        empty: "has no outputs: run `terraform apply` in infra/ first",
        garbled: "is not JSON: Expecting value at line 1",
        tmp_path / "absent.json": "WEBCHAT_TF_OUTPUT: cannot read",
    }
    for path, message in cases.items():
        result = run(sys.executable, str(SCRIPT), "--list", output=path)
        assert result.returncode == 1
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_without_a_saved_output_it_asks_terraform(tmp_path: Path) -> None:
    """No WEBCHAT_TF_OUTPUT: it runs terraform; without one installed it says what to do."""
    result = run(sys.executable, str(SCRIPT), "--list", output=None, PATH=str(tmp_path))
    assert result.returncode == 1
    assert result.stderr == (
        "inventory.py: terraform is not installed; set WEBCHAT_TF_OUTPUT to a saved "
        "`terraform output -json`\n"
    )
