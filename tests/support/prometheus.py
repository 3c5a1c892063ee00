"""A real Prometheus and the exporters the deployment runs, for tests, on free loopback ports.

`PrometheusServer` runs Debian's `prometheus` with a configuration rendered from the deployed
monitoring/prometheus/prometheus-vm.yml: the same jobs, the same file_sd target files (written
here the way the Ansible role writes them, one per job), the repository's rule files; only the
intervals (1 s, so a test sees rates within seconds), the file paths and the ports differ.

`Exporter` runs one of Debian's exporters (redis, nginx, node); `add_stub_status` gives a test
nginx the stub_status page the nginx exporter reads. Every `start()` returns once the process
answers (never a sleep); `stop()` ends it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.support.nginx import Directive, NginxServer, parse
from tests.support.servers import (
    ROOT,
    alive_and,
    free_port,
    http_status,
    require_binary,
    stop_process,
    wait_until,
)
from tests.support.timing import seconds

MONITORING = ROOT / "monitoring"
VM_CONFIG = MONITORING / "prometheus" / "prometheus-vm.yml"
RULES = MONITORING / "prometheus" / "rules"

# Where the deployed configuration expects its inputs; the test points them at its own files.
DEPLOYED_RULES = "/etc/prometheus/rules/*.yml"
DEPLOYED_TARGETS = "/etc/prometheus/targets/"


def render_config(
    targets_dir: Path, self_port: int, interval: str = "1s", base: Path = VM_CONFIG
) -> dict[str, Any]:
    """prometheus-vm.yml with test intervals, the repository's rules and `targets_dir`.

    Fails naming what moved if the deployed file no longer has the shape the deployment
    relies on (rule files in /etc/prometheus/rules, one target file per job).
    """
    config: dict[str, Any] = yaml.safe_load(base.read_text())
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    assert config["rule_files"] == [DEPLOYED_RULES], f"{base.name}: rule_files moved"
    config["rule_files"] = [str(RULES / "*.yml")]
    for job in config["scrape_configs"]:
        if job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{self_port}"]}]
            continue
        (sd,) = job["file_sd_configs"]
        (path,) = sd["files"]
        expected = f"{DEPLOYED_TARGETS}{job['job_name']}.yml"
        assert path == expected, f"{base.name}: job {job['job_name']} reads {path}"
        sd["files"] = [str(targets_dir / f"{job['job_name']}.yml")]
    return config


class PrometheusServer:
    """Debian's prometheus scraping `targets` ({job: ["127.0.0.1:port", ...]}) every second."""

    def __init__(self, targets: Mapping[str, Sequence[str]]) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="webchat-prometheus-"))
        self.config_path = self.dir / "prometheus.yml"
        self.log_path = self.dir / "prometheus.log"
        targets_dir = self.dir / "targets"
        targets_dir.mkdir()
        config = render_config(targets_dir, self.port)
        jobs = {j["job_name"] for j in config["scrape_configs"]} - {"prometheus"}
        assert set(targets) <= jobs, f"no job for {set(targets) - jobs} in {VM_CONFIG.name}"
        for job in jobs:
            # What the Ansible role writes; a job the test does not run gets an empty list.
            entries = [{"targets": list(targets.get(job, []))}]
            (targets_dir / f"{job}.yml").write_text(yaml.safe_dump(entries))
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def check(self) -> None:
        """`promtool check config` on the rendered file (it checks the rule files too)."""
        result = subprocess.run(
            [require_binary("promtool"), "check", "config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=seconds(30),
            check=False,
        )
        assert result.returncode == 0, f"promtool check config:\n{result.stdout}{result.stderr}"

    def start(self) -> PrometheusServer:
        self.check()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    require_binary("prometheus"),
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until(
                alive_and(
                    self.proc,
                    "prometheus",
                    self.log,
                    lambda: http_status(self.url + "/-/ready") == 200,
                ),
                seconds(30),
                f"prometheus on port {self.port} to be ready",
            )
        except BaseException:
            self.cleanup()
            raise
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        stop_process(self.proc)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- the HTTP API ----------------------------------------------------------------------

    async def api(self, session: aiohttp.ClientSession, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns `data`, fails with Prometheus's error message."""
        timeout = aiohttp.ClientTimeout(total=seconds(10))
        async with session.get(
            f"{self.url}/api/v1/{path}", params=params, timeout=timeout
        ) as response:
            body = await response.json()
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    async def query(
        self, session: aiohttp.ClientSession, expr: str, at: float | None = None
    ) -> list[dict[str, Any]]:
        """An instant query: the series of the result vector (each `metric` and `value`)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = await self.api(session, "query", **params)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']}"
        result: list[dict[str, Any]] = data["result"]
        return result

    async def query_range(
        self, session: aiohttp.ClientSession, expr: str, start: float, end: float, step: float
    ) -> list[dict[str, Any]]:
        """A range query: the series of the matrix (each `metric` and `values`)."""
        data = await self.api(
            session,
            "query_range",
            query=expr,
            start=f"{start:.3f}",
            end=f"{end:.3f}",
            step=f"{step:g}",
        )
        result: list[dict[str, Any]] = data["result"]
        return result

    async def scraped_since(self, session: aiohttp.ClientSession, moment: float) -> bool:
        """True once every target has been scraped successfully after `moment` (epoch s).

        `timestamp(up)` is when each target was last scraped (the selector's own sample: of
        `up == 1` it would be the query's time); `up` 1 that it answered.
        """
        targets = len((await self.api(session, "targets", state="active"))["activeTargets"])
        scraped = await self.query(session, f"timestamp(up) > {moment:.3f} and up == 1")
        return targets > 0 and len(scraped) == targets


class Exporter:
    """One of Debian's Prometheus exporters on a free loopback port."""

    def __init__(self, binary: str, *args: str, listen_flag: str = "--web.listen-address"):
        self.port = free_port()
        self.binary = require_binary(binary)
        self.args = [*args, f"{listen_flag}=127.0.0.1:{self.port}"]
        self.name = binary
        self.log_path = Path(tempfile.mkstemp(prefix=f"{binary}-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Exporter:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until(
                alive_and(
                    self.proc,
                    self.name,
                    self.log,
                    lambda: http_status(f"http://{self.target}/metrics") == 200,
                ),
                seconds(15),
                f"{self.name} on port {self.port} to serve /metrics",
            )
        except BaseException:
            self.cleanup()
            raise
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cleanup(self) -> None:
        stop_process(self.proc)
        self.log_path.unlink(missing_ok=True)


def redis_exporter(redis_url: str) -> Exporter:
    # Go's flag package takes `-flag=value` with one dash or two.
    return Exporter(
        "prometheus-redis-exporter",
        f"-redis.addr={redis_url}",
        listen_flag="-web.listen-address",
    )


def nginx_exporter(stub_status_url: str) -> Exporter:
    return Exporter(
        "prometheus-nginx-exporter",
        f"-nginx.scrape-uri={stub_status_url}",
        listen_flag="-web.listen-address",
    )


def node_exporter() -> Exporter:
    # Only what the dashboard reads: the other collectors cost time and read the whole /proc.
    return Exporter(
        "prometheus-node-exporter",
        "--collector.disable-defaults",
        "--collector.cpu",
        "--collector.meminfo",
        "--collector.netdev",
    )


def add_stub_status(nginx: NginxServer) -> str:
    """Give a not yet started test nginx a loopback server with stub_status; returns its URL.

    The production nginx.conf serves the public side only; the deployment adds this page on
    an address only the exporter reaches, as here.
    """
    port = free_port()
    config = parse(nginx.conf_path.read_text())
    http = config.one("http")
    assert http.block is not None
    location = Directive("location", ["=", "/stub_status"], [Directive("stub_status", [])])
    http.block.append(
        Directive("server", [], [Directive("listen", [f"127.0.0.1:{port}"]), location])
    )
    nginx.conf_path.write_text(config.text())
    return f"http://127.0.0.1:{port}/stub_status"


def now() -> float:
    """Wall-clock seconds: Prometheus timestamps are wall-clock, on this machine's clock."""
    return time.time()
