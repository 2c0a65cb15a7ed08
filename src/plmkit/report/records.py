"""Recorded full runs: the last full-budget results.json of each recipe, kept as ``docs/results/NAME.json``.

A full run (``plmkit reproduce NAME`` without ``--quick``) of a built-in recipe writes its results here,
with the command, date and environment it already carries; the report shows them beside the quick
numbers. Nothing else writes here: a recipe without a file has no full run recorded.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._io import write_json


def recorded_dir() -> Path | None:
    """``$PLMKIT_RESULTS_DIR``, else ``docs/results`` of the source checkout plmkit runs from, else None."""
    env = os.environ.get("PLMKIT_RESULTS_DIR")
    if env:
        return Path(env)
    root = Path(__file__).resolve().parents[3]
    if (root / "pyproject.toml").is_file() and (root / "docs").is_dir():
        return root / "docs" / "results"
    return None


def record_full_run(results: dict[str, Any], directory: str | Path) -> Path:
    """Write a full run's results as ``directory/NAME.json`` (replacing the previous record)."""
    if results.get("quick", True):
        raise ValueError("only full runs are recorded; this one ran with --quick")
    return write_json(Path(directory) / f"{results['name']}.json", results)


def load_recorded(directory: str | Path | None) -> dict[str, dict[str, Any]]:
    """Recorded full runs by recipe name (empty when ``directory`` is None or absent; unreadable files skipped)."""
    if directory is None or not Path(directory).is_dir():
        return {}
    out = {}
    for p in sorted(Path(directory).glob("*.json")):
        try:
            res = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(res, dict) and not res.get("quick", True) and res.get("name"):
            out[res["name"]] = {**res, "recorded_file": str(p)}
    return out
