"""pyproject.toml lists every package explicitly (frontend/ is mapped in as a data package)."""

from __future__ import annotations

import tomllib

from tests.support.servers import ROOT


def test_every_package_under_app_is_in_the_wheel():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(ROOT / "app").parts)
        for init in (ROOT / "app").rglob("__init__.py")
    }
    listed = set(setuptools["packages"])
    assert on_disk <= listed, f"add to [tool.setuptools] packages: {sorted(on_disk - listed)}"
    assert setuptools["package-dir"]["webchat.frontend"] == "frontend"
    assert "webchat.frontend" in listed
