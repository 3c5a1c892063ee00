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
    # The redis group below has several hosts: one master and its replicas (a single Redis
    # takes one host; tests/deploy/test_ansible_redis_topology.py checks the shapes).
    "redis_topology": "sentinel",
}

# A good HS256 secret: never printed by a refusal.
SECRET = "s3cret-" * 6

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
    "web_auth_two_keys": (
        "web",
        {"webchat_auth_secret": SECRET, "webchat_auth_jwks_url": "https://id.example.com/jwks"},
        "Set only one of webchat_auth_secret, webchat_auth_public_key and webchat_auth_jwks_url"
        " (the key that verifies tokens), got webchat_auth_secret and webchat_auth_jwks_url.",
    ),
    "web_auth_no_key": (
        "web",
        {"webchat_auth_audience": "chat", "webchat_auth_token_url": "/auth/token"},
        "webchat_auth_audience, webchat_auth_token_url only apply in authenticated mode:",
    ),
    "web_auth_short_secret": (
        "web",
        {"webchat_auth_secret": "too-short-a-secret"},
        "webchat_auth_secret must be at least 32 characters long (the HS256 key of tokens:"
        " openssl rand -base64 48, kept in ansible-vault), got one of 18.",
    ),
    "web_auth_private_key": (
        "web",
        {"webchat_auth_public_key": "-----BEGIN PRIVATE KEY-----\nMC4=\n-----END PRIVATE KEY-----"},
        "webchat_auth_public_key holds a private key: give the public key",
    ),
    "web_auth_not_pem": (
        "web",
        {"webchat_auth_public_key": "issuer.pem"},
        "webchat_auth_public_key must be the text of a PEM public key or certificate",
    ),
    "web_auth_jwks": (
        "web",
        {"webchat_auth_jwks_url": "id.example.com/jwks.json"},
        "webchat_auth_jwks_url must be an http:// or https:// URL such as",
    ),
    "web_auth_issuer": (
        "web",
        {"webchat_auth_secret": SECRET, "webchat_auth_issuer": "https://id\n.example.com"},
        "webchat_auth_issuer must be the iss claim's text, one line without control characters,",
    ),
    "web_auth_leeway": (
        "web",
        {"webchat_auth_leeway": "30s"},
        "webchat_auth_leeway must be a number of seconds, 0 or more",
    ),
    "web_auth_token_url": (
        "web",
        {"webchat_auth_secret": SECRET, "webchat_auth_token_url": "https://app.example.com/t"},
        "webchat_auth_token_url must be a path on the chat's own origin such as /auth/token",
    ),
    "web_auth_env": (
        "web",
        {"webchat_env": {"AUTH_SECRET_FILE": "/etc/secret"}},
        "webchat_env may not set AUTH_* variables (got ['AUTH_SECRET_FILE']):",
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
    # The web hosts here (bad ones included) may open 1200 connections: 16 processes of 73, + 32.
    "redis_clients": (
        "redis",
        {"redis_maxclients": 100},
        "redis_maxclients 100 is less than the 1200 connections the web hosts' webchat",
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
    "lb_alias": (
        "lb",
        {"nginx_server_aliases": ["https://www.chat.example.com"]},
        "nginx_server_aliases must be a list of host names or addresses",
    ),
    "lb_rate": (
        "lb",
        {"nginx_api_rate": "10r/s"},
        "nginx_api_rate must be a whole number of at least 1, got 10r/s.",
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


def test_no_refusal_prints_a_secret(report: Run):
    assert SECRET not in report.output
    assert "too-short-a-secret" not in report.output


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
