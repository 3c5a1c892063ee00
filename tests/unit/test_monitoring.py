"""monitoring/ checked with the tools that read it: promtool (config, rules, rule unit tests), and
the dashboard generator (the committed JSON is exactly what it produces). No server runs here;
tests/integration/test_prometheus.py runs all of it against a real Prometheus.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.support.prometheus import DEPLOYED_RULES, MONITORING, RULES, render_config
from tests.support.servers import require_binary
from tests.support.timing import seconds

PROMETHEUS = MONITORING / "prometheus"
GRAFANA = MONITORING / "grafana"
CONFIGS = [PROMETHEUS / "prometheus-compose.yml", PROMETHEUS / "prometheus-vm.yml"]
RULE_FILES = sorted(RULES.glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
JOBS = {"webchat", "redis", "nginx", "node", "prometheus"}


def promtool(*args: str | Path) -> str:
    result = subprocess.run(
        [require_binary("promtool"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=seconds(60),
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{output}"
    return output


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alerts() -> dict[str, dict[str, Any]]:
    return {
        rule["alert"]: rule
        for path in RULE_FILES
        for group in load(path)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


# --- Prometheus ---------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_scrape_config_is_valid_with_the_rules(config: Path, tmp_path: Path) -> None:
    """`promtool check config` on each deployed file, its rule_files pointed at the repository's
    rules (deployed, both land in /etc/prometheus/rules), so the rules are checked with it."""
    data = load(config)
    assert data["rule_files"] == [DEPLOYED_RULES]
    # The Compose stack runs no node exporter (docker-compose.yml).
    jobs = JOBS - {"node"} if config.name == "prometheus-compose.yml" else JOBS
    assert {job["job_name"] for job in data["scrape_configs"]} == jobs
    data["rule_files"] = [str(RULES / "*.yml")]
    checked = tmp_path / config.name
    checked.write_text(yaml.safe_dump(data))
    output = promtool("check", "config", checked)
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in output, output
    for path in RULE_FILES:
        assert f"Checking {path}\n  SUCCESS" in output, output


def rule_names() -> list[str]:
    return [
        rule.get("record") or rule["alert"]
        for path in RULE_FILES
        for group in load(path)["groups"]
        for rule in group["rules"]
    ]


def test_compose_config_discovers_every_web_replica() -> None:
    (webchat,) = [j for j in load(CONFIGS[0])["scrape_configs"] if j["job_name"] == "webchat"]
    assert webchat["dns_sd_configs"] == [
        {"names": ["web"], "type": "A", "port": 8080, "refresh_interval": "10s"}
    ]


def test_vm_config_reads_one_target_file_per_job(tmp_path: Path) -> None:
    config = render_config(tmp_path, self_port=9090)  # asserts the deployed paths
    files = {
        job["job_name"]: job["file_sd_configs"][0]["files"]
        for job in config["scrape_configs"]
        if "file_sd_configs" in job
    }
    assert files == {job: [str(tmp_path / f"{job}.yml")] for job in JOBS - {"prometheus"}}


def test_rules_are_valid() -> None:
    output = promtool("check", "rules", *RULE_FILES)
    assert output.count("SUCCESS") == len(RULE_FILES)


def test_rule_unit_tests_pass() -> None:
    output = promtool("test", "rules", *RULE_TESTS)
    assert output.count("SUCCESS") == len(RULE_TESTS), output


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """Each alert has a promtool case where it fires and one where it does not."""
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in load(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(alerts()) <= fired, f"never shown firing: {set(alerts()) - fired}"
    assert set(alerts()) <= quiet, f"never shown not firing: {set(alerts()) - quiet}"


def test_every_alert_waits_is_graded_and_explains_itself() -> None:
    for name, rule in alerts().items():
        assert re.fullmatch(r"\d+[sm]", rule.get("for", "")), f"{name}: no `for:` duration"
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert set(rule["annotations"]) == {"summary", "description", "runbook"}, name


def test_readme_explains_every_alert() -> None:
    readme = (MONITORING / "README.md").read_text()
    missing = [name for name in alerts() if f"`{name}`" not in readme]
    assert not missing, f"monitoring/README.md does not explain {missing}"


# --- Grafana ------------------------------------------------------------------------------


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("webchat_dashboards", GRAFANA / "dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_committed_dashboards_are_what_the_generator_writes() -> None:
    """No hand edits: `make dashboards` regenerates the JSON from dashboards.py."""
    module = generator()
    for path, build in module.DASHBOARDS.items():
        assert path.exists(), f"{path} missing: run `make dashboards`"
        assert path.read_text() == module.render(build()), (
            f"{path.name} differs from what dashboards.py generates: run `make dashboards` "
            "(and edit the code, not the JSON)"
        )
    committed = set((GRAFANA / "dashboards").glob("*.json"))
    assert committed == set(module.DASHBOARDS), "a JSON file the generator does not write"


def test_panels_use_the_provisioned_datasource_and_the_recording_rules() -> None:
    (source,) = load(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert source["url"] == "${PROMETHEUS_URL}" and source["type"] == "prometheus"
    records = {name for name in rule_names() if ":" in name}
    for path in (GRAFANA / "dashboards").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == source["uid"], panel["title"]
                for used in re.findall(r"\b\w+:\w+:\w+\b", target["expr"]):
                    assert used in records, f"{panel['title']}: no recording rule {used}"


def test_dashboard_provider_reads_the_deployed_directory() -> None:
    (provider,) = load(GRAFANA / "provisioning" / "dashboards" / "webchat.yml")["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_threshold_lines_are_the_alerts_thresholds() -> None:
    """The dashed lines on the latency and loop-lag panels are where the alerts fire."""
    module = generator()
    rules = alerts()
    assert f":p99_5m > {module.SLO_SECONDS:g} and" in rules["WebchatDeliveryLatencyHigh"]["expr"]
    assert rules["WebchatEventLoopLagHigh"]["expr"].endswith(f"> {module.LOOP_LAG_SECONDS:g}")
