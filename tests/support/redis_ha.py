"""Real Redis topologies for tests: a master with replicas and Sentinels, and a Redis Cluster.

`SentinelGroup` runs a master, two replicas and three Sentinels; `RedisClusterGroup` runs three
masters with one replica each, joined with `redis-cli --cluster create`. Every process listens
on a free loopback port (cluster bus ports included), and `start()` returns only once the
topology is complete as its clients will see it: replicas in sync, every Sentinel knowing the
master, both replicas and the other Sentinels, every cluster node agreeing on the slots.
Timeouts are set low (a node is down after 1 s) so failovers take seconds, not minutes.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
from redis.crc import key_slot

from tests.support.redis import RedisServer
from tests.support.servers import alive_and, free_port, require_binary, wait_until
from tests.support.timing import seconds

SERVICE = "webchat"
DOWN_AFTER_MS = 1000  # a master that does not answer for this long is down
FAILOVER_TIMEOUT_MS = 3000
# Every node may become a master: no 5 s wait before it sends a replica its first copy.
REPLICATION = ["--repl-diskless-sync-delay", "0"]


def _info(server: RedisServer, section: str) -> dict[str, Any]:
    with server.client() as client:
        return dict(client.info(section))


def _answers(call: Any) -> Any:
    """`call()`, or None while the server cannot answer (starting, stopping, dead)."""
    try:
        return call()
    except (redis.RedisError, OSError):
        return None


def wait_in_sync(replica: RedisServer, timeout: float = 20) -> None:
    """Return once `replica` has its master's data and follows it (its link is up)."""

    def synced() -> bool:
        info = _answers(lambda: _info(replica, "replication"))
        return bool(info) and info.get("master_link_status") == "up"

    wait_until(synced, seconds(timeout), f"replica on {replica.port} to be in sync")


class SentinelGroup:
    """A master and two replicas (`password` on all of them) watched by three Sentinels."""

    def __init__(self, password: str | None = None) -> None:
        self.password = password
        auth = [*REPLICATION, "--masterauth", password] if password else REPLICATION
        self.master = RedisServer(password=password, appendonly=True, extra_args=auth)
        self.replicas = [
            RedisServer(
                password=password,
                appendonly=True,
                extra_args=[*auth, "--replicaof", "127.0.0.1", str(self.master.port)],
            )
            for _ in range(2)
        ]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.dir = Path(tempfile.mkdtemp(prefix="webchat-sentinel-"))
        self.sentinels: list[subprocess.Popen[bytes]] = []

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, *self.replicas]

    def url(self, db: int = 0) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{auth}{hosts}/{SERVICE}/{db}"

    def start(self) -> SentinelGroup:
        try:
            self.master.start()
            for replica in self.replicas:
                replica.start()
            for replica in self.replicas:
                self.wait_in_sync(replica)
            for n, port in enumerate(self.sentinel_ports):
                self.sentinels.append(self._start_sentinel(n, port))
            wait_until(self._sentinels_agree, seconds(30), "every Sentinel to see the whole group")
        except BaseException:
            self.cleanup()
            raise
        return self

    def _start_sentinel(self, n: int, port: int) -> subprocess.Popen[bytes]:
        conf = self.dir / f"sentinel-{n}.conf"
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f"dir {self.dir}",
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.master.port} 2",
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {SERVICE} 2",
        ]
        if self.password:
            lines.append(f"sentinel auth-pass {SERVICE} {self.password}")
        conf.write_text("\n".join(lines) + "\n")  # Sentinel rewrites it: a file of its own
        log = self.dir / f"sentinel-{n}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [require_binary("redis-server"), str(conf), "--sentinel"],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(
            alive_and(
                proc,
                "redis-sentinel",
                lambda: log.read_text(errors="replace"),
                lambda: _answers(lambda: self.sentinel(n).ping()),
            ),
            seconds(10),
            f"Sentinel on port {port} to answer PING",
        )
        return proc

    def sentinel(self, n: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[n], socket_timeout=seconds(2))

    def _sentinels_agree(self) -> bool:
        for n in range(len(self.sentinel_ports)):
            with self.sentinel(n) as client:
                state = _answers(lambda client=client: client.sentinel_master(SERVICE))
            if not state or state["num-slaves"] < 2 or state["num-other-sentinels"] < 2:
                return False
        return True

    def master_port(self) -> int | None:
        """The master's port as the Sentinels report it now."""
        with self.sentinel() as client:
            address = _answers(lambda: client.sentinel_get_master_addr_by_name(SERVICE))
        return int(address[1]) if address else None

    def current_master(self) -> RedisServer:
        port = self.master_port()
        return next(s for s in self.servers if s.port == port)

    def wait_in_sync(self, replica: RedisServer, timeout: float = 20) -> None:
        wait_in_sync(replica, timeout)

    def wait_failover(self, old_port: int, timeout: float = 30) -> RedisServer:
        """Wait until a replica is promoted and answers as master; return it."""

        def promoted() -> bool:
            port = self.master_port()
            if port in (None, old_port):
                return False
            server = next(s for s in self.servers if s.port == port)
            info = _answers(lambda: _info(server, "replication"))
            return bool(info) and info.get("role") == "master"

        wait_until(promoted, seconds(timeout), f"a replica to replace the master on {old_port}")
        return self.current_master()

    def cleanup(self) -> None:
        for proc in self.sentinels:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=seconds(5))
        for server in self.servers:
            server.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterGroup:
    """A Redis Cluster of three masters with a replica each, on loopback ports."""

    def __init__(self, password: str | None = None, masters: int = 3, replicas: int = 1) -> None:
        self.password = password
        self.replicas_per_master = replicas
        auth = [*REPLICATION, "--masterauth", password] if password else REPLICATION
        self.nodes = [
            RedisServer(
                password=password,
                appendonly=True,
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    str(DOWN_AFTER_MS),
                    "--cluster-port",
                    str(free_port()),
                    *auth,
                ],
            )
            for _ in range(masters * (1 + replicas))
        ]
        self.killed: list[RedisServer] = []

    def url(self, seeds: int = 2) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:seeds])
        return f"redis+cluster://{auth}{hosts}"

    def start(self) -> RedisClusterGroup:
        try:
            for node in self.nodes:
                node.start()
            command = [require_binary("redis-cli")]
            if self.password:
                command += ["--no-auth-warning", "-a", self.password]
            command += ["--cluster", "create"]
            command += [f"127.0.0.1:{node.port}" for node in self.nodes]
            command += ["--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=seconds(60), check=False
            )
            if result.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{result.stdout}")
            wait_until(self._settled, seconds(30), "every cluster node to agree and sync")
        except BaseException:
            self.cleanup()
            raise
        return self

    def _settled(self) -> bool:
        for node in self.live_nodes:
            info = _answers(lambda node=node: _cluster_info(node))
            if not info or info.get("cluster_state") != "ok":
                return False
            if int(info.get("cluster_known_nodes", 0)) < len(self.nodes):
                return False
            replication = _answers(lambda node=node: _info(node, "replication"))
            if not replication:
                return False
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False
        return True

    @property
    def live_nodes(self) -> list[RedisServer]:
        return [node for node in self.nodes if node not in self.killed]

    def slots(self) -> list[tuple[int, int, int, list[int]]]:
        """(first slot, last slot, master port, replica ports) as a live node reports them."""
        for node in self.live_nodes:
            with node.client() as client:
                ranges = _answers(lambda client=client: client.execute_command("CLUSTER SLOTS"))
            if ranges:
                return [
                    (int(r[0]), int(r[1]), int(r[2][1]), [int(x[1]) for x in r[3:]]) for r in ranges
                ]
        raise RuntimeError("no cluster node answers")

    def master_of(self, key: str) -> RedisServer:
        slot = key_slot(key.encode())
        port = next(p for lo, hi, p, _ in self.slots() if lo <= slot <= hi)
        return next(node for node in self.nodes if node.port == port)

    def masters(self) -> list[RedisServer]:
        ports = {port for _, _, port, _ in self.slots()}
        return [node for node in self.nodes if node.port in ports]

    def kill(self, node: RedisServer) -> int:
        """SIGKILL one node (it stays down); the first slot it served, if it was a master."""
        first = next((lo for lo, _, port, _ in self.slots() if port == node.port), -1)
        node.kill()
        self.killed.append(node)
        return first

    def revive(self, node: RedisServer) -> None:
        """Start a killed node again: it rejoins the cluster as a replica of whichever node
        took over its slots, and this returns once it is in sync."""
        node.start()
        self.killed.remove(node)
        wait_until(self._settled, seconds(30), f"node {node.port} to rejoin and sync")

    def wait_failover(self, slot: int, old: RedisServer, timeout: float = 30) -> RedisServer:
        """Wait until another node serves `slot` (which `old` served) and every live node says
        the cluster is ok; return the new master."""

        def promoted() -> RedisServer | None:
            try:
                port = next(p for lo, hi, p, _ in self.slots() if lo <= slot <= hi)
            except (RuntimeError, StopIteration):
                return None
            if port == old.port or not self._state_ok():
                return None
            return next(node for node in self.nodes if node.port == port)

        deadline = time.monotonic() + seconds(timeout)
        while (found := promoted()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no failover of the master on {old.port} within {timeout}s")
            time.sleep(0.05)  # polling the cluster's state, which no event reports
        return found

    def _state_ok(self) -> bool:
        return all(
            (_answers(lambda n=n: _cluster_info(n)) or {}).get("cluster_state") == "ok"
            for n in self.live_nodes
        )

    def flush(self) -> None:
        """Empty every master (between tests sharing the cluster)."""
        for node in self.masters():
            node.command("FLUSHALL")

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


def _cluster_info(node: RedisServer) -> dict[str, Any]:
    with node.client() as client:
        return dict(client.execute_command("CLUSTER INFO"))
