"""Reproduction recipes: one per paper, each a small real-asset run that returns its results."""
from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .._io import write_json


@dataclass
class RecipeContext:
    out_dir: Path  # DIR/<name>: plots and extra files go here
    quick: bool = True
    seed: int = 0
    progress: bool = True

    def save_figure(self, fig: Any, name: str) -> str:
        """Lay out, save (PNG, 110 dpi) and close a matplotlib figure under ``out_dir``; returns ``name``."""
        import matplotlib.pyplot as plt

        fig.tight_layout()
        fig.savefig(self.out_dir / name, dpi=110)
        plt.close(fig)
        return name


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    system: str  # key in plmkit.systems
    paper_claim: str
    citation: str
    run: Callable[[RecipeContext], dict[str, Any]] = field(repr=False)


RECIPES: dict[str, Recipe] = {}


def recipe(name: str, title: str, system: str, paper_claim: str, citation: str):
    """Decorator registering ``fn(ctx) -> results`` as a recipe."""
    def wrap(fn: Callable[[RecipeContext], dict[str, Any]]) -> Callable[[RecipeContext], dict[str, Any]]:
        RECIPES[name] = Recipe(name, title, system, paper_claim, citation, fn)
        return fn

    return wrap


def environment() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "cuda": torch.cuda.is_available(),
    }


def run_recipes(names: list[str] | None, out_dir: str | Path, quick: bool = True, seed: int = 0,
                progress: bool = True) -> list[dict[str, Any]]:
    """Run recipes (all when ``names`` is empty or ``["all"]``), writing DIR/<name>/results.json and the report."""
    from ..report import write_report

    _load_builtin()
    names = list(RECIPES) if not names or names == ["all"] else names
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise KeyError(f"unknown recipe(s) {unknown}; available: {', '.join(RECIPES)}")
    out = Path(out_dir)
    results = []
    for name in names:
        r = RECIPES[name]
        ctx = RecipeContext(out / name, quick, seed, progress)
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        body = r.run(ctx)
        res = {
            "name": name, "title": r.title, "system": r.system, "paper_claim": r.paper_claim,
            "citation": r.citation, "quick": quick, "seed": seed,
            "command": f"plmkit reproduce {name}{' --quick' if quick else ''} --out {out}",
            "runtime_s": round(time.perf_counter() - t0, 1), "environment": environment(), **body,
        }
        write_json(ctx.out_dir / "results.json", res)
        results.append(res)
    write_report(out)
    return results


def _load_builtin() -> None:
    from . import eren, kepler, moefication, readin, sparsity, subchar  # noqa: F401  (each registers itself)
