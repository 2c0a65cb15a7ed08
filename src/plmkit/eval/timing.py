"""Wall-clock comparison of two callables, measured side by side in one process."""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch


@dataclass
class Comparison:
    baseline_s: float  # median seconds per call
    candidate_s: float
    ratio: float  # baseline / candidate: > 1 means the candidate is faster
    repeats: int
    baseline_all: list[float]
    candidate_all: list[float]

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"baseline {self.baseline_s * 1e3:.3f} ms, candidate {self.candidate_s * 1e3:.3f} ms, "
                f"speed-up {self.ratio:.2f}x (median of {self.repeats})")


def time_call(fn: Callable[[], object], repeats: int = 10, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def compare(baseline: Callable[[], object], candidate: Callable[[], object], repeats: int = 10,
            warmup: int = 2, sync: Callable[[], None] | None = None) -> Comparison:
    """Median time of each callable, runs interleaved (A, B, A, B, ...) so that drifts in machine
    speed hit both alike; ``sync`` (e.g. ``torch.cuda.synchronize``) is called after every run."""
    t = interleaved({"a": baseline, "b": candidate}, repeats=repeats, warmup=warmup, sync=sync)
    a, b = t["a"], t["b"]
    ma, mb = statistics.median(a), statistics.median(b)
    return Comparison(ma, mb, ma / mb, repeats, a, b)


@dataclass
class Speedup:
    """A speed-up measured side by side, with how far to trust it.

    ``ratio`` is the median of the paired per-repeat ratios (baseline run / the candidate run right after
    it); ``spread`` their interquartile range relative to the median; ``flagged`` says why the figure is
    suspect after every retry (above its bound, or spread over the tolerance), empty when it is not."""

    ratio: float
    spread: float
    bound: float | None
    attempts: int
    flagged: str
    comparison: Comparison

    def __str__(self) -> str:
        b = f", bound {self.bound:.2f}x" if self.bound is not None else ""
        return f"{self.ratio:.2f}x ±{self.spread:.0%}{b}" + (f"  [FLAG: {self.flagged}]" if self.flagged else "")


def measure_speedup(baseline: Callable[[], object], candidate: Callable[[], object], *, repeats: int = 5,
                    warmup: int = 1, bound: float | None = None, tolerance: float = 0.25, retries: int = 2,
                    sync: Callable[[], None] | None = None) -> Speedup:
    """``baseline`` time / ``candidate`` time by :func:`compare` (interleaved), re-measured up to ``retries``
    more times while the figure exceeds ``bound`` (by more than ``tolerance``) or the paired ratios spread
    wider than ``tolerance``; the attempt with the smallest spread is kept, and flagged if still suspect
    (a busy machine reads as a speed-up above what the work allows)."""
    if repeats < 3:
        raise ValueError("measure_speedup needs at least 3 repeats for a median and a spread")
    best: Speedup | None = None
    for attempt in range(1, retries + 2):
        c = compare(baseline, candidate, repeats=repeats, warmup=warmup, sync=sync)
        pairs = sorted(a / b for a, b in zip(c.baseline_all, c.candidate_all))
        ratio = statistics.median(pairs)
        q = statistics.quantiles(pairs, n=4, method="inclusive")
        spread = (q[2] - q[0]) / ratio
        why = []
        if bound is not None and ratio > bound * (1 + tolerance):
            why.append(f"{ratio:.2f}x is above the bound {bound:.2f}x")
        if spread > tolerance:
            why.append(f"spread {spread:.0%} over the tolerance {tolerance:.0%}")
        m = Speedup(ratio, spread, bound, attempt, "; ".join(why), c)
        if best is None or m.spread < best.spread:
            best = m
        if not why:
            best = m
            break
    best.attempts = attempt
    return best


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1,
                sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Seconds of every run of each callable, run in turns (A, B, C, A, B, C, ...) so that drifts in machine
    speed hit all alike; ``sync`` is called after every run. Take the median of each list."""
    def run(fn: Callable[[], object]) -> float:
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        return time.perf_counter() - t

    for _ in range(warmup):
        for fn in fns.values():
            run(fn)
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            out[k].append(run(fn))
    return out


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (matmuls and convolutions, as ``torch.utils.flop_counter`` counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes (Linux ``VmHWM``).

    Unlike ``getrusage``'s ``ru_maxrss``, which Linux carries over from the parent across ``exec``, ``VmHWM``
    belongs to this process's own address space, so a child started from a large parent reads its own peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # not Linux: the best the platform gives (kB on Linux, bytes on macOS)

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
