"""Decode and prefill speed of offloaded models, side by side with the full-memory model and accelerate's
disk offload at the same budget (used by ``benchmarks/offload_speed.py`` and the ``bminf`` recipe).

Every contender runs in this process, interleaved repeat by repeat, so that drifts in machine speed hit all
alike. Peak RSS needs a process of its own per contender: :func:`peak_rss` starts one.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .offload import offload, offload_stats, parse_budget, restore, scheduler
from .store import FileReader, as_bytes, checkpoint_files, safetensors_index


@dataclass
class Cell:
    """One contender at one budget."""

    contender: str
    budget: str
    decode_tps: float = 0.0  # batch-1 decode tokens/s (KV cache), median over repeats
    decode_spread: float = 0.0  # (max - min) / median of the per-repeat decode times
    prefill_tps: float = 0.0  # prompt tokens/s of one batched forward
    resident_bytes: int = 0  # weights held by the model (plmkit: its plan; accelerate: its device map's CPU part)
    measured_peak_bytes: int = 0  # plmkit: largest resident weight bytes measured at any load in a tracked pass
    streamed_per_token: float = 0.0  # weight bytes read per decoded token
    bound_tps: float = 0.0  # decode tokens/s if copying the streamed bytes alone set the pace (bandwidth / bytes per token)
    same_greedy: bool | None = None  # greedy tokens identical to the full-memory fp32 model's
    error: str = ""
    times: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = "fp32 full memory"
OURS, OURS_INT8, ACCELERATE = "plmkit fp32", "plmkit int8", "accelerate disk offload"


@dataclass
class Comparison:
    """What :func:`compare_offload` measured: one cell per contender and budget, and the copy bandwidth of the
    model's files (bytes/s, warm page cache) that the cells' bounds use."""

    cells: list[Cell]
    bandwidth: float

    @property
    def full(self) -> Cell:
        return next(c for c in self.cells if c.contender == FULL)

    def at(self, contender: str, budget: str) -> Cell | None:
        """The cell of ``contender`` at ``budget``; None when it is absent or failed."""
        return next((c for c in self.cells if c.contender == contender and c.budget == budget and not c.error), None)

    def headline(self, budget: str = "25%") -> dict[str, float | None]:
        """Decode speed-ups over accelerate (fp32, int8) and plmkit fp32's peak resident share at ``budget``."""
        ours, q, acc = self.at(OURS, budget), self.at(OURS_INT8, budget), self.at(ACCELERATE, budget)
        return {"speedup_vs_accelerate": ours.decode_tps / acc.decode_tps if ours and acc else None,
                "int8_speedup_vs_accelerate": q.decode_tps / acc.decode_tps if q and acc else None,
                "peak_resident_ratio": max(ours.resident_bytes, ours.measured_peak_bytes) / self.full.resident_bytes
                if ours else None}


def read_bandwidth(path: str | Path, repeats: int = 3) -> float:
    """Bytes/s of reading ``path`` (warm page cache) into memory, the way the scheduler reads: preadv."""
    index = safetensors_index([path])
    reader = FileReader()
    best = 0.0
    buf = torch.empty(max(f.nbytes for f in index.values()), dtype=torch.uint8)
    for _ in range(repeats):
        t = time.perf_counter()
        for f in index.values():
            reader.read_into(f, buf[:f.nbytes])
        best = max(best, sum(f.nbytes for f in index.values()) / (time.perf_counter() - t))
    reader.close()
    return best


def _accelerate_model(folder: str, budget_bytes: int, offload_dir: str) -> nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, device_map="auto", max_memory={"cpu": budget_bytes},
                                                offload_folder=offload_dir, dtype=torch.float32).eval()


def _accelerate_resident(model: nn.Module) -> int:
    """Bytes of the weights accelerate keeps in memory (the modules its device map puts on the CPU)."""
    dmap = getattr(model, "hf_device_map", {})
    seen: dict[int, int] = {}  # by storage: a tied table counts once
    for name, where in dmap.items():
        if where == "disk":
            continue
        mod = model.get_submodule(name) if name else model
        for p in mod.parameters():
            if p.device.type != "meta":
                seen[p.untyped_storage().data_ptr()] = p.untyped_storage().nbytes()
    return sum(seen.values())


def decode_time(model: nn.Module, ids: torch.Tensor, new: int) -> tuple[float, torch.Tensor]:
    """Seconds per decoded token: generate(new + 1) minus generate(1), so the prompt's prefill cancels."""
    gen = dict(do_sample=False, pad_token_id=0)
    with torch.no_grad():
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=1, min_new_tokens=1, **gen)
        one = time.perf_counter() - t
        t = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new + 1, min_new_tokens=new + 1, **gen)
        many = time.perf_counter() - t
    return max(many - one, 1e-9) / new, out[0, ids.shape[1]:]


def _prefill_time(model: nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        t = time.perf_counter()
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
        return time.perf_counter() - t


def compare_offload(folder: str, int8_folder: str | None, budgets: list[str], *, prompt_ids: torch.Tensor,
                    prefill_ids: torch.Tensor, new_tokens: int = 16, repeats: int = 3,
                    with_accelerate: bool = True, progress: Callable[[str], None] | None = None) -> Comparison:
    """Cells for the full-memory model and, at each budget: plmkit fp32 (streamed from ``folder``), plmkit int8
    (from ``int8_folder``) and accelerate's disk offload."""
    from ..assets.models import load_model

    say = progress or (lambda s: None)
    full, _ = load_model(folder)
    files = checkpoint_files(folder)
    bandwidth = min(read_bandwidth(f) for f in files)
    full_bytes = sum(p.numel() * p.element_size() for p in full.parameters())
    contenders: dict[tuple[str, str], Any] = {(FULL, "100%"): full}
    tmp = tempfile.TemporaryDirectory(prefix="plmkit-bench-")
    for b in budgets:
        contenders[(OURS, b)] = lambda b=b: offload(folder, b, task="causal-lm")
        if int8_folder:
            contenders[(OURS_INT8, b)] = lambda b=b: offload(int8_folder, b, task="causal-lm")
        if with_accelerate:
            contenders[(ACCELERATE, b)] = (
                lambda b=b, n=full_bytes: _accelerate_model(folder, parse_budget(b, n), f"{tmp.name}/{b[:-1]}"))
    cells: dict[tuple[str, str], Cell] = {}
    models: dict[tuple[str, str], nn.Module] = {}
    for key, make in contenders.items():
        cells[key] = Cell(key[0], key[1])
        try:
            models[key] = make() if callable(make) and not isinstance(make, nn.Module) else make
        except Exception as e:  # a peer that cannot run at this budget is a result too
            cells[key].error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            say(f"{key[0]} at {key[1]}: {cells[key].error}")
    reference = None
    decode: dict[tuple[str, str], list[float]] = {k: [] for k in models}
    prefill: dict[tuple[str, str], list[float]] = {k: [] for k in models}
    for r in range(repeats + 1):  # round 0 warms up (page cache, allocator, first-call costs)
        for key, model in models.items():
            dt, toks = decode_time(model, prompt_ids, new_tokens)
            pf = _prefill_time(model, prefill_ids)
            if key[0] == FULL and reference is None:
                reference = toks
            if r == 0:
                cells[key].same_greedy = bool(torch.equal(toks, reference)) if reference is not None else None
                continue
            decode[key].append(dt)
            prefill[key].append(pf)
        say(f"repeat {r}/{repeats}")
    for key, model in models.items():
        c = cells[key]
        med = statistics.median(decode[key])
        c.times = decode[key]
        c.decode_tps = 1 / med
        c.decode_spread = (max(decode[key]) - min(decode[key])) / med
        c.prefill_tps = prefill_ids.numel() / statistics.median(prefill[key])
        if hasattr(model, "_plmkit_offload"):
            scheduler(model).cfg.track = True  # one more pass, measuring the resident bytes at every load
            decode_time(model, prompt_ids, 2)
            s = offload_stats(model)
            c.resident_bytes = s.planned_resident_bytes
            c.measured_peak_bytes = s.measured_peak_bytes
            c.streamed_per_token = s.streamed_per_pass
            c.bound_tps = bandwidth / s.streamed_per_pass if s.streamed_per_pass else 0.0
            restore(model)
        elif key[0] == ACCELERATE:
            c.resident_bytes = _accelerate_resident(model)
            c.streamed_per_token = full_bytes - c.resident_bytes  # what its device map keeps off memory
            c.bound_tps = bandwidth / c.streamed_per_token if c.streamed_per_token > 0 else 0.0
        else:  # the full-memory model
            c.resident_bytes = full_bytes
    tmp.cleanup()
    return Comparison(list(cells.values()), bandwidth)


def peak_rss(argv: list[str]) -> int:
    """Peak RSS in bytes of a fresh Python process running ``plmkit.infer.bench`` with ``argv``."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run([sys.executable, "-m", "plmkit.infer.bench", *argv], capture_output=True, text=True,
                         env=env, check=False)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return int(json.loads(line)["peak_rss"])
    raise RuntimeError(f"peak RSS probe failed: {out.stderr.strip().splitlines()[-1:] or out.stdout[-200:]}")


def contender_rss(folder: str, int8_folder: str | None, budgets: list[str],
                  with_accelerate: bool = True) -> dict[tuple[str, str], int]:
    """Peak RSS of each contender of :func:`compare_offload`, one process each, keyed like its cells; the
    floor (the same code on a one-layer, 64-wide copy of the model) under ``("none", "-")``."""
    rss = {("none", "-"): peak_rss(["none", folder, "100%"]), (FULL, "100%"): peak_rss(["full", folder, "100%"])}
    for b in budgets:
        rss[(OURS, b)] = peak_rss(["plmkit", folder, b])
        if int8_folder:
            rss[(OURS_INT8, b)] = peak_rss(["plmkit", int8_folder, b])
        if with_accelerate:
            try:
                rss[(ACCELERATE, b)] = peak_rss(["accelerate", folder, b])
            except RuntimeError:  # a budget accelerate cannot run at: its cell says why
                pass
    return rss


def _rss_probe(argv: list[str]) -> None:
    """Load one contender, generate a few tokens, print the process's peak RSS as JSON."""
    from ..eval.timing import peak_rss_bytes

    kind, folder, budget = argv[0], argv[1], argv[2]
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    with tempfile.TemporaryDirectory(prefix="plmkit-rss-") as d:
        if kind == "none":  # the floor under every contender: the same code run on a one-layer, 64-wide copy
            from transformers import AutoConfig, AutoModelForCausalLM

            cfg = AutoConfig.from_pretrained(folder)
            cfg.update(dict(num_hidden_layers=1, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                            num_key_value_heads=1, head_dim=32))
            model = AutoModelForCausalLM.from_config(cfg)
        elif kind == "full":
            from ..assets.models import load_model

            model, _ = load_model(folder)
        elif kind == "plmkit":
            model = offload(folder, budget, task="causal-lm")
        else:
            n = sum(f.nbytes for f in safetensors_index(checkpoint_files(folder)).values())
            model = _accelerate_model(folder, parse_budget(budget, n), d)
        with torch.no_grad():
            model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
        print(json.dumps({"peak_rss": peak_rss_bytes()}))


if __name__ == "__main__":
    _rss_probe(sys.argv[1:])


__all__ = ["Cell", "Comparison", "as_bytes", "compare_offload", "contender_rss", "peak_rss", "read_bandwidth"]
