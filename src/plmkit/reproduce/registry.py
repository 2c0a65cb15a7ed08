"""Reproduction recipes: one per paper, each a small real-asset run that returns its results.

A recipe module under ``plmkit.reproduce`` registers itself on import with :func:`recipe`;
:func:`load_recipes` imports every module of the package, so adding a recipe is adding a file.
Each recipe carries typed settings (``Budgets(quick=..., full=...)``): ``--quick`` is the small
budget ``make demo`` runs (about 40-50 s of work per recipe on 2 CPU cores), the full budget the
settings its docs page reports. Full runs of built-in recipes are recorded under
``docs/results/NAME.json`` of a source checkout (:func:`plmkit.report.records.recorded_dir`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import importlib
import os
import pkgutil
import platform
import shlex
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Iterator, Sequence, TypeVar

from .._io import write_json, write_text
from ..config import override_settings
from ..errors import ConfigError, PlmkitError

S = TypeVar("S")


@dataclass(frozen=True)
class Budgets(Generic[S]):
    """A recipe's two typed settings: ``quick`` (the demo's budget) and ``full`` (what its docs report)."""

    quick: S
    full: S

    def pick(self, quick: bool) -> S:
        return self.quick if quick else self.full


@dataclass
class RecipeContext:
    out_dir: Path  # DIR/<name>: plots and extra files go here
    quick: bool = True
    seed: int = 0
    progress: bool = True
    settings: Any = None  # the recipe's quick or full settings (None for a recipe without Budgets)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per named phase (results["phases_s"])
    resume: bool = True  # take finished steps from an earlier, stopped run (resumable(); few-shot runs/)
    _steps: Any = field(default=None, repr=False)  # the StepStore behind resumable(), made on first use

    def resumable(self, name: str, fn: Callable[[], Any], **inputs: Any) -> Any:
        """``fn()``'s result (JSON values), stored as ``out_dir/steps/NAME.json`` the moment it ends, so a full
        run that stopped resumes: a rerun of this recipe with the same budget, seed, settings and plmkit version
        takes finished steps from there. ``inputs`` identify what the step reads beyond the settings (e.g. a
        model's :func:`plmkit.cache.model_identity` or a cache entry's key); a step stored under other inputs
        runs again. The runner records the steps taken from the store in ``results["resumed_steps"]``."""
        return self._store().run(name, fn, inputs)

    def partial_dir(self, name: str, **inputs: Any) -> Path:
        """Where resumable step ``name`` (with these ``inputs``) keeps its partial state, such as training
        checkpoints, so that a run stopped in the middle of a long step continues it (``StepStore.partial_dir``)."""
        return self._store().partial_dir(name, inputs)

    def _store(self) -> Any:
        from ..cache import StepStore

        if self._steps is None:
            settings = dataclasses.asdict(self.settings) if dataclasses.is_dataclass(self.settings) else None
            self._steps = StepStore(self.out_dir / "steps", f"recipe-{self.out_dir.name}",
                                    {"quick": self.quick, "seed": self.seed, "settings": settings}, self.resume)
        return self._steps

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a block; the seconds (summed over repeats) land in results.json as ``phases_s``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = round(self.phases.get(name, 0.0) + time.perf_counter() - t0, 1)

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
    budgets: Budgets | None = field(default=None, repr=False)


RECIPES: dict[str, Recipe] = {}
_NOT_RECIPES = {"registry"}  # modules of this package that define no recipe and need not be imported


def recipe(name: str, title: str, system: str, paper_claim: str, citation: str, budgets: Budgets | None = None):
    """Decorator registering ``fn(ctx) -> results`` as a recipe; ``ctx.settings`` is ``budgets.pick(quick)``."""
    def wrap(fn: Callable[[RecipeContext], dict[str, Any]]) -> Callable[[RecipeContext], dict[str, Any]]:
        RECIPES[name] = Recipe(name, title, system, paper_claim, citation, fn, budgets)
        return fn

    return wrap


def load_recipes() -> dict[str, Recipe]:
    """Every registered recipe, by name, after importing each module of ``plmkit.reproduce``."""
    package = importlib.import_module(__package__)
    for mod in pkgutil.iter_modules(package.__path__):
        if not mod.name.startswith("_") and mod.name not in _NOT_RECIPES:
            importlib.import_module(f"{__package__}.{mod.name}")
    return dict(sorted(RECIPES.items()))


def _load_builtin() -> None:
    """Older name of :func:`load_recipes` (tests/unit/test_meta.py)."""
    load_recipes()


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; ConfigError listing the available ones otherwise."""
    recipes = load_recipes()
    if name not in recipes:
        raise ConfigError(f"unknown recipe '{name}'; available: {', '.join(recipes)}")
    return recipes[name]


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Software versions, the CPU (:func:`plmkit.device.cpu_info`) and the dtype chosen for it."""
    import torch
    import transformers

    from .. import __version__
    from ..device import cpu_info, fast_dtype

    return {
        "plmkit": __version__, "git_commit": _git_commit(),
        "python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "cuda": torch.cuda.is_available(), "loadavg": [round(x, 2) for x in os.getloadavg()],
        "cpu_info": cpu_info(), "fast_dtype": str(fast_dtype()).replace("torch.", ""),
    }


def print_done(res: dict[str, Any]) -> None:
    """One line per finished recipe: its time, budget and results file."""
    where = Path(res["out_dir"]) / "results.json"
    state = "" if res.get("status", "ok") == "ok" else f" FAILED ({res.get('error', '')})"
    print(f"{res['name']}: {res['runtime_s']:.1f} s ({res['budget']}){state} -> {where}", flush=True)


def run_recipe(recipe_: Recipe, out_dir: str | Path, quick: bool = True, seed: int = 0,
               progress: bool = True, resume: bool = True, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run one recipe, writing DIR/<name>/results.json; a failure is recorded there (status "failed",
    error.txt with the traceback) rather than raised. ``resume=False`` runs every step again rather than taking
    finished ones from an earlier, stopped run (:meth:`RecipeContext.resumable`). ``overrides``: ``KEY=VALUE``
    changes to the budget's settings (:func:`plmkit.config.override_settings`), recorded in the results."""
    out = Path(out_dir)
    settings = recipe_.budgets.pick(quick) if recipe_.budgets else None
    if overrides:
        settings = override_settings(settings, overrides)
    ctx = RecipeContext(out / recipe_.name, quick, seed, progress, settings, resume=resume)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    (ctx.out_dir / "error.txt").unlink(missing_ok=True)
    started = _dt.datetime.now(_dt.timezone.utc)
    env = environment()  # at the start: the commit whose code runs (a long run may outlive later commits)
    t0 = time.perf_counter()
    try:
        body, status, error = recipe_.run(ctx), "ok", None
    except Exception as e:  # noqa: BLE001  (one failing recipe must not lose the others' results)
        write_text(ctx.out_dir / "error.txt", traceback.format_exc())
        body, status = {}, "failed"
        error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    res = {
        "name": recipe_.name, "title": recipe_.title, "system": recipe_.system, "paper_claim": recipe_.paper_claim,
        "citation": recipe_.citation, "quick": quick, "budget": "quick" if quick else "full", "seed": seed,
        "status": status, **({"error": error} if error else {}),
        "command": f"plmkit reproduce {recipe_.name}{' --quick' if quick else ''} --out {out}"
                   + "".join(f" --set {shlex.quote(o)}" for o in overrides),
        **({"overrides": list(overrides)} if overrides else {}),
        "date": started.isoformat(timespec="seconds"), "out_dir": str(ctx.out_dir),
        "runtime_s": round(time.perf_counter() - t0, 1), "phases_s": ctx.phases,
        "environment": {**env, "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "settings": dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else None, **body,
    }
    steps = ctx._steps
    if steps is not None and steps.resumed:
        res["resumed_steps"] = {"steps": steps.resumed, "seconds_when_run": round(steps.resumed_seconds, 1)}
        res["notes"] = [*res.get("notes", []),
                        f"{len(steps.resumed)} step(s) were taken from an earlier, stopped run of this recipe "
                        f"({ctx.out_dir / 'steps'}), where they took {steps.resumed_seconds:.0f} s; runtime_s "
                        "counts this run only."]
    write_json(ctx.out_dir / "results.json", res)
    return res


def run_recipes(names: list[str] | None, out_dir: str | Path, quick: bool = True, seed: int = 0,
                progress: bool = True, on_done: Callable[[dict[str, Any]], None] | None = print_done,
                record_dir: str | Path | None = "auto", resume: bool = True,
                overrides: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run recipes (all when ``names`` is empty or ``["all"]``), writing DIR/<name>/results.json and the report.

    ``on_done(results)`` is called as each recipe finishes (default: print its time). A successful full
    run of a built-in recipe is also recorded as ``record_dir/NAME.json`` (``"auto"``: the checkout's
    docs/results; None: not recorded). ``resume``: see :func:`run_recipe`. ``overrides`` (``KEY=VALUE``) change
    the settings of the one recipe named; such a run is not the recipe's budget, so it is not recorded. Raises
    PlmkitError after the report is written if any recipe failed.
    """
    from ..report import write_report
    from ..report.records import record_full_run, recorded_dir

    recipes = load_recipes()
    names = list(recipes) if not names or names == ["all"] else list(dict.fromkeys(names))
    chosen = [get_recipe(n) for n in names]  # every name checked before anything runs
    if overrides:
        if len(chosen) != 1:
            raise ConfigError("--set changes one recipe's settings: name that recipe alone, "
                              "e.g. `plmkit reproduce moefication --set lm_relu=true`")
        override_settings(chosen[0].budgets.pick(quick) if chosen[0].budgets else None, overrides)  # checked early
    record = recorded_dir() if record_dir == "auto" else (Path(record_dir) if record_dir else None)
    results = []
    for r in chosen:
        res = run_recipe(r, out_dir, quick, seed, progress, resume, overrides)
        if (not quick and not overrides and res["status"] == "ok" and record
                and r.run.__module__.startswith(f"{__package__}.")):
            record_full_run(res, record)
        results.append(res)
        if on_done:
            on_done(res)
    write_report(out_dir, recorded=record)
    failed = [r["name"] for r in results if r["status"] != "ok"]
    if failed:
        raise PlmkitError(f"recipe(s) {', '.join(failed)} failed: see {Path(out_dir) / failed[0] / 'error.txt'}"
                          + (" and the others' error.txt" if len(failed) > 1 else ""))
    return results
