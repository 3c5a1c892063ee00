"""docker-compose.yml as Compose itself resolves it (`docker-compose config`, offline).

`compose_config(values)` runs the real `docker-compose config` with exactly `values` as its
environment file (a developer's own .env or exported variables cannot leak in) and returns the
process; `resolved(values)` returns the resolved file as a dict.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tests.support.servers import ROOT, require_binary
from tests.support.timing import seconds

COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_NGINX = ROOT / "deploy" / "compose" / "nginx.conf"
EXAMPLE_ENV = ROOT / "deploy" / "compose" / "example.env"

# What a user puts in .env (deploy/compose/example.env): the two passwords.
SECRETS = {"REDIS_PASSWORD": "s3cretRedis42", "GRAFANA_ADMIN_PASSWORD": "s3cretGrafana"}


def compose_config(values: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="webchat-compose-") as tmp:
        env_file = Path(tmp) / "env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        # Only the process environment Compose needs: none of the stack's variables.
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        return subprocess.run(
            [
                require_binary("docker-compose"),
                "--project-directory",
                str(ROOT),
                "--file",
                str(COMPOSE_FILE),
                "--env-file",
                str(env_file),
                "config",
                *args,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=seconds(60),
            check=False,
        )


def resolved(values: dict[str, str]) -> dict[str, Any]:
    result = compose_config(values)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    document = yaml.safe_load(result.stdout)
    assert isinstance(document, dict)
    return document
