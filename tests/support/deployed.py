"""Stand the reference deployment up on this machine, for benchmarks and poking by hand.

    sudo .venv/bin/python -m tests.support.deployed [--per-ip-connections N] [--auth-secret-file F]

The hosts of tests/e2e/test_deploy.py (lb1, web1, web2, redis1, mon1: systemd-nspawn containers
on a private bridge, tests/support/nspawn.py) and `deploy.yml` with the example inventory's
group_vars as they are, plus what the options change. Prints one JSON line (the public URL,
each instance's /metrics, the inventory, a ready `loadtest/capacity.sh deployment` command),
then keeps the deployment up until SIGINT or SIGTERM and removes every container, the bridge
and the proxy. Needs root, as the deployment test does; the first run debootstraps (minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from tests.deploy.ansible import ANSIBLE_DIR, run_playbook
from tests.support.nspawn import Cluster, _descendants

GROUPS = {"lb": ["lb1"], "web": ["web1", "web2"], "redis": ["redis1"], "monitoring": ["mon1"]}
PORT = 8081  # webchat_ports of the example group_vars


def renice(cluster: Cluster, nice: int) -> None:
    """Set the autogroup nice level of every process in the cluster's containers."""
    for host in cluster.hosts.values():
        assert host.proc is not None
        for pid in _descendants(host.proc.pid):
            with contextlib.suppress(OSError):  # gone meanwhile
                Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.deployed", description=__doc__)
    parser.add_argument(
        "--per-ip-connections",
        type=int,
        default=0,
        help="nginx_per_ip_connections (default: the role's, 100): a load generator on this "
        "machine is one client address",
    )
    parser.add_argument(
        "--auth-secret-file",
        default="",
        help="deploy in authenticated mode with the HS256 secret in this file",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="once deployed, give every process of the containers this scheduler autogroup nice "
        "level (as capacity.sh's NICE gives the load generator; each systemd service is a session "
        "of its own, so a plain nice would not reach them)",
    )
    parser.add_argument(
        "-e",
        dest="extra",
        action="append",
        default=[],
        metavar="JSON",
        help="more extra variables for deploy.yml, as JSON (repeatable)",
    )
    args = parser.parse_args(argv)
    # Blocked before the containers start, so a signal during the deployment still cleans up.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    folder = Path(tempfile.mkdtemp(prefix="webchat-deployed-"))
    names = [h for hosts in GROUPS.values() for h in hosts]
    cluster = Cluster(names).start()
    try:
        groups = {**GROUPS, "compose": []}
        (folder / "hosts.yml").write_text(json.dumps(cluster.inventory(groups), indent=2))
        (folder / "group_vars").symlink_to(ANSIBLE_DIR / "inventories/example/group_vars")
        extra: dict[str, object] = {"webchat_build_dir": str(folder / "build")}
        if args.per_ip_connections:
            extra["nginx_per_ip_connections"] = args.per_ip_connections
        if args.auth_secret_file:
            secret = Path(args.auth_secret_file).read_text().strip()
            extra["webchat_auth_secret"] = secret
        (folder / "extra.json").write_text(json.dumps(extra))
        (folder / "extra.json").chmod(0o600)
        options = ["-e", f"@{folder / 'extra.json'}"]
        for more in args.extra:
            options += ["-e", more]
        run = run_playbook("deploy.yml", folder / "hosts.yml", *options, timeout=1800)
        if run.returncode != 0:
            print(run.output[-6000:], file=sys.stderr)
            return 1
        if args.nice:
            renice(cluster, args.nice)
        lb = cluster.hosts["lb1"].address
        metrics = ",".join(
            f"http://{cluster.hosts[h].address}:{PORT}/metrics" for h in GROUPS["web"]
        )
        command = [
            "loadtest/capacity.sh",
            "deployment",
            "--host",
            f"https://{lb}",
            "--insecure",
            "--metrics-urls",
            metrics,
        ]
        if args.auth_secret_file:
            command += ["--auth-secret-file", args.auth_secret_file]
        print(
            json.dumps(
                {
                    "url": f"https://{lb}",
                    "metrics_urls": metrics,
                    "hosts": {n: h.address for n, h in cluster.hosts.items()},
                    "inventory": str(folder / "hosts.yml"),
                    "ssh": f"ssh {shlex.join(cluster.ssh_options)} root@ADDRESS",
                    "capacity": shlex.join(command),
                }
            ),
            flush=True,
        )
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    finally:
        cluster.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
