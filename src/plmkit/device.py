"""Where a model lives and which precision this machine runs fast.

- ``model_device(model)`` / ``to_device(batch, model)``: batches follow the model, never the CPU by default.
- ``bf16_is_fast()``: True on a GPU with bf16, or a CPU with native bf16 matrix instructions (AMX,
  AVX512-BF16) *and* a measured bf16 matmul no slower than fp32; on AVX2-only CPUs bf16 is emulated
  and many times slower, so recipes and benchmarks fall back to fp32 there.
- ``fast_dtype()`` / ``mixed_precision()``: the dtype and the accelerate setting to use by default.
- ``cpu_info()``: the processor, recorded in every result.
- ``unwrap_model(model)``: the user's module inside DDP/FSDP/DeepSpeed/compile wrappers.
"""
from __future__ import annotations

import functools
import os
import platform
import time
from typing import Any, Mapping

import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a module with neither)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (float32 when there is none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def to_device(batch: Any, device: torch.device | str | nn.Module) -> Any:
    """``batch`` (a tensor, or dicts/lists/tuples of tensors) moved to ``device`` or to a model's device."""
    if isinstance(device, nn.Module):
        device = model_device(device)
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_info() -> dict[str, Any]:
    """The CPU's name, cores, torch's kernel capability and its native bf16 support (for results.json)."""
    flags = _cpu_flags()
    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": sorted(f for f in flags if f in ("amx_bf16", "avx512_bf16")),
        "bf16_fast": bf16_is_fast("cpu"),
    }


def _matmul_times(n: int = 9) -> tuple[float, float]:
    """(bf16, fp32) seconds of one (256 x 1536) @ (1536 x 576) matmul: the two timed in turn, the fastest of ``n``
    each, so another process busy on the cores slows both alike instead of deciding the answer."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(256, 1536, generator=g), torch.randn(1536, 576, generator=g)
    pairs = {torch.bfloat16: (a.bfloat16(), b.bfloat16()), torch.float32: (a, b)}
    times: dict[torch.dtype, list[float]] = {dtype: [] for dtype in pairs}
    for x, y in pairs.values():
        torch.mm(x, y)  # warm-up
    for _ in range(n):
        for dtype, (x, y) in pairs.items():
            t0 = time.perf_counter()
            torch.mm(x, y)
            times[dtype].append(time.perf_counter() - t0)
    return min(times[torch.bfloat16]), min(times[torch.float32])


@functools.lru_cache(maxsize=None)
def bf16_is_fast(device: str = "cpu") -> bool:
    """Whether bf16 is a good default on ``device``: CUDA with bf16 support, or a CPU with native bf16
    instructions (AMX, AVX512-BF16). On such a CPU a measured bf16 matmul (timed in turn with fp32, fastest of
    9) must not be more than 4x slower than fp32, which catches a torch build without the kernels (emulated bf16
    is 26x slower on AVX2-only CPUs, where the flags alone say no). The margin is wide because the answer keys
    cached models: on the 2-core Xeon with AMX, while a training run used both cores, this matmul took 1.3-2.0x
    the fp32 time, and a 2x limit flipped between runs. ``PLMKIT_BF16=0|1`` forces the answer.
    Decided once per process."""
    forced = os.environ.get("PLMKIT_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return False
    if not _cpu_flags() & {"amx_bf16", "avx512_bf16"}:
        return False
    bf16, fp32 = _matmul_times()
    return bf16 <= 4.0 * fp32


def fast_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """bfloat16 where :func:`bf16_is_fast`, else float32."""
    return torch.bfloat16 if bf16_is_fast(str(torch.device(device).type)) else torch.float32


def mixed_precision(device: str | torch.device = "cpu") -> str:
    """The accelerate ``mixed_precision`` setting to train with by default: ``bf16`` where it is fast, else ``no``."""
    return "bf16" if bf16_is_fast(str(torch.device(device).type)) else "no"


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module inside distributed or compile wrappers (DDP, FSDP, DeepSpeed, ``torch.compile``).

    Read ``config`` and other attributes from this; run the forward through ``model`` itself, since a
    DDP wrapper's forward is what makes the backward all-reduce the gradients."""
    if isinstance(model, torch.nn.Module) and "module" not in model._modules and "_orig_mod" not in model._modules:
        return model  # the common, unwrapped case without importing accelerate
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model, keep_fp32_wrapper=True, keep_torch_compile=False)


def is_wrapped(model: torch.nn.Module) -> bool:
    """True when ``model`` is a distributed/compile wrapper around another module."""
    return unwrap_model(model) is not model
