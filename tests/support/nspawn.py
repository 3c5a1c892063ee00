"""Real systemd hosts for deployment tests: systemd-nspawn containers on a private bridge.

`Cluster(names).start()` gives each name a booted Debian 12 container (systemd, sshd) with a
static address on a bridge the test creates, reached over SSH with a key the test generates.
The containers have no route beyond the bridge: they install Debian packages through an
apt-cacher-ng the cluster starts on the bridge address, which passes on requests for Debian's
archive only (a host asking for another repository, such as Grafana's, is refused).

The root filesystem is debootstrapped once and cached outside the repository
(WEBCHAT_TEST_CACHE, default /var/cache/webchat-test), under a name keyed by what goes into
it; each container boots it with `--volatile=overlay`, so its changes live in memory and the
cache stays clean. apt-cacher-ng keeps its downloads there too: runs after the first are fast.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import require_binary, stop_process
from tests.support.timing import seconds

CACHE = Path(os.environ.get("WEBCHAT_TEST_CACHE", "/var/cache/webchat-test"))
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# What a fresh Debian 12 VM of a cloud has, as far as the deployment is concerned.
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "python3-apt",
    "sudo",
    "iproute2",
    "ca-certificates",
    "curl",
)
SOURCES = f"""\
deb {MIRROR} {SUITE} main
deb {MIRROR} {SUITE}-updates main
deb http://deb.debian.org/debian-security {SUITE}-security main
"""
# Bump to rebuild every cached root filesystem after changing how it is made.
RECIPE_VERSION = "2"
# The deploy.yml groups of the hosts `python -m tests.support.nspawn` boots, by name.
GROUPS = {"lb": ["lb"], "web": ["web1", "web2"], "redis": ["redis"], "monitoring": ["mon"]}
# Not 3142: a system apt-cacher-ng, if one runs, keeps its own port.
APT_PROXY_PORT = 13142
# Seconds apt-cacher-ng gets to exit on SIGTERM before SIGKILL (it has ignored SIGTERM).
PROXY_GRACE = 10.0


def _run(*command: str, timeout: float = 60, check: bool = True) -> str:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds(timeout), check=False
    )
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr}")
    return result.stdout


def rootfs() -> Path:
    """The cached Debian root filesystem, debootstrapped first if it is not there yet."""
    recipe = json.dumps([SUITE, MIRROR, PACKAGES, SOURCES, RECIPE_VERSION])
    key = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    path = CACHE / f"rootfs-{SUITE}-{key}"
    if (path / ".complete").exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    require_binary("debootstrap")
    building = Path(tempfile.mkdtemp(prefix=f"rootfs-{SUITE}-", dir=CACHE))
    try:
        _run(
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(building),
            MIRROR,
            timeout=900,
        )
        (building / "etc/apt/sources.list").write_text(SOURCES)
        # As on a VM: localhost resolves from the file (Go programs such as Prometheus ask
        # DNS otherwise, and the hosts have none).
        (building / "etc/hosts").write_text(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        # The machine name (-M) becomes the host name; no inherited one.
        (building / "etc/hostname").unlink(missing_ok=True)
        wants = building / "etc/systemd/system/multi-user.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / "systemd-networkd.service").unlink(missing_ok=True)
        (wants / "systemd-networkd.service").symlink_to(
            "/lib/systemd/system/systemd-networkd.service"
        )
        (building / "root/.ssh").mkdir(mode=0o700, exist_ok=True)
        # Nothing of the build's apt downloads in the image: each host fetches its own lists.
        shutil.rmtree(building / "var/cache/apt/archives", ignore_errors=True)
        (building / "var/cache/apt/archives/partial").mkdir(parents=True)
        (building / ".complete").write_text(recipe + "\n")
        building.rename(path)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return path


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`, deepest first (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    stack = list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return found[::-1]


def _used_networks() -> list[ipaddress.IPv4Network]:
    routes = _run("ip", "-4", "-o", "addr", "show") + _run("ip", "-4", "route", "show")
    found = []
    for word in routes.split():
        with contextlib.suppress(ValueError):
            if "/" in word:
                found.append(ipaddress.ip_network(word, strict=False))
    return found


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.213.0.0/16 that no address or route of this machine overlaps."""
    used = _used_networks()
    start = os.getpid() % 200
    for offset in range(256):
        candidate = ipaddress.ip_network(f"10.213.{(start + offset) % 256}.0/24")
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise RuntimeError("no free /24 in 10.213.0.0/16 for the test bridge")


@dataclass
class Host:
    name: str
    address: str
    # Unique per run: the machine name is the host name, and names the host side of its
    # veth (vb-<machine>), which a container killed hard may leave behind.
    machine: str = ""
    proc: subprocess.Popen[bytes] | None = None


class Cluster:
    """Booted containers on a bridge of their own, with an apt proxy on the bridge address."""

    def __init__(self, names: Sequence[str]) -> None:
        for binary in ("systemd-nspawn", "apt-cacher-ng", "setpriv", "ssh", "ssh-keygen"):
            require_binary(binary)
        self.subnet = free_subnet()
        addresses = list(self.subnet.hosts())
        self.gateway = str(addresses[0])
        self.bridge = f"wc{os.getpid() % 100000}"
        run = os.getpid() % 100000
        self.hosts = {
            name: Host(name, str(addresses[10 + i]), f"{name[:6]}-{run}")
            for i, name in enumerate(names)
        }
        self.dir = Path(tempfile.mkdtemp(prefix="webchat-cluster-"))
        self.key = self.dir / "id_ed25519"
        self.proxy: subprocess.Popen[bytes] | None = None
        self.rootfs: Path | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Cluster:
        try:
            self.rootfs = rootfs()
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key))
            self._bridge_up()
            self._start_proxy()
            for host in self.hosts.values():
                self._boot(host)
            for host in self.hosts.values():
                self.wait_ssh(host.name)
            # As a VM's first boot does: its package lists fetched once. One host at a time:
            # when several ask apt-cacher-ng for the same index in the same second, it can fail
            # to move the old copy aside ("Failure to move file ... File exists" in its log)
            # and one host's apt then waits forever. The roles' apt tasks find the lists fresh
            # (cache_valid_time) and do not fetch them again all at once.
            for host in self.hosts.values():
                self.ssh(host.name, "apt-get update -qq", timeout=180)
        except BaseException:
            self.cleanup()
            raise
        return self

    def _bridge_up(self) -> None:
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")

    def _start_proxy(self) -> None:
        """apt-cacher-ng on the bridge address, passing on Debian's archive only."""
        base = CACHE / "apt-cacher-ng"
        (base / "cache").mkdir(parents=True, exist_ok=True)
        conf = self.dir / "acng"
        (conf / "log").mkdir(parents=True)
        (conf / "acng.conf").write_text(
            f"CacheDir: {base / 'cache'}\n"
            f"LogDir: {conf / 'log'}\n"
            "SupportDir: /usr/lib/apt-cacher-ng\n"
            f"Port: {APT_PROXY_PORT}\n"
            f"BindAddress: {self.gateway}\n"
            f"PidFile: {conf / 'pid'}\n"
            f"SocketPath: {conf / 'socket'}\n"
            "ForeGround: 1\n"
            "ExThreshold: 4\n"
            # Only these repositories are passed on; anything else is refused (403).
            "Remap-debrep: deb.debian.org/debian ; http://deb.debian.org/debian/\n"
            "Remap-secdeb: deb.debian.org/debian-security ;"
            " http://deb.debian.org/debian-security/\n"
            "ForceManaged: 1\n"
        )
        with (conf / "out.log").open("ab") as out:
            self.proxy = subprocess.Popen(
                # SIGKILL when this process dies, even killed: a proxy never outlives its run.
                ["setpriv", "--pdeathsig", "KILL", "apt-cacher-ng", "-c", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._wait_port(self.gateway, APT_PROXY_PORT, "apt-cacher-ng", 10)

    def _boot(self, host: Host) -> None:
        assert self.rootfs is not None
        files = self.dir / host.name
        files.mkdir()
        network = files / "host0.network"
        # No gateway: nothing beyond the bridge is reachable from the container.
        network.write_text(
            f"[Match]\nName=host0\n\n[Network]\nAddress={host.address}/{self.subnet.prefixlen}\n"
        )
        proxy = files / "proxy.conf"
        proxy.write_text(f'Acquire::http::Proxy "http://{self.gateway}:{APT_PROXY_PORT}";\n')
        keys = files / "authorized_keys"
        keys.write_text(Path(f"{self.key}.pub").read_text())
        keys.chmod(0o600)
        with (files / "console.log").open("ab") as out:
            host.proc = subprocess.Popen(
                [
                    "systemd-nspawn",
                    "--directory",
                    str(self.rootfs),
                    "--boot",
                    "--register=no",
                    "--keep-unit",
                    "--console=pipe",
                    "--volatile=overlay",
                    "--resolv-conf=off",
                    f"--network-bridge={self.bridge}",
                    f"--machine={host.machine}",
                    f"--bind-ro={network}:/etc/systemd/network/10-host0.network",
                    f"--bind-ro={proxy}:/etc/apt/apt.conf.d/01proxy",
                    f"--bind-ro={keys}:/root/.ssh/authorized_keys",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def _wait_port(self, address: str, port: int, what: str, timeout: float) -> None:
        deadline = time.monotonic() + seconds(timeout)
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection((address, port), timeout=seconds(1)),
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} at {address}:{port} did not accept within {timeout}s")
            time.sleep(0.1)  # polling a port no event reports

    def console(self, name: str) -> str:
        """The end of a container's console output (systemd's boot messages)."""
        path = self.dir / name / "console.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no console)"

    def wait_ssh(self, name: str, timeout: float = 60) -> None:
        host = self.hosts[name]
        try:
            self._wait_port(host.address, 22, f"sshd of {name}", timeout)
        except TimeoutError as exc:
            alive = host.proc is not None and host.proc.poll() is None
            raise TimeoutError(
                f"{exc} (nspawn {'running' if alive else 'exited'}); console:\n"
                + self.console(name)
            ) from None
        deadline = time.monotonic() + seconds(timeout)
        while self.ssh(name, "true", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no SSH login on {name} within {timeout}s")
            time.sleep(0.2)  # sshd accepts before the login works; nothing reports it

    def cleanup(self) -> None:
        """Kill the containers outright (nothing in them is kept), then the proxy and bridge.

        SIGKILL to every process of a container (its init is nspawn's descendant, not in its
        process group) ends its namespaces, so its memory overlay and veth go with it. The
        proxy and the bridge go even if a container would not.
        """
        try:
            for host in self.hosts.values():
                if host.proc is None or host.proc.poll() is not None:
                    continue
                for pid in [*_descendants(host.proc.pid), host.proc.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                host.proc.wait(timeout=seconds(30))
                with contextlib.suppress(OSError):  # nspawn's (empty) dir for `machinectl bind`
                    os.rmdir(f"/run/systemd/nspawn/propagate/{host.machine}")
        finally:
            try:
                stop_process(self.proxy, PROXY_GRACE)
            finally:
                for host in self.hosts.values():
                    _run("ip", "link", "del", f"vb-{host.machine}"[:15], check=False)
                _run("ip", "link", "del", self.bridge, check=False)
                shutil.rmtree(self.dir, ignore_errors=True)

    # --- reaching the hosts --------------------------------------------------------------------

    @property
    def ssh_options(self) -> list[str]:
        return [
            "-i",
            str(self.key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "BatchMode=yes",
        ]

    def ssh(
        self, name: str, command: str, *, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command on a host as root; fails with its output unless check=False."""
        result = subprocess.run(
            ["ssh", *self.ssh_options, f"root@{self.hosts[name].address}", command],
            capture_output=True,
            text=True,
            timeout=seconds(timeout),
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{name}: {command!r} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def inventory(self, groups: dict[str, Sequence[str]]) -> dict[str, object]:
        """A YAML-inventory structure (JSON is YAML) for these hosts in `groups`."""
        return {
            "all": {
                "vars": {
                    "ansible_user": "root",
                    "ansible_python_interpreter": "/usr/bin/python3",
                    "ansible_ssh_private_key_file": str(self.key),
                    "ansible_ssh_common_args": " ".join(self.ssh_options[2:]),
                },
                "children": {
                    group: {
                        "hosts": {
                            name: {
                                "ansible_host": self.hosts[name].address,
                                "webchat_private_address": self.hosts[name].address,
                            }
                            for name in names
                        }
                    }
                    for group, names in groups.items()
                },
            }
        }


def main(argv: Sequence[str] | None = None) -> None:
    """Bring a cluster up by hand for development: `python -m tests.support.nspawn lb web1`."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.nspawn",
        description="Boot these hosts (as root) until SIGINT or SIGTERM; print their addresses "
        "and an Ansible inventory (hosts named as in GROUPS go into those groups).",
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help="a host name, e.g. lb web1")
    names = parser.parse_args(argv).names
    bad = [n for n in names if not re.fullmatch(r"[a-z][a-z0-9]{0,5}", n)]
    if bad or len(set(names)) < len(names):
        parser.error(f"names must be unique, 1-6 lowercase letters or digits, got {bad or names}")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    cluster = Cluster(names).start()
    try:
        inventory = cluster.dir / "hosts.json"
        groups = {g: [n for n in members if n in cluster.hosts] for g, members in GROUPS.items()}
        inventory.write_text(json.dumps(cluster.inventory(groups), indent=2))
        print(json.dumps({n: h.address for n, h in cluster.hosts.items()}), inventory, flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.cleanup()


if __name__ == "__main__":
    main()
