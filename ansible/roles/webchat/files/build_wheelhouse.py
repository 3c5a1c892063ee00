#!/usr/bin/env python3
"""Build webchat's wheel once, and a wheelhouse of its dependencies for each kind of host.

Run on the control node by the webchat role (with the Python that runs Ansible, which has
pip and `packaging`). The hosts then install with `pip --no-index` and need no PyPI.

    build_wheelhouse.py --source REPO --out BUILD_DIR \
        --target '{"python": "3.11.2", "glibc": "2.36", "machine": "x86_64"}' [--extra tracing]

Prints one JSON object: `changed` (whether anything was built), `release` (the version and a
hash of the sources and extras, e.g. `0.1.0-3f2a9c01d2`) and `wheelhouses` (target tag ->
a tar of webchat's wheel and every wheel it needs on that target: one file to copy).

Why not just `pip download --python-version`: pip picks wheels for the target's Python and
platform, but evaluates environment markers with the Python running pip. redis-py needs
`async-timeout` when `python_full_version < "3.11.3"`; a control node on 3.11.7 leaves it out
and webchat fails to start on Debian 12 (Python 3.11.2). So after pip's download, every
dependency's markers are evaluated again for the target's exact Python, and whatever the
target needs that is missing is downloaded too, until nothing is missing.

Built once: the output is keyed by the hash of the sources, so a second run changes nothing.
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

SOURCES = ("pyproject.toml", "app", "frontend")
SKIP = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
# The oldest manylinux baseline worth asking for; every glibc from here to the target's is
# listed, because pip does not widen one --platform to the older compatible ones.
OLDEST_GLIBC_MINOR = 17


def source_hash(root: Path) -> str:
    """A hash of every file that goes into the wheel (names and contents)."""
    digest = hashlib.sha256()
    for top in SOURCES:
        path = root / top
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            parts = file.relative_to(root).parts
            # Left in the tree by builds (egg-info) or tools: not part of the release.
            if SKIP.intersection(parts) or any(p.endswith(".egg-info") for p in parts):
                continue
            if file.suffix == ".pyc":
                continue
            digest.update(str(file.relative_to(root)).encode() + b"\0")
            digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()


def target_tag(target: Mapping[str, str]) -> str:
    major, minor = target["python"].split(".")[:2]
    return f"cp{major}{minor}-glibc{target['glibc']}-{target['machine']}"


def target_environment(target: Mapping[str, str]) -> dict[str, str]:
    """Marker variables of the target host (PEP 508), from its Python version and machine."""
    env = default_environment()
    version = Version(target["python"])
    env.update(
        python_version=f"{version.major}.{version.minor}",
        python_full_version=str(version),
        implementation_name="cpython",
        implementation_version=str(version),
        platform_python_implementation="CPython",
        platform_machine=target["machine"],
        platform_system="Linux",
        sys_platform="linux",
        os_name="posix",
    )
    return env


def pip_target_args(target: Mapping[str, str]) -> list[str]:
    version = Version(target["python"])
    abi = f"cp{version.major}{version.minor}"
    glibc_major, glibc_minor = (int(x) for x in target["glibc"].split(".")[:2])
    if glibc_major != 2:
        raise SystemExit(f"unexpected glibc version {target['glibc']}")
    platforms = [
        f"manylinux_2_{minor}_{target['machine']}"
        for minor in range(glibc_minor, OLDEST_GLIBC_MINOR - 1, -1)
    ]
    platforms.append(f"manylinux2014_{target['machine']}")
    args = ["--only-binary=:all:", "--python-version", str(version), "--implementation", "cp"]
    args += ["--abi", abi, "--abi", "abi3", "--abi", "none"]
    for platform in platforms:
        args += ["--platform", platform]
    return args


def wheel_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(name).decode())
    return [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]


def missing(
    wheels: Iterable[Path], roots: Iterable[Requirement], env: Mapping[str, str]
) -> list[Requirement]:
    """Requirements the target needs (markers evaluated for it) that no wheel here satisfies."""
    found = {}
    for wheel in wheels:
        name, version, _, _ = parse_wheel_filename(wheel.name)
        found[canonicalize_name(name)] = (version, wheel)
    needed: list[Requirement] = []
    queue = list(roots)
    seen: set[tuple[str, frozenset[str]]] = set()
    while queue:
        req = queue.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        dist = found.get(key[0])
        if dist is None or (req.specifier and not req.specifier.contains(dist[0], True)):
            needed.append(req)
            continue
        for dep in wheel_requirements(dist[1]):
            extras = ["", *sorted(req.extras)]
            if dep.marker is None or any(dep.marker.evaluate({**env, "extra": e}) for e in extras):
                queue.append(Requirement(f"{dep.name}{_extras(dep)}{dep.specifier}"))
    return needed


def _extras(req: Requirement) -> str:
    return f"[{','.join(sorted(req.extras))}]" if req.extras else ""


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"failed: {' '.join(command)}")


def build_wheel(source: Path, dest: Path) -> Path:
    """`pip wheel` of the project into dest (only when it is not there yet)."""
    wheels = sorted(dest.glob("webchat-*.whl"))
    if wheels:
        return wheels[0]
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        pip("wheel", "--no-deps", "--wheel-dir", tmp, str(source))
        built = next(Path(tmp).glob("webchat-*.whl"))
        dest.mkdir(parents=True, exist_ok=True)
        shutil.move(str(built), dest / built.name)
    return dest / built.name


def build_wheelhouse(wheel: Path, extras: list[str], target: Mapping[str, str], dest: Path):
    """Download every wheel `webchat[extras]` needs on `target` into dest, then mark it done."""
    if (dest / ".complete").exists():
        return False
    shutil.rmtree(dest, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    root = Requirement(f"webchat{'[' + ','.join(extras) + ']' if extras else ''}")
    shutil.copy2(wheel, tmp / wheel.name)
    pip("download", *pip_target_args(target), "--dest", str(tmp), f"{wheel}{_extras(root)}")
    env = target_environment(target)
    for _ in range(20):
        needed = missing(tmp.glob("*.whl"), [root], env)
        if not needed:
            break
        pip("download", *pip_target_args(target), "--dest", str(tmp), *map(str, needed))
    else:
        raise SystemExit(f"dependencies for {target_tag(target)} did not settle")
    with tarfile.open(tmp / "wheelhouse.tar", "w") as archive:
        for wheel_file in sorted(tmp.glob("*.whl")):
            archive.add(wheel_file, arcname=wheel_file.name)
    (tmp / ".complete").write_text(json.dumps(dict(target)) + "\n")
    tmp.rename(dest)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="the repository's root")
    parser.add_argument("--out", type=Path, required=True, help="where builds are kept")
    parser.add_argument("--target", action="append", default=[], help="JSON of a host kind")
    parser.add_argument("--extra", action="append", default=[], help="extras to install")
    args = parser.parse_args()
    source = args.source.resolve()
    version = tomllib.loads((source / "pyproject.toml").read_text())["project"]["version"]
    digest = hashlib.sha256(
        (source_hash(source) + "\0" + ",".join(sorted(args.extra))).encode()
    ).hexdigest()
    release = f"{version}-{digest[:10]}"
    out = args.out.resolve() / release
    out.mkdir(parents=True, exist_ok=True)
    changed = not any(out.glob("webchat-*.whl"))
    wheel = build_wheel(source, out)
    wheelhouses = {}
    for raw in args.target:
        target = json.loads(raw)
        tag = target_tag(target)
        changed |= build_wheelhouse(wheel, sorted(args.extra), target, out / tag)
        wheelhouses[tag] = str(out / tag / "wheelhouse.tar")
    print(json.dumps({"changed": changed, "release": release, "wheelhouses": wheelhouses}))


if __name__ == "__main__":
    main()
