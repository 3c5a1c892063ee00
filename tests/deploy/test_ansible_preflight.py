"""Each role's preflight refuses a bad variable with one sentence, before any host is touched.

One run of deploy.yml against an inventory of hosts that do not exist: each has exactly one
bad variable, and the preflight play (assertions on the control node only) must fail that
host with that variable's sentence; the good hosts pass. No host is ever contacted: the run
ends in the preflight play.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.deploy.ansible import Run, run_playbook

GOOD = {
    "redis_password": "x" * 32,
    "webchat_redis_password": "x" * 32,
    "grafana_admin_password": "y" * 16,
}

# host -> (its group, its one bad variable, the start of the sentence it must get)
BAD = {
    "web_workers": (
        "web",
        {"webchat_workers": 0},
        "webchat_workers must be a whole number from 1 to 256 (processes per instance), got 0.",
    ),
    "web_port": (
        "web",
        {"webchat_ports": [8081, 70000]},
        "webchat_ports must be a list of distinct TCP ports from 1 to 65535, got [8081, 70000].",
    ),
    "web_no_password": ("web", {"webchat_redis_password": ""}, "webchat_redis_password is empty:"),
    "web_origin": (
        "web",
        {"webchat_allowed_origins": ["chat.example.com"]},
        "webchat_allowed_origins must be a list of origins",
    ),
    "web_otel": (
        "web",
        {"webchat_otel": {"SERVICE_NAME": "x"}},
        "webchat_otel may only set OTEL_* variables",
    ),
    "redis_no_password": ("redis", {"redis_password": ""}, "redis_password is empty:"),
    "redis_port": (
        "redis",
        {"redis_port": 65536},
        "redis_port must be a TCP port from 1 to 65535, got 65536.",
    ),
    "redis_policy": (
        "redis",
        {"redis_maxmemory_policy": "allkeys-lru"},
        "redis_maxmemory_policy allkeys-lru could silently evict chat history streams;",
    ),
    # The web hosts of this inventory may open 470 connections: 6 processes of 73, + 32.
    "redis_clients": (
        "redis",
        {"redis_maxclients": 100},
        "redis_maxclients 100 is less than the 470 connections the web hosts' webchat",
    ),
    "redis_nofile": (
        "redis",
        {"redis_nofile": 5000},
        "redis_nofile 5000 must be at least redis_maxclients + 32 (10032):",
    ),
    "lb_port": (
        "lb",
        {"nginx_https_port": 0},
        "nginx_https_port must be a TCP port from 1 to 65535, got 0.",
    ),
    "lb_cert": (
        "lb",
        {"nginx_tls_certificate_src": "/etc/hostname"},
        "Set both nginx_tls_certificate_src and nginx_tls_key_src",
    ),
    "mon_retention": (
        "monitoring",
        {"prometheus_retention": "15 days"},
        "prometheus_retention must be a duration such as 15d or 12h, got 15 days.",
    ),
    "mon_grafana": (
        "monitoring",
        {"grafana_admin_password": "admin"},
        "grafana_admin_password must be set, 12 characters or more",
    ),
    "any_nofile": (
        "monitoring",
        {"common_nofile_limit": 100},
        "common_nofile_limit must be a whole number of at least 1024, got 100.",
    ),
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Run:
    groups: dict[str, dict] = {
        g: {"hosts": {f"good_{g}": {}}} for g in ("lb", "web", "redis", "monitoring")
    }
    for host, (group, bad, _) in BAD.items():
        groups[group]["hosts"][host] = bad
    inventory = {
        "all": {
            # 192.0.2.0/24 (TEST-NET-1): never contacted; the run must stop before any connection.
            "vars": {**GOOD, "ansible_host": "192.0.2.1", "ansible_connection": "ssh"},
            "children": groups,
        }
    }
    path: Path = tmp_path_factory.mktemp("inventory") / "hosts.yml"
    path.write_text(json.dumps(inventory))
    return run_playbook("deploy.yml", path, timeout=180)


def test_the_run_stops_in_the_preflight_play(report: Run):
    assert report.returncode != 0
    assert report.plays == ["Check the inventory and every variable before changing anything"]
    assert report.recap, report.output
    assert report.total("unreachable") == 0, "a host was contacted"


@pytest.mark.parametrize("host", sorted(BAD))
def test_a_bad_variable_gets_its_sentence(report: Run, host: str):
    messages = report.failed_msgs(host)
    assert len(messages) == 1, f"{host}: {messages}"
    assert messages[0].startswith(BAD[host][2]), messages[0]
    assert "\n" not in messages[0].strip(), "one line"


def test_good_hosts_pass_and_the_run_names_the_bad_ones(report: Run):
    """Good hosts fail only the last check, which stops the run and names every bad host."""
    stops = [
        m for host in report.failures if host.startswith("good_") for m in report.failed_msgs(host)
    ]
    assert len(stops) == 1, report.failures
    assert stops[0].startswith("Bad variables on "), stops[0]
    assert stops[0].endswith("(each is reported above): nothing was changed."), stops[0]
    named = stops[0].removeprefix("Bad variables on ").split(" (")[0].split(", ")
    assert sorted(named) == sorted(BAD), named
