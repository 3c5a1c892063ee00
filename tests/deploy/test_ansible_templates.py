"""The roles' templates, rendered for an inventory, pass their own checkers.

render.yml renders them on the control node for an inventory of one lb, two web hosts (one
with two instances), Redis and monitoring; then:
nginx.conf passes `nginx -t` (only file paths rewritten for this machine: pid, logs, cache,
certificate) and balances every port of every web host with a shared zone; the Prometheus
targets pass `promtool check config` (which reads file_sd files) and list every instance and
exporter; the environment files and the unit say what the service needs.
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.deploy.ansible import conf_lines, env_file, render
from tests.support import nginx as nginxconf
from tests.support.servers import free_port, require_binary, wait_until
from tests.support.timing import seconds
from webchat.config import load_config

HOSTS = {
    "lb": {"lb1": "10.9.0.10"},
    "web": {"web1": "10.9.0.11", "web2": "10.9.0.12"},
    "redis": {"redis1": "10.9.0.13"},
    "monitoring": {"mon1": "10.9.0.14"},
}

AUTH = {
    "webchat_auth_secret": "k" * 40,
    "webchat_auth_audience": "chat",
    "webchat_auth_issuer": "https://app.example.com",
    "webchat_auth_leeway": 10,
    "webchat_auth_token_url": "/auth/token",
}


def _inventory() -> dict[str, Any]:
    groups = {
        group: {
            "hosts": {
                n: {"ansible_host": a, "webchat_private_address": a} for n, a in hosts.items()
            }
        }
        for group, hosts in HOSTS.items()
    }
    # web2 runs two instances: every port of every host is balanced and scraped.
    groups["web"]["hosts"]["web2"]["webchat_ports"] = [8081, 8082]
    # web1 runs in authenticated mode (web2 stays anonymous).
    groups["web"]["hosts"]["web1"].update(AUTH)
    return {
        "all": {
            "vars": {
                "redis_password": "p" * 32,
                "webchat_redis_password": "p" * 32,
                "webchat_otel": {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://10.9.0.14:4318"},
            },
            "children": groups,
        }
    }


def _one_host_inventory() -> dict[str, Any]:
    host = {"chat1": {"ansible_host": "10.9.1.5", "webchat_private_address": "10.9.1.5"}}
    return {
        "all": {
            "vars": {"redis_password": "p" * 32, "webchat_redis_password": "p" * 32},
            "hosts": host,
            "children": {g: {"hosts": {"chat1": {}}} for g in ("lb", "web", "redis", "monitoring")},
        }
    }


@pytest.fixture(scope="module")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both inventories rendered at once: a run keeps about one core busy, the machine has two."""

    def one(base: Path, inventory: dict[str, Any]) -> Path:
        (base / "hosts.yml").write_text(json.dumps(inventory))
        return render(base / "hosts.yml", base)

    # The folders are made here, in this thread: tmp_path_factory is not thread-safe.
    with ThreadPoolExecutor(2) as pool:
        main = pool.submit(one, tmp_path_factory.mktemp("render"), _inventory())
        one_host = pool.submit(one, tmp_path_factory.mktemp("one-host"), _one_host_inventory())
        return {"main": main.result(), "one_host": one_host.result()}


@pytest.fixture(scope="module")
def rendered(renders: dict[str, Path]) -> Path:
    return renders["main"]


def test_nginx_conf_passes_nginx_t(rendered: Path, tmp_path: Path):
    config = nginxconf.parse((rendered / "lb1" / "nginx.conf").read_text())
    # Only paths differ on this machine: where nginx writes, and a certificate made here.
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=seconds(30),
    )
    for directive in config.root.walk():
        if directive.name == "pid":
            directive.args = [str(tmp_path / "nginx.pid")]
        elif directive.name == "error_log":
            directive.args = [str(tmp_path / "error.log")]
        elif directive.name == "user":
            directive.args = ["root"]
        elif directive.name == "proxy_cache_path":
            directive.args = [str(tmp_path / "cache"), *directive.args[1:]]
        elif directive.name == "ssl_certificate":
            directive.args = [str(cert)]
        elif directive.name == "ssl_certificate_key":
            directive.args = [str(key)]
    (tmp_path / "nginx.conf").write_text(config.text())
    result = subprocess.run(
        [
            require_binary("nginx"),
            "-t",
            "-p",
            f"{tmp_path}/",
            "-c",
            str(tmp_path / "nginx.conf"),
            "-e",
            str(tmp_path / "error.log"),
        ],
        capture_output=True,
        text=True,
        timeout=seconds(10),
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_nginx_balances_every_port_of_every_web_host(rendered: Path):
    config = nginxconf.parse((rendered / "lb1" / "nginx.conf").read_text())
    upstream = config.one("upstream")
    servers = [d.values[0] for d in upstream.children("server")]
    assert servers == ["10.9.0.11:8081", "10.9.0.12:8081", "10.9.0.12:8082"]
    # Without a shared zone, least_conn balances per worker only.
    assert upstream.child("zone").values[0] == "webchat_upstream"
    assert upstream.child("least_conn")
    tls = _tls_server(config)
    ws = config.location("=", "/ws", server=tls)
    headers = {d.values[0]: d.values[1] for d in ws.children("proxy_set_header")}
    assert headers["Host"] == "$http_host", "browsers get 403 without the Host header"
    assert headers["Upgrade"] == "$http_upgrade"
    assert config.location("=", "/metrics", server=tls).child("return").values == ["404"]


def _tls_server(config: nginxconf.Config) -> nginxconf.Directive:
    """The server of the service's names on HTTPS (not the default server dropping others)."""
    (server,) = [
        s
        for s in config.one("http").children("server")
        if s.block is not None
        and s.child("server_name").values != ["_"]
        and s.children("listen")[0].values[:2] == ["443", "ssl"]
    ]
    return server


def test_nginx_redirects_http_and_serves_stub_status_on_loopback(rendered: Path):
    config = nginxconf.parse((rendered / "lb1" / "nginx.conf").read_text())
    servers = [d for d in config.one("http").children("server") if d.block is not None]
    # Other names are dropped by a default server (tests/deploy/test_ansible_nginx.py); the
    # service's names and the lb's own address are redirected to HTTPS.
    plain = next(
        s
        for s in servers
        if s.children("listen")[0].values == ["80"] and s.child("server_name").values != ["_"]
    )
    assert plain.child("server_name").values == ["chat.example.com", "10.9.0.10"]
    redirect = plain.child("location").child("return").values
    assert redirect == ["301", "https://$host$request_uri"], redirect
    tls = _tls_server(config)
    assert tls.child("ssl_certificate").values == ["/etc/nginx/tls/webchat.crt"]
    status = next(s for s in servers if s.children("listen")[0].values[0].startswith("127.0.0.1:"))
    assert any(d.name == "stub_status" for d in status.walk())
    assert len(servers) == 4


def test_prometheus_targets_pass_promtool_and_list_every_instance(rendered: Path, tmp_path: Path):
    targets = rendered / "mon1" / "targets"
    found = {
        job: yaml.safe_load((targets / f"{job}.yml").read_text())
        for job in ("webchat", "redis", "nginx", "node")
    }
    addresses = {
        job: sorted(t for group in groups for t in group["targets"])
        for job, groups in found.items()
    }
    assert addresses == {
        "webchat": ["10.9.0.11:8081", "10.9.0.12:8081", "10.9.0.12:8082"],
        "redis": ["10.9.0.13:9121"],
        "nginx": ["10.9.0.10:9113"],
        "node": sorted(f"{a}:9100" for hosts in HOSTS.values() for a in hosts.values()),
    }
    config = {
        "scrape_configs": [
            {"job_name": job, "file_sd_configs": [{"files": [str(targets / f"{job}.yml")]}]}
            for job in found
        ]
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [require_binary("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=seconds(30),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_environment_files_and_unit(rendered: Path):
    env = (rendered / "web2" / "8082.env").read_text()
    values = dict(
        line.split("=", 1) for line in env.splitlines() if line and not line.startswith("#")
    )
    assert values["HOST"] == '"10.9.0.12"'
    assert values["PORT"] == '"8082"'
    assert values["WORKERS"] == '"1"'
    assert values["REDIS_URL"] == f'"redis://:{"p" * 32}@10.9.0.13:6379/0"'
    assert values["OTEL_EXPORTER_OTLP_ENDPOINT"] == '"http://10.9.0.14:4318"'
    unit = (rendered / "web1" / "webchat@.service").read_text()
    for setting in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "Restart=on-failure",
        "LimitNOFILE=1048576",
        "User=webchat",
        "EnvironmentFile=/etc/webchat/%i.env",
    ):
        assert setting in unit.splitlines(), setting


def test_the_single_topology_has_no_replica_setting(rendered: Path):
    """The default topology: one Redis, no replication, no cluster, no acknowledgements (the
    other topologies are in test_ansible_redis_topology.py)."""
    env = env_file(rendered / "web1" / "8081.env")
    assert env["REDIS_URL"] == f"redis://:{'p' * 32}@10.9.0.13:6379/0"
    assert "REDIS_REPLICAS_ACK" not in env
    directives = conf_lines(rendered / "redis1" / "redis.conf")
    assert not [d for d in directives if d.startswith(("replicaof", "masterauth", "cluster-"))]


def test_a_single_host_inventory_renders_and_checks(renders: dict[str, Path]):
    """One host in every group: it balances to itself, scrapes itself, checks pass."""
    folder = renders["one_host"]
    config = nginxconf.parse((folder / "chat1" / "nginx.conf").read_text())
    assert [d.values[0] for d in config.one("upstream").children("server")] == ["10.9.1.5:8081"]
    env = (folder / "chat1" / "8081.env").read_text()
    assert 'REDIS_URL="redis://:' + "p" * 32 + '@10.9.1.5:6379/0"' in env
    node = yaml.safe_load((folder / "chat1" / "targets" / "node.yml").read_text())
    assert [t for group in node for t in group["targets"]] == ["10.9.1.5:9100"]


def test_redis_conf_starts_a_redis_that_refuses_writes_when_full(rendered: Path, tmp_path: Path):
    """The rendered redis.conf, with only its paths and address rewritten for this machine,
    runs a real redis-server that is what webchat's hardening needs (docs/security-redis.md):
    a password, noeviction at maxmemory (a full Redis refuses writes, so instances turn not
    ready, instead of evicting history), writes refused after a failed save, expired history
    streams freed in the background."""
    text = (rendered / "redis1" / "redis.conf").read_text()
    directives = dict(
        line.split(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert directives["bind"] == "10.9.0.13", "the private address only"
    assert int(directives["maxclients"]) >= 64 + 9
    port = free_port()
    local = {
        "bind": "127.0.0.1",
        "port": str(port),
        "dir": str(tmp_path),
        "pidfile": str(tmp_path / "redis.pid"),
        "logfile": str(tmp_path / "redis.log"),
        "supervised": "no",
        "maxclients": "100",  # the test's own file limit may be lower than the host's
    }
    lines = [
        f"{line.split(' ', 1)[0]} {local[line.split(' ', 1)[0]]}"
        if line.split(" ", 1)[0] in local
        else line
        for line in text.splitlines()
    ]
    (tmp_path / "redis.conf").write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen([require_binary("redis-server"), str(tmp_path / "redis.conf")])
    try:
        anonymous = redis.Redis(port=port, socket_timeout=seconds(5))

        def refuses_anonymous() -> bool:
            assert proc.poll() is None, (tmp_path / "redis.log").read_text()
            try:
                anonymous.ping()
            except redis.AuthenticationError:
                return True
            except redis.ConnectionError:
                return False
            raise AssertionError("redis.conf lets a client in without the password")

        wait_until(refuses_anonymous, seconds(10), "redis-server to answer")
        client = redis.Redis(port=port, password="p" * 32, socket_timeout=seconds(5))
        config = client.config_get("*")
        assert config["maxmemory-policy"] == "noeviction"
        assert config["maxmemory"] == str(512 * 1024 * 1024)
        assert config["stop-writes-on-bgsave-error"] == "yes"
        assert config["lazyfree-lazy-expire"] == "yes"
        assert config["appendonly"] == "yes"
        client.config_set("maxmemory", 1)  # full: a write is refused, nothing is evicted
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            client.set("wc:probe", "x")
    finally:
        proc.terminate()
        proc.wait(seconds(10))


def test_authenticated_mode_reaches_the_service(rendered: Path, tmp_path: Path):
    """web1's environment is an authenticated configuration the service accepts; web2's has
    no AUTH_* at all (anonymous)."""
    env = env_file(rendered / "web1" / "8081.env")
    auth = {k: v for k, v in env.items() if k.startswith("AUTH_")}
    assert auth == {
        "AUTH_SECRET_FILE": "/etc/webchat/auth-secret",
        "AUTH_LEEWAY": "10",
        "AUTH_AUDIENCE": "chat",
        "AUTH_ISSUER": "https://app.example.com",
        "AUTH_TOKEN_URL": "/auth/token",
    }
    assert not [k for k in env_file(rendered / "web2" / "8081.env") if k.startswith("AUTH_")]
    # What the service makes of it, with the secret file where this machine has it.
    secret = tmp_path / "auth-secret"
    secret.write_text(AUTH["webchat_auth_secret"] + "\n")
    config = load_config([], {**env, "AUTH_SECRET_FILE": str(secret)})
    assert config.authenticated
    assert (config.auth_audience, config.auth_issuer) == ("chat", "https://app.example.com")
    assert (config.auth_leeway, config.auth_token_url) == (10.0, "/auth/token")
