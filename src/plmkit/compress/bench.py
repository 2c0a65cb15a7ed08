"""Side-by-side cost of compressed models: decode and prefill speed, bytes, parameters (one process,
contenders interleaved), shared by the ``bmcook`` recipe and ``benchmarks/cook_speed.py``; the optional
peers (torchao, llama.cpp through llama-cpp-python) where installed (:func:`peer_status` says which)."""
from __future__ import annotations

import copy
import statistics
from typing import Any, Callable

import torch
from torch import nn

from ..eval.timing import interleaved
from ..infer.bench import decode_time

FP32 = "fp32"
INT8 = "plmkit int8"
INT4 = "plmkit int4"
TORCH_DYNAMIC = "torch dynamic int8"
TORCHAO = "torchao int8 weight-only"
PEER_INSTALL = {  # what each optional peer needs, printed where one is missing
    "torchao": "pip install torchao",
    "llama_cpp": "pip install llama-cpp-python (builds llama.cpp from source: about 25 minutes on 2 cores)",
    "optimum-onnx": "not installable beside plmkit: optimum-onnx 0.1.0 requires transformers<4.58, plmkit pins 5.24",
}


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (tied tensors once), the packed int8 params of torch.ao included."""
    seen: dict[int, int] = {}

    def add(t: torch.Tensor) -> None:
        if hasattr(t, "__tensor_flatten__"):  # a tensor subclass (torchao's int8 weights): count its inner tensors
            for name in t.__tensor_flatten__()[0]:
                add(getattr(t, name))
            return
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    for t in list(model.parameters()) + list(model.buffers()):
        add(t)
    extra = 0
    for m in model.modules():  # torch.ao dynamic quantized linears keep their weights in a packed-params object
        packed = getattr(m, "_packed_params", None)
        if packed is not None and hasattr(packed, "_weight_bias"):
            w, b = packed._weight_bias()
            extra += w.int_repr().numel() * w.int_repr().element_size() + (b.numel() * 4 if b is not None else 0)
    return sum(seen.values()) + extra


def torch_dynamic_int8(model: nn.Module) -> nn.Module:
    """The peer: ``torch.ao.quantization.quantize_dynamic`` on a copy (int8 weights and activations)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


def torchao_int8(model: nn.Module) -> nn.Module | None:
    """The peer: torchao's int8 weight-only quantization on a copy; None where torchao is not installed."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_ as ao_quantize
    except ImportError:
        return None
    m = copy.deepcopy(model)
    ao_quantize(m, Int8WeightOnlyConfig())
    return m


def peer_status() -> dict[str, str]:
    """Installed version, or how to install, of every optional peer."""
    from importlib import metadata

    out = {}
    for name, dist in (("torchao", "torchao"), ("llama_cpp", "llama-cpp-python"), ("optimum-onnx", "optimum-onnx")):
        try:
            out[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[name] = "not installed: " + PEER_INSTALL[name]
    return out


LLAMA_CPP_TYPES = {"Q8_0": 7, "Q4_1": 3, "F16": 1}  # llama.cpp's LLAMA_FTYPE_MOSTLY_* codes


def llama_cpp_requantize(source: str, out: str, kind: str = "Q8_0", threads: int = 2) -> str | None:
    """``source`` GGUF rewritten as ``kind`` by llama.cpp (requantizing a quantized file is allowed: Q4_1 values
    are held exactly by Q8_0 and F16); None where llama-cpp-python is not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    import ctypes

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_CPP_TYPES[kind]
    params.allow_requantize = True
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama.cpp could not write {kind} from {source} (code {rc})")
    return out


def llama_cpp_speed(gguf: str, prompt_ids: list[int], prefill_ids: list[int], *, new_tokens: int = 16,
                    repeats: int = 3, threads: int = 2) -> dict[str, Any] | None:
    """llama.cpp's batch-1 greedy decode tokens/s (argmax over its logits, so no stop token cuts it short) and
    prefill tokens/s of ``prefill_ids``, medians of ``repeats``; None where llama-cpp-python is not installed.
    The token ids are the Hugging Face tokenizer's, which the GGUF's vocabulary shares."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    import time

    import numpy as np

    llm = Llama(model_path=str(gguf), n_ctx=max(512, len(prefill_ids) + 64), n_batch=512, n_threads=threads,
                n_threads_batch=threads, logits_all=False, verbose=False)
    dec, pre = [], []
    for _ in range(repeats + 1):  # the first round warms up
        llm.reset()
        llm.eval(list(prompt_ids))
        t = time.perf_counter()
        for _ in range(new_tokens):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        dec.append((time.perf_counter() - t) / new_tokens)
        llm.reset()
        t = time.perf_counter()
        llm.eval(list(prefill_ids))
        pre.append(time.perf_counter() - t)
    llm.close()
    return {"decode_tok_s": 1 / statistics.median(dec[1:]), "prefill_tok_s": len(prefill_ids) / statistics.median(pre[1:]),
            "decode_runs_s": dec[1:]}


def llama_cpp_rows(gguf: str, prompt_ids: list[int], prefill_ids: list[int], *, new_tokens: int = 16,
                   repeats: int = 3, threads: int = 2) -> dict[str, dict[str, Any]]:
    """:func:`llama_cpp_speed` and bytes of ``gguf`` as it is and of its Q8_0 rewrite, keyed ``llama.cpp Q8_0``
    and ``llama.cpp <its type>``; {} where llama-cpp-python is not installed."""
    import os
    import tempfile

    from gguf import GGUFReader, LlamaFileType

    kind = LlamaFileType(int(GGUFReader(gguf).fields["general.file_type"].contents())).name.replace("MOSTLY_", "")
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        q8 = llama_cpp_requantize(gguf, f"{tmp}/q8_0.gguf", "Q8_0")
        if q8 is None:
            return rows
        for name, path in (("llama.cpp Q8_0", q8), (f"llama.cpp {kind}", str(gguf))):
            speed = llama_cpp_speed(path, prompt_ids, prefill_ids, new_tokens=new_tokens, repeats=repeats,
                                    threads=threads)
            rows[name] = {**speed, "bytes": os.path.getsize(path)}
    return rows


def compare_lm_speed(contenders: dict[str, nn.Module], prompt_ids: torch.Tensor, prefill_ids: torch.Tensor, *,
                     new_tokens: int = 16, repeats: int = 3) -> dict[str, dict[str, float]]:
    """Decode tokens/s (batch 1, greedy) and prefill tokens/s of each causal LM, interleaved; medians."""
    def prefill(m: nn.Module) -> Callable[[], Any]:
        def run() -> None:
            with torch.no_grad():
                m(input_ids=prefill_ids, use_cache=False, logits_to_keep=1)
        return run

    dec: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(repeats):
        for k, m in contenders.items():
            dec[k].append(decode_time(m, prompt_ids, new_tokens)[0])
    pre = interleaved({k: prefill(m) for k, m in contenders.items()}, repeats=repeats)
    n = prefill_ids.numel()
    return {k: {"decode_tok_s": 1 / statistics.median(dec[k]), "prefill_tok_s": n / statistics.median(pre[k]),
                "decode_runs_s": dec[k]} for k in contenders}


def compare_prefill(contenders: dict[str, nn.Module], batch: dict[str, torch.Tensor], *,
                    repeats: int = 5) -> dict[str, float]:
    """Texts per second of a batched forward (e.g. a classifier's), interleaved; medians."""
    def run(m: nn.Module) -> Callable[[], Any]:
        def go() -> None:
            with torch.no_grad():
                m(**batch)
        return go

    times = interleaved({k: run(m) for k, m in contenders.items()}, repeats=repeats)
    rows = batch["input_ids"].shape[0]
    return {k: rows / statistics.median(v) for k, v in times.items()}
