"""infra/ (Terraform for AWS), read without a terraform binary: every file parses, the firewall
opens only 80/443 to the world and 22 to admin_cidr, every variable's validation accepts good
values and refuses bad ones with its message, and the outputs have the shape the inventory
generator reads. (`terraform apply` was never run: docs/deploy.md says so.)
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.terraform import (
    INFRA,
    UnsupportedExpression,
    blocks,
    evaluate,
    failed_validations,
    load,
    resources,
    to_python,
)
from tests.support.servers import ROOT

RECORDED_OUTPUT = ROOT / "tests" / "deploy" / "data" / "terraform-output.json"
WORLD = {"0.0.0.0/0", "::/0"}
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl a@b"


@pytest.mark.parametrize(
    "path", sorted(INFRA.glob("**/*.tf*")), ids=lambda p: str(p.relative_to(INFRA))
)
def test_every_terraform_file_parses(path: Path) -> None:
    if path.suffix not in (".tf", ".hcl"):
        assert path.name == "terraform.tfvars.example", f"unexpected file {path}"
    assert load(path), f"{path} parsed to nothing"


def test_versions_are_pinned() -> None:
    terraform = [b for p in INFRA.glob("*.tf") for b in load(p).get("terraform", [])]
    assert len(terraform) == 1
    assert re.fullmatch(r">= 1\.\d+\.\d+, < 2\.0\.0", terraform[0]["required_version"])
    (providers,) = terraform[0]["required_providers"]
    assert set(providers) == {"aws"}
    assert providers["aws"]["source"] == "hashicorp/aws"
    # `~> X.Y.Z`: patch releases only.
    assert re.fullmatch(r"~> \d+\.\d+\.\d+", providers["aws"]["version"])


# --- the firewall ------------------------------------------------------------------------------


def group_of(rule: dict[str, Any]) -> str:
    match = re.fullmatch(r"\$\{aws_security_group\.(\w+)\.id\}", rule["security_group_id"])
    assert match, rule
    return match[1]


def test_rules_are_separate_resources_only() -> None:
    """Every rule is an aws_vpc_security_group_*_rule, so the checks below see all of them."""
    for name, group in resources("aws_security_group").items():
        assert "ingress" not in group and "egress" not in group, f"inline rules in {name}"
    assert resources("aws_security_group_rule") == {}


def test_only_http_https_are_public_and_ssh_only_from_admin_cidr() -> None:
    public_ports, ssh_rules = set(), []
    for name, rule in resources("aws_vpc_security_group_ingress_rule").items():
        sources = [rule[k] for k in ("cidr_ipv4", "cidr_ipv6", "prefix_list_id") if k in rule]
        referenced = rule.get("referenced_security_group_id")
        assert len(sources) + (referenced is not None) == 1, f"{name}: one source per rule"
        if referenced is not None:
            # Between the stack's own hosts only: the group admits its own members.
            assert referenced == rule["security_group_id"], name
            continue
        (source,) = sources
        ports = (rule["ip_protocol"], rule.get("from_port"), rule.get("to_port"))
        if source in WORLD:
            assert ports in (("tcp", 80, 80), ("tcp", 443, 443)), f"{name} opens {ports}"
            assert group_of(rule) == "public_web", name
            public_ports.add(ports[1])
        elif source == "${var.admin_cidr}":
            assert ports == ("tcp", 22, 22), f"{name}: admin_cidr may reach SSH only"
            ssh_rules.append(name)
        else:
            raise AssertionError(f"{name}: unexpected source {source}")
    assert public_ports == {80, 443}
    assert len(ssh_rules) == 1


def test_the_public_group_is_on_the_load_balancer_only() -> None:
    instances = resources("aws_instance")
    assert set(instances) == {"lb", "web", "redis", "monitoring"}
    for name, instance in instances.items():
        groups = instance["vpc_security_group_ids"]
        assert "local.base_security_groups" in groups, name
        assert ("aws_security_group.public_web" in groups) == (name == "lb"), name
    base = [
        entry["base_security_groups"]
        for path in INFRA.glob("*.tf")
        for entry in load(path).get("locals", [])
        if "base_security_groups" in entry
    ]
    assert base == [["${aws_security_group.admin_ssh.id}", "${aws_security_group.internal.id}"]]


def test_hosts_are_hardened_and_web_is_counted() -> None:
    instances = resources("aws_instance")
    assert instances["web"]["count"] == "${var.web_count}"
    for name, instance in instances.items():
        (disk,) = instance["root_block_device"]
        assert disk["encrypted"] is True, name
        (metadata,) = instance["metadata_options"]
        assert metadata["http_tokens"] == "required", f"{name}: IMDSv2 only"
        assert instance["tags"]["Role"] == name


# --- variables and their validations -----------------------------------------------------------

# (variable, value, accepted). Every variable with a validation appears with a good and a bad.
CASES: list[tuple[str, Any, bool]] = [
    ("region", "eu-central-1", True),
    ("region", "us-gov-west-1", True),
    ("region", "Frankfurt", False),
    ("region", "", False),
    ("availability_zone", "", True),
    ("availability_zone", "eu-central-1a", True),
    ("availability_zone", "eu-central-1", False),
    ("name", "webchat", True),
    ("name", "chat-prod-2", True),
    ("name", "Webchat", False),
    ("name", "a" * 25, False),
    ("name", "", False),
    ("admin_cidr", "203.0.113.7/32", True),
    ("admin_cidr", "198.51.100.0/24", True),
    ("admin_cidr", "198.51.100.7/24", False),
    ("admin_cidr", "2001:db8::/64", False),
    ("admin_cidr", "0.0.0.0/0", False),
    ("admin_cidr", "203.0.113.7", False),
    ("admin_cidr", "203.0.113.300/32", False),
    ("admin_cidr", "", False),
    ("ssh_public_key", KEY, True),
    ("ssh_public_key", KEY + "\n", True),
    ("ssh_public_key", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ== user", True),
    ("ssh_public_key", "-----BEGIN OPENSSH PRIVATE KEY-----", False),
    ("ssh_public_key", "", False),
    ("vpc_cidr", "10.42.0.0/16", True),
    ("vpc_cidr", "192.168.16.0/20", True),
    ("vpc_cidr", "172.31.0.0/16", True),
    ("vpc_cidr", "8.8.0.0/16", False),
    ("vpc_cidr", "172.32.0.0/16", False),
    ("vpc_cidr", "10.42.0.0/24", False),
    ("vpc_cidr", "10.0.0.0/8", False),
    ("vpc_cidr", "10.42.0.0", False),
    ("vpc_cidr", "10.42.1.0/16", False),
    ("web_count", 1, True),
    ("web_count", 50, True),
    ("web_count", 0, False),
    ("web_count", -1, False),
    ("web_count", 2.5, False),
    ("web_count", 51, False),
    ("ami_id", "", True),
    ("ami_id", "ami-0123456789abcdef0", True),
    ("ami_id", "ami-12345678", True),
    ("ami_id", "debian-12", False),
    ("ami_id", "ami-XYZ", False),
    ("lb_instance_type", "t3.small", True),
    ("lb_instance_type", "", False),
    ("lb_instance_type", "small", False),
    ("web_instance_type", "c6i.large", True),
    ("web_instance_type", "c6i large", False),
    ("redis_instance_type", "r6i.large", True),
    ("redis_instance_type", " ", False),
    ("monitoring_instance_type", "t3.medium", True),
    ("monitoring_instance_type", "T3.MEDIUM", False),
    ("root_volume_gb", 8, True),
    ("root_volume_gb", 7, False),
    ("root_volume_gb", 20.5, False),
]


@pytest.mark.parametrize(("name", "value", "accepted"), CASES)
def test_validation(name: str, value: Any, accepted: bool) -> None:
    failures = failed_validations(name, value)
    if accepted:
        assert failures == []
    else:
        assert failures, f"{name} = {value!r} was accepted"
        assert all(message.startswith(f"{name} must") for message in failures), failures


def test_every_variable_is_described_and_validated() -> None:
    variables = blocks("variable")
    tested = {name for name, _, _ in CASES}
    for name, variable in variables.items():
        assert variable.get("description"), f"{name} has no description"
        assert variable.get("type"), f"{name} has no type"
        if name == "tags":  # free-form map(string), any tags are fine
            continue
        rules = variable.get("validation", [])
        assert rules, f"{name} has no validation"
        for rule in rules:
            message = rule["error_message"]
            # Terraform wants a sentence; ours name the variable first.
            assert message.startswith(f"{name} must") and message.endswith("."), message
        assert {accepted for n, _, accepted in CASES if n == name} == {True, False}, name
        if "default" in variable:
            assert failed_validations(name, variable["default"]) == [], f"default of {name}"
    assert tested <= set(variables)
    # Without defaults the user must choose: where SSH comes from, and which key.
    assert {n for n, v in variables.items() if "default" not in v} == {
        "admin_cidr",
        "ssh_public_key",
    }


def test_the_evaluator_refuses_what_it_does_not_implement() -> None:
    assert to_python('${var.x == "a$b" || !can(regex("^a$", var.x))}') == (
        "var['x'] == \"a$b\"  or   not can_(lambda: regex(\"^a$\", var['x']))"
    )
    assert evaluate("${var.n >= 1 && floor(var.n) == var.n}", {"n": 3}) is True
    for unsupported in ("${startswith(var.x, 1)}", "${local.x == 1}", '${"${var.x}" == ""}'):
        with pytest.raises(UnsupportedExpression):
            evaluate(unsupported, {"x": "a"})


# --- outputs -----------------------------------------------------------------------------------


def test_outputs_are_what_the_inventory_reads() -> None:
    outputs = blocks("output")
    assert {"hosts", "ssh_user"} <= set(outputs)
    hosts = outputs["hosts"]["value"]
    assert set(hosts) == {"lb", "web", "redis", "monitoring"}
    for group, expression in hosts.items():
        text = json.dumps(expression)
        for field in ("name", "public_ip", "private_ip"):
            assert re.search(rf"\b{field}\s*[=\"]", text), f"hosts.{group} lacks {field}"
    assert "aws_instance.web" in json.dumps(hosts["web"])  # every counted web host
    # The recorded output (tests/deploy/data) has these outputs, with real addresses.
    recorded = json.loads(RECORDED_OUTPUT.read_text())
    assert set(recorded) == set(outputs)
    for group, members in recorded["hosts"]["value"].items():
        assert group in hosts and members
        for host in members:
            assert ipaddress.ip_address(host["private_ip"]).is_private
