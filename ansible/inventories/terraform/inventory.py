#!/usr/bin/env python3
"""Ansible dynamic inventory from the Terraform outputs of infra/ (standard library only).

    ansible-playbook -i inventories/terraform/inventory.py deploy.yml
    ansible-inventory -i inventories/terraform/inventory.py --graph

It reads `terraform output -json`: from the file named by WEBCHAT_TF_OUTPUT if set (a saved
copy: `terraform -chdir=infra output -json > tf-output.json`), else by running terraform in
WEBCHAT_TF_DIR (default: the repository's infra/). Groups lb, web, redis and monitoring get
the hosts of the `hosts` output; each host gets `ansible_host` (its public address, for SSH),
`ansible_user` (the `ssh_user` output) and `webchat_private_address` (for traffic between the
hosts: upstreams, Redis, scrapes). `--static` prints the same as a YAML-inventory file (JSON is
YAML) for those who prefer a rendered file. Bad input: one line on stderr, exit status 1.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

GROUPS = ("lb", "web", "redis", "monitoring")
DEFAULT_TF_DIR = Path(__file__).resolve().parents[3] / "infra"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class InventoryError(Exception):
    """The Terraform outputs cannot be turned into an inventory; the text says why."""


def read_outputs(env: dict[str, str]) -> dict[str, Any]:
    """`terraform output -json` as a dict, from WEBCHAT_TF_OUTPUT or by running terraform."""
    saved = env.get("WEBCHAT_TF_OUTPUT")
    if saved:
        try:
            text = Path(saved).read_text(encoding="utf-8")
        except OSError as exc:
            raise InventoryError(
                f"WEBCHAT_TF_OUTPUT: cannot read {saved}: {exc.strerror}"
            ) from None
        source = saved
    else:
        tf_dir = env.get("WEBCHAT_TF_DIR") or str(DEFAULT_TF_DIR)
        command = ["terraform", f"-chdir={tf_dir}", "output", "-json"]
        try:
            result = subprocess.run(command, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise InventoryError(
                "terraform is not installed; set WEBCHAT_TF_OUTPUT to a saved "
                "`terraform output -json`"
            ) from None
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise InventoryError(f"terraform output -json in {tf_dir} failed: {last}")
        text, source = result.stdout, f"terraform output in {tf_dir}"
    try:
        outputs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InventoryError(f"{source} is not JSON: {exc.msg} at line {exc.lineno}") from None
    if not isinstance(outputs, dict):
        raise InventoryError(f"{source} is not a `terraform output -json` object")
    if not outputs:
        raise InventoryError(f"{source} has no outputs: run `terraform apply` in infra/ first")
    return outputs


def _value(outputs: dict[str, Any], name: str) -> Any:
    output = outputs.get(name)
    if not isinstance(output, dict) or "value" not in output:
        raise InventoryError(f"output {name!r} is missing: is this the output of infra/?")
    return output["value"]


def _address(value: Any, where: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise InventoryError(f"{where} is {value!r}, not an IP address") from None


def build_inventory(outputs: dict[str, Any]) -> dict[str, Any]:
    """The `--list` document: groups, and every host's variables under _meta.hostvars."""
    hosts = _value(outputs, "hosts")
    user = _value(outputs, "ssh_user")
    if not isinstance(hosts, dict):
        raise InventoryError("output 'hosts' must map group names to lists of hosts")
    if not isinstance(user, str) or not user:
        raise InventoryError("output 'ssh_user' must be a non-empty string")
    inventory: dict[str, Any] = {
        "all": {"children": list(GROUPS)},
        "_meta": {"hostvars": {}},
    }
    hostvars = inventory["_meta"]["hostvars"]
    for group in GROUPS:
        members = hosts.get(group)
        if not isinstance(members, list) or not members:
            raise InventoryError(f"output 'hosts' has no {group!r} hosts (needs at least one)")
        names = []
        for index, host in enumerate(members):
            where = f"hosts.{group}[{index}]"
            if not isinstance(host, dict):
                raise InventoryError(f"{where} must be an object with name, public_ip, private_ip")
            name = host.get("name")
            if not isinstance(name, str) or not _NAME.match(name):
                raise InventoryError(f"{where}.name is {name!r}, not a host name")
            variables = {
                "ansible_host": _address(host.get("public_ip"), f"{where}.public_ip"),
                "ansible_user": user,
                "webchat_private_address": _address(host.get("private_ip"), f"{where}.private_ip"),
            }
            # One host in several groups (a small stack) must be the same host in each.
            if hostvars.setdefault(name, variables) != variables:
                raise InventoryError(f"host {name!r} appears twice with different addresses")
            names.append(name)
        inventory[group] = {"hosts": names}
    return inventory


def static_inventory(inventory: dict[str, Any]) -> dict[str, Any]:
    """The same inventory in the YAML-inventory layout (all.children.<group>.hosts.<name>)."""
    hostvars = inventory["_meta"]["hostvars"]
    children = {
        group: {"hosts": {name: hostvars[name] for name in inventory[group]["hosts"]}}
        for group in GROUPS
    }
    return {"all": {"children": children}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--list", action="store_true", help="all groups and hosts (Ansible)")
    mode.add_argument("--host", metavar="NAME", help="one host's variables (Ansible)")
    mode.add_argument("--static", action="store_true", help="a YAML-inventory file, as JSON")
    args = parser.parse_args(argv)
    try:
        inventory = build_inventory(read_outputs(dict(os.environ)))
    except InventoryError as exc:
        print(f"inventory.py: {exc}", file=sys.stderr)
        return 1
    if args.host is not None:
        document: dict[str, Any] = inventory["_meta"]["hostvars"].get(args.host, {})
    elif args.static:
        document = static_inventory(inventory)
    else:
        document = inventory
    json.dump(document, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
