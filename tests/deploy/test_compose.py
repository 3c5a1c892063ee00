"""docker-compose.yml, resolved by the real `docker-compose config` (no Docker engine needed).

What the issue asks of the stack, checked on the file Compose actually sees: Redis private,
with AOF and a password; `web` scalable and configured validly for webchat; healthchecks and
`depends_on: service_healthy`; pinned images; only Nginx public; the monitoring files mounted
where Prometheus and Grafana read them. No container is started here (no engine on this
machine): docs/deploy.md says what that leaves unproven.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.deploy.compose import EXAMPLE_ENV, SECRETS, compose_config, resolved
from tests.support.nginx import parse
from tests.support.servers import ROOT, free_port, require_binary, wait_until
from tests.support.timing import seconds
from webchat.config import load_config

# Images FROM scratch: no shell or HTTP client to probe with (see docker-compose.yml).
NO_HEALTHCHECK = {"redis-exporter", "nginx-exporter"}


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return resolved(SECRETS)


@pytest.fixture(scope="module")
def services(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return stack["services"]  # type: ignore[no-any-return]


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of every published port, in either form."""
    ports = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            ports.append((port.get("host_ip", "0.0.0.0"), int(port["published"]), port["target"]))
        else:
            host_ip, host_port, target = str(port).split("/")[0].rsplit(":", 2)
            ports.append((host_ip, int(host_port), int(target)))
    return ports


def test_the_stack_has_every_service(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {
        "redis",
        "web",
        "nginx",
        "prometheus",
        "grafana",
        "redis-exporter",
        "nginx-exporter",
    }


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_a_missing_password_is_refused_with_its_message(missing: str) -> None:
    values = {k: v for k, v in SECRETS.items() if k != missing}
    result = compose_config(values)
    assert result.returncode != 0
    assert f"set {missing} in .env" in result.stderr, result.stderr


def test_the_example_env_names_every_required_variable() -> None:
    required = set(re.findall(r"\$\{(\w+):\?", (ROOT / "docker-compose.yml").read_text()))
    example = dict(
        line.split("=", 1)
        for line in EXAMPLE_ENV.read_text().splitlines()
        if "=" in line[:40] and not line.startswith("#")
    )
    assert required == set(SECRETS) == set(example)
    # Filled in as the example says, the file is accepted.
    assert compose_config(SECRETS).returncode == 0


def test_redis_is_private_persistent_and_password_protected(
    services: dict[str, dict[str, Any]],
) -> None:
    redis = services["redis"]
    assert "ports" not in redis
    command = " ".join(redis["command"])
    assert "--appendonly yes" in command
    # `$$` stays escaped in Compose's output; in the container the shell expands the variable.
    assert '--requirepass "$$REDIS_PASSWORD"' in command
    assert "--maxmemory-policy noeviction" in command
    # A bound to reach (docs/security-redis.md): full, Redis refuses writes, never evicts.
    assert '--maxmemory "$$REDIS_MAXMEMORY"' in command
    assert redis["environment"]["REDIS_MAXMEMORY"] == "512mb"
    assert "--lazyfree-lazy-expire yes" in command
    assert redis["environment"]["REDIS_PASSWORD"] == SECRETS["REDIS_PASSWORD"]
    assert any(v.endswith(":/data") or ":/data:" in v for v in redis["volumes"])
    assert "REDISCLI_AUTH" in " ".join(redis["healthcheck"]["test"])


def test_web_is_scalable_and_built_from_the_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    web = services["web"]
    # `--scale web=N` needs every replica alike: no fixed name, no host port.
    assert "container_name" not in web
    assert "ports" not in web
    assert web["expose"] == ["8080"]
    assert web["build"]["context"] == str(ROOT)
    assert web["build"]["dockerfile"] == "Dockerfile"
    assert web["build"]["args"]["BASE_IMAGE"].startswith("python:3.11-slim")
    assert web["stop_grace_period"] == "15s"  # the drain ends within 10 s
    assert web["read_only"] is True and web["tmpfs"] == ["/tmp"]


def test_web_environment_is_a_valid_webchat_configuration(
    services: dict[str, dict[str, Any]],
) -> None:
    env = {k: str(v) for k, v in services["web"]["environment"].items()}
    config = load_config([], env)  # raises ConfigError on any bad value
    assert config.host == "0.0.0.0"
    assert config.port == 8080
    assert config.redis_url == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0"
    assert config.allowed_origins == ()  # same origin: Nginx passes the browser's Host


def test_healthchecks_and_start_order(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name in NO_HEALTHCHECK:
            assert "healthcheck" not in service, f"{name}: its image cannot run a probe"
        else:
            test = service["healthcheck"]["test"]
            assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
        for dependency, how in service.get("depends_on", {}).items():
            expected = "service_started" if dependency in NO_HEALTHCHECK else "service_healthy"
            assert how["condition"] == expected, f"{name} -> {dependency}"
    order = {name: set(service.get("depends_on", {})) for name, service in services.items()}
    assert order["web"] == {"redis"}
    assert order["nginx"] == {"web"}
    assert order["grafana"] == {"prometheus"}
    assert "nginx" in order["nginx-exporter"] and "redis" in order["redis-exporter"]


def test_web_probes_readiness_and_the_image_liveness(
    services: dict[str, dict[str, Any]],
) -> None:
    probe = " ".join(services["web"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8080/readyz" in probe
    assert "/healthz" in (ROOT / "Dockerfile").read_text()


def test_every_image_is_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        if name == "web":
            assert repository == "webchat"  # built here, tagged by WEBCHAT_TAG
            continue
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: {image} is not pinned"


def test_only_nginx_is_public_and_the_dashboards_stay_on_loopback(
    services: dict[str, dict[str, Any]],
) -> None:
    exposed = {name: published(service) for name, service in services.items()}
    assert exposed.pop("nginx") == [("0.0.0.0", 80, 80)]
    assert exposed.pop("prometheus") == [("127.0.0.1", 9090, 9090)]
    assert exposed.pop("grafana") == [("127.0.0.1", 3000, 3000)]
    assert all(ports == [] for ports in exposed.values()), exposed


def test_ports_follow_their_variables() -> None:
    values = {**SECRETS, "WEBCHAT_HTTP_PORT": "8088", "GRAFANA_PORT": "3300"}
    services = resolved(values)["services"]
    assert published(services["nginx"]) == [("0.0.0.0", 8088, 80)]
    assert published(services["grafana"]) == [("127.0.0.1", 3300, 3000)]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of the service's bind mounts."""
    found = {}
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("/"):
            found[target] = source
    return found


def test_monitoring_is_mounted_from_the_repository(services: dict[str, dict[str, Any]]) -> None:
    prometheus = mounts(services["prometheus"])
    monitoring = ROOT / "monitoring"
    assert prometheus["/etc/prometheus/prometheus.yml"] == str(
        monitoring / "prometheus" / "prometheus-compose.yml"
    )
    assert prometheus["/etc/prometheus/rules"] == str(monitoring / "prometheus" / "rules")
    command = services["prometheus"]["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in command
    grafana = mounts(services["grafana"])
    assert grafana["/etc/grafana/provisioning"] == str(monitoring / "grafana" / "provisioning")
    assert grafana["/var/lib/grafana/dashboards"] == str(monitoring / "grafana" / "dashboards")
    assert services["grafana"]["environment"]["PROMETHEUS_URL"] == "http://prometheus:9090"
    assert mounts(services["nginx"]) == {
        "/etc/nginx/nginx.conf": str(ROOT / "deploy/compose/nginx.conf")
    }


def test_exporters_are_where_prometheus_looks(services: dict[str, dict[str, Any]]) -> None:
    assert services["redis-exporter"]["expose"] == ["9121"]
    assert services["nginx-exporter"]["expose"] == ["9113"]
    exporter = services["redis-exporter"]["environment"]
    assert exporter["REDIS_ADDR"] == "redis://redis:6379"
    assert exporter["REDIS_PASSWORD"] == SECRETS["REDIS_PASSWORD"]
    # nginx-exporter scrapes the stub_status server of the Compose nginx config.
    (scrape_uri,) = [
        a.split("=", 1)[1]
        for a in services["nginx-exporter"]["command"]
        if a.startswith("--nginx.scrape-uri=")
    ]
    match = re.fullmatch(r"http://nginx:(\d+)(/\S+)", scrape_uri)
    assert match, scrape_uri
    conf = parse((ROOT / "deploy" / "compose" / "nginx.conf").read_text())
    stub = [
        server
        for server in conf.one("http").children("server")
        if [loc.values for loc in server.children("location") if loc.children("stub_status")]
        == [["=", match[2]]]
    ]
    assert len(stub) == 1 and stub[0].child("listen").values == [match[1]]
    assert "stub_status" in " ".join(services["nginx"]["healthcheck"]["test"])


def test_redis_options_start_a_real_redis_server(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    """The Compose Redis's options, as its shell would expand them, run a real redis-server
    (only the port and directory changed): a misspelt option would stop Redis from starting."""
    redis_service = services["redis"]
    script = redis_service["command"][-1].replace("$$", "$")
    env = redis_service["environment"]
    words = shlex.split(
        script.replace("$REDIS_PASSWORD", env["REDIS_PASSWORD"]).replace(
            "$REDIS_MAXMEMORY", env["REDIS_MAXMEMORY"]
        )
    )
    assert words[:2] == ["exec", "redis-server"]
    port = free_port()
    local = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    proc = subprocess.Popen(
        [require_binary("redis-server"), *words[2:], *local],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        client = redis.Redis(port=port, password=env["REDIS_PASSWORD"], socket_timeout=seconds(5))

        def answers() -> bool:
            assert proc.poll() is None, "redis-server refused the options"
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(answers, seconds(10), "redis-server to answer")
        config = client.config_get("*")
        assert (config["maxmemory"], config["maxmemory-policy"]) == (
            str(512 * 1024 * 1024),
            "noeviction",
        )
        assert config["lazyfree-lazy-expire"] == "yes" and config["appendonly"] == "yes"
    finally:
        proc.terminate()
        proc.wait(seconds(10))
