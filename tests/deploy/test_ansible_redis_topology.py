"""The redis role's sentinel and cluster topologies: rendered, and refused with one sentence.

render.yml renders redis.conf, sentinel.conf and the web hosts' environment files for a
Sentinel inventory (three redis hosts, a Redis and a Sentinel on each) and for a six-host
cluster; the app's own `load_config` must accept the REDIS_URL the webchat role computes.
Then each inventory shape the role cannot deploy stops deploy.yml in its preflight play with one
sentence (hosts in TEST-NET-1, never contacted). The role's cluster-create step runs for real
against six redis-servers on loopback ports, twice. The sentinel topology runs for real in
tests/e2e/test_deploy.py; the cluster topology is deployed onto hosts nowhere.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.ansible import Run, conf_lines, env_file, render, run_playbook
from tests.support.redis import RedisServer
from tests.support.redis_ha import RedisClusterGroup
from tests.support.servers import wait_until
from tests.support.timing import seconds
from webchat.config import load_config
from webchat.redis_url import parse_redis_url

PASSWORD = "p" * 32


def _render(
    folder: Path,
    redis_hosts: dict[str, str],
    more_groups: dict[str, list[str]] | None = None,
    **all_vars: Any,
) -> Path:
    hosts = {"web1": "10.9.2.11", "web2": "10.9.2.12", **redis_hosts}
    groups = {
        "lb": ["web1"],
        "web": ["web1", "web2"],
        "redis": list(redis_hosts),
        "monitoring": ["web2"],
        **(more_groups or {}),
    }
    inventory = {
        "all": {
            "vars": {"redis_password": PASSWORD, "webchat_redis_password": PASSWORD, **all_vars},
            "hosts": {
                n: {"ansible_host": a, "webchat_private_address": a} for n, a in hosts.items()
            },
            "children": {g: {"hosts": {h: {} for h in members}} for g, members in groups.items()},
        }
    }
    (folder / "hosts.yml").write_text(json.dumps(inventory))
    return render(folder / "hosts.yml", folder)


SENTINEL_HOSTS = {"redis1": "10.9.2.13", "redis2": "10.9.2.14", "redis3": "10.9.2.15"}
CLUSTER_HOSTS = {f"redis{n}": f"10.9.2.{20 + n}" for n in range(1, 7)}
# Each inventory rendered: (redis hosts, more groups, variables for all).
INVENTORIES: dict[str, tuple[dict[str, str], dict[str, list[str]], dict[str, Any]]] = {
    "sentinel": (
        SENTINEL_HOSTS,
        {},
        {"redis_topology": "sentinel", "redis_sentinel_down_after_ms": 2000},
    ),
    # A redis_sentinel group puts the Sentinels elsewhere.
    "sentinel_group": (
        {"redis1": "10.9.2.13", "redis2": "10.9.2.14"},
        {"redis_sentinel": ["redis1", "redis2", "web1"]},
        {"redis_topology": "sentinel", "webchat_redis_replicas_ack": 0},
    ),
    "cluster": (CLUSTER_HOSTS, {}, {"redis_topology": "cluster"}),
    # The single topology (the default) is rendered by test_ansible_templates.py.
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], dict[str, Run]]:
    """Every inventory rendered and deploy.yml for each shape it cannot deploy (SHAPES below),
    two ansible-playbook runs at a time from one queue: a run keeps about one core busy, and
    one queue leaves no core idle while the last run of a batch finishes."""

    def render(name: str, folder: Path) -> Path:
        hosts, groups, variables = INVENTORIES[name]
        return _render(folder, hosts, groups, **variables)

    # The folders are made here, in this thread: tmp_path_factory is not thread-safe.
    with ThreadPoolExecutor(2) as pool:
        renders = {
            name: pool.submit(render, name, tmp_path_factory.mktemp(name)) for name in INVENTORIES
        }
        refusals = {
            shape: pool.submit(_refusal, tmp_path_factory.mktemp(shape), shape) for shape in SHAPES
        }
        return (
            {name: run.result() for name, run in renders.items()},
            {shape: run.result() for shape, run in refusals.items()},
        )


@pytest.fixture(scope="module")
def rendered(runs: tuple[dict[str, Path], dict[str, Run]]) -> dict[str, Path]:
    return runs[0]


@pytest.fixture(scope="module")
def sentinel(rendered: dict[str, Path]) -> Path:
    return rendered["sentinel"]


def test_sentinel_data_nodes_start_as_master_and_replicas(sentinel: Path):
    marker = "# webchat: Redis owns this file (written once by Ansible, never again)."
    for host in SENTINEL_HOSTS:
        text = (sentinel / host / "redis.conf").read_text()
        assert marker in text.splitlines(), "reruns find the marker and leave the file to Redis"
        directives = conf_lines(sentinel / host / "redis.conf")
        assert f"masterauth {PASSWORD}" in directives, "any node may be promoted"
        assert f"requirepass {PASSWORD}" in directives
        replicaof = [d for d in directives if d.startswith("replicaof ")]
        assert replicaof == ([] if host == "redis1" else ["replicaof 10.9.2.13 6379"]), host
        assert not [d for d in directives if d.startswith("cluster-")]


def test_sentinels_watch_the_first_host(sentinel: Path):
    for host, address in SENTINEL_HOSTS.items():
        directives = conf_lines(sentinel / host / "sentinel.conf")
        assert f"bind {address}" in directives
        assert "port 26379" in directives
        # A majority of three must agree; the test inventory's faster down-after.
        assert "sentinel monitor webchat 10.9.2.13 6379 2" in directives
        assert "sentinel down-after-milliseconds webchat 2000" in directives
        assert f"sentinel auth-pass webchat {PASSWORD}" in directives
    assert not (sentinel / "web1" / "sentinel.conf").exists(), "Sentinels on the redis hosts only"


def test_sentinel_url_names_every_sentinel_and_the_app_accepts_it(sentinel: Path):
    env = env_file(sentinel / "web2" / "8081.env")
    sentinels = ",".join(f"{a}:26379" for a in SENTINEL_HOSTS.values())
    assert env["REDIS_URL"] == f"redis+sentinel://:{PASSWORD}@{sentinels}/webchat/0"
    assert env["REDIS_REPLICAS_ACK"] == "1"
    config = load_config([], env)
    assert config.redis_replicas_ack == 1
    target = parse_redis_url(config.redis_url)
    assert (target.kind, target.service, target.password) == ("sentinel", "webchat", PASSWORD)
    assert [h for h, _ in target.nodes] == list(SENTINEL_HOSTS.values())


def test_sentinels_on_a_group_of_their_own(rendered: dict[str, Path]):
    """A redis_sentinel group puts the Sentinels elsewhere: the URL names those hosts."""
    folder = rendered["sentinel_group"]
    env = env_file(folder / "web2" / "8081.env")
    assert (
        env["REDIS_URL"].split("@")[1]
        == "10.9.2.13:26379,10.9.2.14:26379,10.9.2.11:26379/webchat/0"
    )
    assert env["REDIS_REPLICAS_ACK"] == "0"
    assert (folder / "web1" / "sentinel.conf").exists()
    assert not (folder / "web1" / "redis.conf").exists()


def test_cluster_nodes_and_seed_url(rendered: dict[str, Path]):
    folder = rendered["cluster"]
    for host, address in CLUSTER_HOSTS.items():
        directives = conf_lines(folder / host / "redis.conf")
        assert "cluster-enabled yes" in directives
        assert "cluster-config-file nodes-6379.conf" in directives
        assert f"cluster-announce-ip {address}" in directives
        assert f"masterauth {PASSWORD}" in directives
        assert not [d for d in directives if d.startswith("replicaof")]
        assert not (folder / host / "sentinel.conf").exists()
    env = env_file(folder / "web1" / "8081.env")
    seeds = ",".join(f"{a}:6379" for a in CLUSTER_HOSTS.values())
    assert env["REDIS_URL"] == f"redis+cluster://:{PASSWORD}@{seeds}"
    assert env["REDIS_REPLICAS_ACK"] == "0", "host pairs: a promoted replica has no replica"
    target = parse_redis_url(load_config([], env).redis_url)
    assert target.kind == "cluster" and len(target.nodes) == 6


# Inventory shapes the role cannot deploy: (redis hosts, extra groups, all vars, sentence).
SHAPES: dict[str, tuple[int, dict[str, list[str]], dict[str, Any], str]] = {
    "unknown": (
        1,
        {},
        {"redis_topology": "replicated"},
        "redis_topology must be single, sentinel or cluster, got replicated.",
    ),
    "single_two_hosts": (
        2,
        {},
        {},
        "redis_topology single runs one Redis, but the redis group has 2 hosts (r1, r2):",
    ),
    "sentinel_no_replica": (
        1,
        {"redis_sentinel": ["r1", "s1", "s2"]},
        {"redis_topology": "sentinel", "webchat_redis_replicas_ack": 0},
        "redis_topology sentinel needs a master and at least one replica:",
    ),
    "sentinel_two_sentinels": (
        2,
        {},
        {"redis_topology": "sentinel"},
        "redis_topology sentinel needs at least 3 Sentinel hosts (a majority must agree on a"
        " failover), got 2 (r1, r2):",
    ),
    "sentinel_quorum": (
        3,
        {},
        {"redis_topology": "sentinel", "redis_sentinel_quorum": 4},
        "redis_sentinel_quorum must be from 1 to the number of Sentinels (3), got 4.",
    ),
    "sentinel_master": (
        3,
        {},
        {"redis_topology": "sentinel", "redis_sentinel_master": "web"},
        "redis_sentinel_master must be a host of the redis group, got web.",
    ),
    # Sentinel with 3 redis hosts: each master has 2 replicas, never 3.
    "replicas_ack": (
        3,
        {},
        {"redis_topology": "sentinel", "webchat_redis_replicas_ack": 3},
        "webchat_redis_replicas_ack must be a whole number no larger than the replicas each"
        " master has (2 with redis_topology sentinel and 3 redis hosts)",
    ),
    "sentinel_names": (
        3,
        {},
        {"redis_topology": "sentinel", "webchat_private_address": "redis.internal"},
        "redis_topology sentinel needs the private address of every Redis and Sentinel host as"
        " an IP address",
    ),
    "cluster_four": (
        4,
        {},
        {"redis_topology": "cluster"},
        "redis_topology cluster needs an even number of redis hosts, 6 or more",
    ),
}


def _refusal(folder: Path, shape: str) -> Run:
    count, extra_groups, all_vars, _ = SHAPES[shape]
    redis = [f"r{n}" for n in range(1, count + 1)]
    groups = {"lb": ["web"], "web": ["web"], "redis": redis, "monitoring": ["web"], **extra_groups}
    inventory = {
        "all": {
            "vars": {
                "redis_password": "x" * 32,
                "webchat_redis_password": "x" * 32,
                "grafana_admin_password": "y" * 16,
                "ansible_host": "192.0.2.1",
                "ansible_connection": "ssh",
                **all_vars,
            },
            "children": {g: {"hosts": {h: {} for h in hosts}} for g, hosts in groups.items()},
        }
    }
    (folder / "hosts.yml").write_text(json.dumps(inventory))
    return run_playbook("deploy.yml", folder / "hosts.yml", timeout=180)


@pytest.fixture(scope="module")
def refusals(runs: tuple[dict[str, Path], dict[str, Run]]) -> dict[str, Run]:
    return runs[1]


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_an_inventory_shape_the_role_cannot_deploy_gets_its_sentence(
    refusals: dict[str, Run], shape: str
):
    run, sentence = refusals[shape], SHAPES[shape][3]
    assert run.returncode != 0
    assert run.plays == ["Check the inventory and every variable before changing anything"]
    assert run.total("unreachable") == 0, "a host was contacted"
    redis = [f"r{n}" for n in range(1, SHAPES[shape][0] + 1)]
    hosts = ["web"] if shape == "replicas_ack" else redis
    messages = {m for host in hosts for m in run.failed_msgs(host) if "Bad variables" not in m}
    assert messages, run.output[-4000:]
    assert all(m.startswith(sentence) for m in messages), messages
    assert all("\n" not in m.strip() for m in messages), "one line"


def _cluster_step(nodes: list[RedisServer], password: str) -> Run:
    extra = {
        "redis_cluster_nodes": [f"127.0.0.1:{node.port}" for node in nodes],
        "redis_password": password,
        "ansible_python_interpreter": sys.executable,  # this venv's, on the control node
    }
    cluster = str(Path(__file__).with_name("cluster.yml"))
    return run_playbook(cluster, "localhost,", "-e", json.dumps(extra), timeout=180)


def test_the_cluster_step_creates_once_then_changes_nothing():
    """The role's `redis-cli --cluster create` step, run for real against six cluster-enabled
    redis-servers on loopback ports (not on hosts): the first run joins them, three masters
    with a replica each; the second finds the cluster formed and changes nothing."""
    group = RedisClusterGroup(password=PASSWORD)
    try:
        for node in group.nodes:
            node.start()
        first = _cluster_step(group.nodes, PASSWORD)
        assert first.returncode == 0, first.output[-6000:]
        assert first.recap["localhost"]["changed"] == 1, first.recap

        def paired() -> bool:
            slots = group.slots()
            return len(slots) == 3 and all(len(replicas) == 1 for *_, replicas in slots)

        # Three masters with a replica each, once the nodes' gossip has spread who replicates.
        wait_until(lambda: paired() and group._settled(), seconds(30), "three pairs in sync")
        again = _cluster_step(group.nodes, PASSWORD)
        assert again.returncode == 0, again.output[-6000:]
        assert again.recap["localhost"]["changed"] == 0, again.recap
    finally:
        group.cleanup()


def test_the_cluster_step_stops_on_a_partly_formed_cluster():
    group = RedisClusterGroup(password=PASSWORD)
    try:
        for node in group.nodes:
            node.start()
        first, second = group.nodes[:2]
        with first.client() as client:
            bus = second.extra_args[second.extra_args.index("--cluster-port") + 1]
            client.execute_command("CLUSTER MEET", "127.0.0.1", second.port, bus)
        run = _cluster_step(group.nodes, PASSWORD)
        assert run.returncode != 0
        [message] = run.failed_msgs("localhost")
        assert message.startswith("The Redis Cluster on 127.0.0.1:"), message
        assert "is neither new nor complete" in message and "\n" not in message.strip()
    finally:
        group.cleanup()
