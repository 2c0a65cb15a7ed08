"""Run a model under a hard budget of resident weight bytes (BMInf's scheduler, on any HF model).

The model's weights are split into *units*: each transformer block, and the output head in chunks of rows.
Units that fit the budget stay resident; the others live in host memory or in safetensors files and are
copied, when needed, into a few preallocated *slots*. While one unit computes, a background thread (CPU) or a
side CUDA stream (GPU) fills the next slot with the next unit. The input embedding table is never needed
whole: unless it stays resident, lookups read only the rows of the tokens at hand.

Resident weight bytes = the storages of all parameters (streamed ones point at 4-byte placeholders between
uses) + the slots. They are fixed when the plan is made, checked against the budget, and re-measured at
every load when ``track=True``.

    model, tok = plmkit.load_model("smollm2")
    model = offload(model, "25%", source="disk")      # or offload("smollm2", "25%"): never loads it whole
    model.generate(**tok("Paris is", return_tensors="pt"), max_new_tokens=20)
    offload_stats(model); restore(model)              # the plan and counters; everything resident again
"""
from __future__ import annotations

import math
import re
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import arch
from ..arch.wrap import Wrapper
from ..config import JsonConfig
from ..errors import ConfigError
from .store import FAULT_AROUND, PAGE, FileReader, FileTensor, MappedFiles, as_bytes, checkpoint_files, page_ranges, safetensors_index

SOURCES = ("memory", "disk")
ALIGN = 64  # byte alignment of each tensor inside a slot


@dataclass
class OffloadConfig(JsonConfig):
    """``budget``: resident weight bytes, as a share of the model's weights ("25%") or a size ("300MB",
    "1.5GiB", "123456789"). ``source``: where an in-memory model's streamed weights wait (``memory``: host
    RAM, pinned on GPU; ``disk``: a safetensors store written to ``store_dir``, or a temporary folder).
    ``slots``: streaming buffers (2 lets the next unit load while one computes). ``track``: re-measure the
    resident bytes at every load (slower; tests use it). ``zero_copy``: on the CPU, weights streamed from
    files are used in place in a read-only mapping (pages mapped ahead of use and unmapped after) instead of
    being copied into buffers."""

    budget: str = "25%"
    source: str = "memory"
    prefetch: bool = True
    slots: int = 2
    track: bool = False
    store_dir: str | None = None
    zero_copy: bool = True

    def __post_init__(self) -> None:
        self.budget = str(self.budget)
        if self.source not in SOURCES:
            raise ConfigError(f"offload source '{self.source}': choose one of {SOURCES}")
        if self.slots < 1:
            raise ConfigError(f"offload slots={self.slots}: need at least 1 streaming buffer")
        if self.prefetch and self.slots < 2:
            raise ConfigError("offload prefetch needs slots >= 2 (one computes while the next loads)")
        parse_budget(self.budget, 1)  # validates the format


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_budget(budget: str | int | float, total: int) -> int:
    """Bytes from ``"25%"`` (of ``total``), ``"300MB"``, ``"1.5GiB"`` or a number of bytes."""
    s = str(budget).strip().lower().replace(" ", "")
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)(%|[kmg]i?b|b)?", s)
    if not m:
        raise ConfigError(f"budget '{budget}': give a share ('25%') or a size ('300MB', '1.5GiB', bytes)")
    value, unit = float(m.group(1)), m.group(2) or ""
    if unit == "%":
        if not 0 < value <= 100:
            raise ConfigError(f"budget '{budget}': a share must be in (0, 100]%")
        return int(total * value / 100)
    return int(value * _UNITS[unit])


# ---------------------------------------------------------------------------------------------- units


@dataclass
class _Ref:
    """One streamed tensor: its place in a slot and where its bytes wait."""

    start: int
    nbytes: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    owner: nn.Module | None = None  # rebinding target (a block's parameter), None for head chunks
    attr: str = ""
    host: torch.Tensor | None = None  # the bytes in host memory, or
    file: FileTensor | None = None  # in a safetensors file
    requires_grad: bool = False  # the original parameter's flag, given back by restore()


@dataclass
class _Unit:
    name: str
    refs: list[_Ref]
    nbytes: int
    slot: int | None = None  # slot index while loaded
    ranges: list[tuple[str, int, int]] = field(default_factory=list)  # mapped pages (zero-copy mode)


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _placeholder(dtype: torch.dtype, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A tensor of the right shape backed by one element (NaN for floats), so that a streamed weight used
    outside its block's forward shows up instead of computing with stale bytes."""
    fill = float("nan") if dtype.is_floating_point else 0
    return torch.full((1,), fill, dtype=dtype, device=device).expand(shape)


class ChunkedHead(Wrapper):
    """The output head computed chunk by chunk of vocabulary rows, each chunk streamed through a slot."""

    runs_base = False

    def __init__(self, base_layer: nn.Module, scheduler: "Scheduler", units: list[_Unit], bias: torch.Tensor | None):
        super().__init__(base_layer)
        self._scheduler = scheduler
        self._units = units
        self._bias = bias

    def _chunk(self, x: torch.Tensor, unit: _Unit) -> torch.Tensor:
        (w,) = self._scheduler.acquire(unit)
        return F.linear(x, w.to(x.dtype) if w.dtype != x.dtype else w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        if torch.is_grad_enabled():  # backward loads each chunk again instead of keeping it (see _stream_forward)
            parts = [checkpoint(self._chunk, x, u, use_reentrant=False) for u in self._units]
        else:
            parts = [self._chunk(x, u) for u in self._units]
        out = torch.cat(parts, dim=-1)
        return out + self._bias if self._bias is not None else out


class RowEmbedding(Wrapper):
    """An input embedding that reads only the rows of the tokens it is given (from host memory or disk)."""

    runs_base = False

    def __init__(self, base_layer: nn.Embedding, host: torch.Tensor | None, file: FileTensor | None,
                 reader: FileReader, device: torch.device):
        super().__init__(base_layer)
        self._host, self._file, self._reader, self._device = host, file, reader, device
        self._dim = base_layer.embedding_dim
        self._dtype = host.dtype if host is not None else file.dtype  # type: ignore[union-attr]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        uniq, inverse = torch.unique(ids.cpu(), return_inverse=True)
        if self._host is not None:
            rows = self._host.index_select(0, uniq.to(self._host.device))
        else:
            f = self._file
            row_bytes = self._dim * self._dtype.itemsize
            rows = torch.empty(len(uniq), self._dim, dtype=self._dtype)
            raw = as_bytes(rows)
            for i, t in enumerate(uniq.tolist()):
                self._reader.read_into(FileTensor(f.path, f.offset + t * row_bytes, row_bytes, f.dtype, (self._dim,)),
                                       raw[i * row_bytes:(i + 1) * row_bytes])
        out = rows.to(self._device)[inverse.to(self._device)]
        scale = getattr(self.base_layer, "embed_scale", None)  # Gemma scales its embeddings inside the module
        return out * scale.to(out.dtype) if isinstance(scale, torch.Tensor) else out


@dataclass
class OffloadStats:
    """The plan and what happened since."""

    budget_bytes: int
    full_bytes: int  # the model's weights, all resident
    planned_resident_bytes: int
    peak_resident_bytes: int
    resident_blocks: list[int]
    streamed_blocks: list[int]
    head: str  # resident | streamed | none
    embedding: str  # resident | rows
    slot_bytes: int
    slots: int
    source: str  # memory | disk | file (the model's own safetensors)
    zero_copy: bool  # streamed weights used in place in mapped files (else copied into buffers)
    streamed_per_pass: int = 0  # weight bytes one forward pass reads (every streamed unit once)
    measured_peak_bytes: int = 0  # the largest resident bytes measured at a load (track=True)
    loads: int = 0
    bytes_streamed: int = 0
    wait_s: float = 0.0  # time the compute waited for a load to finish
    peak_ratio: float = field(default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Scheduler:
    """Keeps the model's streamed units in slots, loading ahead of use. Made by :func:`offload`."""

    def __init__(self, model: nn.Module, cfg: OffloadConfig, device: torch.device):
        self.model, self.cfg, self.device = model, cfg, device
        self.units: list[_Unit] = []
        self.order: dict[int, int] = {}  # id(unit) -> position in the cyclic schedule
        self.slots: list[torch.Tensor] = []
        self.slot_owner: list[_Unit | None] = []
        self.pending: dict[int, Future] = {}  # slot -> load in flight
        self.reader = FileReader()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="plmkit-prefetch") if cfg.prefetch else None
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.events: dict[int, Any] = {}
        self.staging: list[torch.Tensor] = []
        self.lock = threading.Lock()
        self.handles: list[Any] = []
        self.replaced: list[tuple[str, nn.Module]] = []  # ("input"|"output", original module)
        self.last = -1
        self.direction = 1
        self.stats: OffloadStats | None = None
        self.tmp: tempfile.TemporaryDirectory | None = None
        self.mapped: MappedFiles | None = None  # zero-copy: weights used in place in mapped files

    # -- slots -------------------------------------------------------------------------------------
    def make_slots(self, nbytes: int, n: int) -> None:
        for _ in range(n):
            self.slot_owner.append(None)
            if self.mapped is not None:  # a slot is then a share of the budget for mapped pages
                continue
            self.slots.append(torch.empty(nbytes, dtype=torch.uint8, device=self.device))
            if self.cuda:
                self.staging.append(torch.empty(nbytes, dtype=torch.uint8, pin_memory=True))

    def _fill(self, unit: _Unit, slot: int) -> None:
        """Copy ``unit``'s bytes into ``slot`` (runs on the prefetch thread or inline)."""
        if self.mapped is not None:
            self.mapped.populate(unit.ranges)
            return
        dst = self.staging[slot] if self.cuda else self.slots[slot]
        for r in unit.refs:
            part = dst[r.start:r.start + r.nbytes]
            if r.host is not None:
                part.copy_(as_bytes(r.host), non_blocking=self.cuda)
            elif r.file is not None and r.file.dtype == r.dtype:
                self.reader.read_into(r.file, part)
            else:  # stored in another dtype: read, then cast into place
                tmp = torch.empty(r.file.shape, dtype=r.file.dtype)  # type: ignore[union-attr]
                self.reader.read_into(r.file, as_bytes(tmp))  # type: ignore[arg-type]
                part.view(r.dtype).view(r.shape).copy_(tmp)
        if self.cuda:
            with torch.cuda.stream(self.stream):
                self.slots[slot].copy_(dst, non_blocking=True)
                ev = torch.cuda.Event()
                ev.record(self.stream)
            self.events[slot] = ev

    def _views(self, unit: _Unit) -> list[torch.Tensor]:
        if self.mapped is not None:
            return [self.mapped.view(r.file) for r in unit.refs]  # type: ignore[arg-type]
        buf = self.slots[unit.slot]  # type: ignore[index]
        return [buf[r.start:r.start + r.nbytes].view(r.dtype).view(r.shape) for r in unit.refs]

    def _bind(self, unit: _Unit, views: list[torch.Tensor] | None) -> None:
        for r, v in zip(unit.refs, views or [None] * len(unit.refs)):
            if r.owner is not None:
                getattr(r.owner, r.attr).data = v if v is not None else _placeholder(r.dtype, r.shape, self.device)

    def _evict(self, slot: int) -> None:
        old = self.slot_owner[slot]
        if old is not None:
            self._bind(old, None)
            old.slot = None
            if self.mapped is not None:
                self.mapped.drop(old.ranges, FAULT_AROUND)
        self.slot_owner[slot] = None
        if self.cuda:  # the slot may still be read by queued kernels: the copy stream waits for them
            self.stream.wait_stream(torch.cuda.current_stream(self.device))

    def _start(self, unit: _Unit, busy: _Unit | None) -> None:
        """Begin loading ``unit`` into the least recently used slot not holding ``busy``."""
        free = [i for i, o in enumerate(self.slot_owner) if o is None]
        choices = free or [i for i, o in enumerate(self.slot_owner) if o is not busy]
        slot = min(choices, key=lambda i: self._lru.get(i, -1))
        if slot in self.pending:
            self.pending.pop(slot).result()
        self._evict(slot)
        unit.slot = slot
        self.slot_owner[slot] = unit
        self.stats.loads += 1  # type: ignore[union-attr]
        self.stats.bytes_streamed += sum(r.nbytes for r in unit.refs)  # type: ignore[union-attr]
        if self.pool is not None:
            self.pending[slot] = self.pool.submit(self._fill, unit, slot)
        else:
            self._fill(unit, slot)

    _lru: dict[int, int]
    _tick = 0

    def acquire(self, unit: _Unit) -> list[torch.Tensor]:
        """``unit``'s tensors, loaded (waiting for a prefetch in flight), then the next unit's load started."""
        # Backward recomputes a block (activation checkpointing) while the block after it may still be
        # finishing its backward: that block's slot must survive, so nothing loads ahead there.
        backward = torch._C._current_graph_task_id() != -1
        if backward and len(self.slot_owner) < 2:
            raise ConfigError("tuning through offloaded blocks needs 2 streaming buffers: raise the budget by one "
                              f"block ({_size(self.stats.slot_bytes)})")  # type: ignore[union-attr]
        if unit.slot is None:
            self._start(unit, None)
        slot = unit.slot
        fut = self.pending.pop(slot, None)  # type: ignore[arg-type]
        if fut is not None:
            t = time.perf_counter()
            fut.result()
            self.stats.wait_s += time.perf_counter() - t  # type: ignore[union-attr]
        if self.cuda and slot in self.events:
            torch.cuda.current_stream(self.device).wait_event(self.events.pop(slot))
        self._tick += 1
        self._lru[slot] = self._tick  # type: ignore[index]
        views = self._views(unit)
        self._bind(unit, views)
        if self.cfg.track:
            self._measure()
        nxt = self._next(unit)
        if nxt is not None and nxt.slot is None and len(self.slot_owner) > 1 and not backward:
            self._start(nxt, unit)
        return views

    def _next(self, unit: _Unit) -> _Unit | None:
        pos = self.order[id(unit)]
        if pos == self.last - 1:
            self.direction = -1
        elif pos != self.last:
            self.direction = 1
        self.last = pos
        if len(self.units) < 2:
            return None
        return self.units[(pos + self.direction) % len(self.units)]

    # -- accounting --------------------------------------------------------------------------------
    def resident_bytes(self) -> int:
        """Bytes of every distinct storage behind the model's parameters, plus the slots, plus the pages of
        mapped files present in this process (measured in /proc/self/smaps)."""
        seen: dict[int, int] = {}
        mapped = self.mapped.storages() if self.mapped is not None else set()
        for t in list(self.model.parameters()) + self.slots:
            if t.device.type == "meta":
                continue
            st = t.untyped_storage()
            if st.data_ptr() in mapped:
                continue
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return sum(seen.values()) + (self.mapped.rss() if self.mapped is not None else 0)

    def _measure(self) -> None:
        now = self.resident_bytes()
        s = self.stats
        s.measured_peak_bytes = max(s.measured_peak_bytes, now)  # type: ignore[union-attr]
        s.peak_resident_bytes = max(s.peak_resident_bytes, now)  # type: ignore[union-attr]
        s.peak_ratio = s.peak_resident_bytes / s.full_bytes  # type: ignore[union-attr]
        if now > s.budget_bytes:  # type: ignore[union-attr]
            raise RuntimeError(f"plmkit offload: {now} resident weight bytes exceed the budget of "
                               f"{s.budget_bytes} (a bug: please report it)")  # type: ignore[union-attr]

    # -- undo --------------------------------------------------------------------------------------
    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        for fut in self.pending.values():
            fut.result()
        self.pending.clear()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        self.reader.close()
        if self.mapped is not None:
            for u in self.units:
                self._bind(u, None)
            self.mapped.close()


# ---------------------------------------------------------------------------------------------- planning


def _unique_params(module: nn.Module) -> list[tuple[nn.Module, str, nn.Parameter]]:
    out, seen = [], set()
    for mod in module.modules():
        for attr, p in mod._parameters.items():
            if p is not None and id(p) not in seen:
                seen.add(id(p))
                out.append((mod, attr, p))
    return out


def _nbytes(p: torch.Tensor) -> int:
    return p.numel() * p.element_size()


def _float_nbytes(owner: nn.Module, attr: str, p: torch.Tensor) -> int:
    """Bytes of ``p`` at float32 if it is a quantized weight (its scales then count as nothing extra)."""
    if p.dtype in (torch.int8, torch.uint8) and attr == "weight":
        return p.numel() * 4
    if attr == "weight_scale" and isinstance(getattr(owner, "weight", None), torch.Tensor) and \
            owner.weight.dtype in (torch.int8, torch.uint8):
        return 0
    return _nbytes(p)


def _plan(sizes: list[int], fixed: int, head: int, emb: int, tied: bool, slot: int, budget: int,
          slots: int) -> tuple[set[int], bool, bool, int]:
    """(resident block indices, head resident, embedding resident, slots used) within ``budget``.

    Every resident byte saves one streamed byte per token (blocks and head alike), so the plan keeps as many
    bytes resident as fit, blocks spread evenly through the stack so that loads overlap resident compute."""
    total = fixed + sum(sizes) + head + (0 if tied else emb)
    if total <= budget:  # sizes: the blocks' raw bytes (a slot adds alignment, a resident block does not)
        return set(range(len(sizes))), True, True, 0
    best: tuple[int, set[int], bool, int] | None = None
    for n_slots in range(slots, 0, -1):  # as many streaming buffers as asked for, fewer only when they do not fit
        for keep_head in (False, True):
            used = fixed + (head + (emb if not tied else 0) if keep_head else 0)
            room = budget - used - n_slots * slot
            if room < 0:
                continue
            k = min(len(sizes), int(room // max(max(sizes), 1)))
            streamed_units = len(sizes) - k + (0 if keep_head else 1)
            if streamed_units == 0:
                continue
            chosen = set(int(i) for i in torch.linspace(0, len(sizes) - 1, k).round().tolist()) if k else set()
            kept = used + sum(sizes[i] for i in chosen)
            if best is None or kept > best[0]:
                best = (kept, chosen, keep_head, min(n_slots, streamed_units))
        if best is not None:
            break
    if best is None:
        need = fixed + slots * slot
        raise ConfigError(f"offload budget of {_size(budget)} is smaller than the weights that must stay resident "
                          f"({_size(fixed)}: norms, position embeddings) plus {slots} streaming buffer(s) of one "
                          f"block ({_size(slot)} each); give at least {_size(need)} (or prefetch=False, one buffer)")
    _, chosen, keep_head, n_slots = best
    return chosen, keep_head, keep_head and tied, n_slots


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 10**5 else f"{n / 1e3:.1f} kB"


def _head_chunks(rows: int, row_bytes: int, slot_bytes: int) -> list[tuple[int, int]]:
    per = max(1, slot_bytes // _aligned(row_bytes))
    return [(a, min(rows, a + per)) for a in range(0, rows, per)]


def offload(model: nn.Module | str, budget: str | int | None = None, *, config: OffloadConfig | None = None,
            source: str | None = None, int8: bool = False, device: str | torch.device | None = None,
            task: str = "auto", **overrides: Any) -> nn.Module:
    """The model (the same object when one is given) running within ``budget`` resident weight bytes.

    ``model``: a loaded model, or an asset name / HF folder, which is then never loaded whole: resident
    weights are read from its safetensors and the rest streamed from them. ``int8``: quantize the blocks'
    linear layers to int8 first (:mod:`plmkit.compress.quant`), so a quarter of the bytes stream; a folder
    written by ``save_quantized`` streams int8 as it is. ``device``: where the model computes (default: its
    own device, CPU for a path)."""
    cfg = config or OffloadConfig()
    changes = {k: v for k, v in dict(budget=budget, source=source, **overrides).items() if v is not None}
    if changes:
        cfg = OffloadConfig.from_dict({**cfg.to_dict(), **changes})
    if hasattr(model, "_plmkit_offload"):
        raise ConfigError("this model is already offloaded; call plmkit.infer.restore(model) first")
    if isinstance(model, nn.Module):
        if int8:
            from ..compress.quant import quantize_int8

            quantize_int8(model)
        dev = torch.device(device) if device is not None else next(model.parameters()).device
        return _offload_module(model, cfg, dev, files=None)
    return _offload_path(str(model), cfg, torch.device(device or "cpu"), task, int8)


def _offload_path(name: str, cfg: OffloadConfig, device: torch.device, task: str, int8: bool) -> nn.Module:
    """Build ``name``'s skeleton with empty weights and stream from its own safetensors."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    from ..assets.models import MODEL_ASSETS, build_from_config, model_path

    folder = Path(model_path(name)) if name in MODEL_ASSETS else Path(name)
    if not folder.is_dir():
        raise ConfigError(f"offload: '{name}' is not an asset name or a local model folder")
    config = AutoConfig.from_pretrained(str(folder))
    index = safetensors_index(checkpoint_files(folder))
    from ..compress.quant import CONFIG_KEY, FORMAT, empty_int8_modules

    quant = getattr(config, CONFIG_KEY, None)
    if quant and quant.get("format") != FORMAT:
        raise ConfigError(f"offload: {folder} holds {quant.get('format')} weights; offload streams float or "
                          "int8 folders (load an int4 folder with plmkit.load_model instead)")
    if int8 and not quant:
        raise ConfigError(f"offload: {folder} holds float weights; write an int8 copy first with "
                          "plmkit.compress.quant.save_quantized (or pass a loaded model with int8=True)")
    with init_empty_weights(include_buffers=False):
        model = build_from_config(config, task)
        if quant:
            empty_int8_modules(model, quant["modules"], quant)
    model.eval()
    if getattr(config.get_text_config(), "tie_word_embeddings", False):
        model.tie_weights()  # the table is stored once; the head shares it
    dtypes = {f.dtype for f in index.values() if f.dtype.is_floating_point}
    float_dtype = next(iter(dtypes)) if len(dtypes) == 1 else torch.float32
    for _, _, p in _unique_params(model):
        if p.is_floating_point():
            p.data = p.data.to(float_dtype)
    return _offload_module(model, cfg, device, files=index)


def _file_key(names: list[str], files: dict[str, FileTensor]) -> FileTensor:
    for key in names:
        if key in files:
            return files[key]
    raise ConfigError(f"offload: weight '{names[0]}' is not in the checkpoint's safetensors files")


def _offload_module(model: nn.Module, cfg: OffloadConfig, device: torch.device,
                    files: dict[str, FileTensor] | None) -> nn.Module:
    holders = _holders(model)

    def names(p: torch.Tensor) -> list[str]:
        return [n for _, _, n in holders[id(p)]]

    blocks = [layer.block for layer in arch.layers(model)]
    # With adapters (some weights frozen), the trainable ones stay resident: only frozen weights stream.
    adapters = any(not p.requires_grad for p in model.parameters())
    block_params = [[(m, a, p) for m, a, p in _unique_params(b) if not (adapters and p.requires_grad)]
                    for b in blocks]
    in_block = {id(p) for ps in block_params for _, _, p in ps}
    emb_mod = model.get_input_embeddings()
    head_mod = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    emb_w = emb_mod.weight
    head_w = getattr(head_mod, "weight", None)
    tied = head_w is emb_w
    sizes = [sum(_nbytes(p) for _, _, p in ps) for ps in block_params]
    head_bytes = _nbytes(head_w) if head_w is not None else 0
    emb_bytes = _nbytes(emb_w)
    big = {id(emb_w)} | ({id(head_w)} if head_w is not None else set())
    others = [p for _, _, p in _unique_params(model) if id(p) not in in_block and id(p) not in big]
    fixed = sum(_nbytes(p) for p in others)
    # Shares of the budget are of the model's float weights: an int8 weight counts at the float size it stands
    # for, so that "25%" means the same bytes for a quantized model and its float original.
    full = (fixed + sum(_float_nbytes(m, a, p) for ps in block_params for m, a, p in ps) + emb_bytes
            + (0 if tied else head_bytes))
    budget = parse_budget(cfg.budget, full)
    sched = Scheduler(model, cfg, device)
    sched._lru = {}
    sched.tied = tied
    source = "file" if files is not None else cfg.source
    if files is None and cfg.source == "disk" and budget < full:  # the store holds every weight that may stream
        files = _write_store(sched, cfg, names, block_params, emb_w, None if tied else head_w)
    mapped = cfg.zero_copy and device.type == "cpu" and files is not None
    if mapped:
        spans = [page_ranges(_file_key(names(p), files) for _, _, p in ps) for ps in block_params]
        costs = [sum(hi - lo for _, lo, hi in r) + len(r) * 2 * FAULT_AROUND for r in spans]
        mapped = max(costs, default=0) >= 16 * FAULT_AROUND  # tiny blocks: copying is cheaper than mapping
    if mapped:
        sched.mapped = MappedFiles()
        slack = 2 * (FAULT_AROUND + PAGE)  # pages the kernel may map around a range
        slot_bytes = max(costs, default=0)
    else:
        slack = 0
        slot_bytes = max((sum(_aligned(_nbytes(p)) for _, _, p in ps) for ps in block_params), default=0)
    keep, head_res, emb_res, n_slots = _plan(sizes, fixed, head_bytes, emb_bytes, tied, slot_bytes, budget,
                                             cfg.slots if cfg.prefetch else 1)

    def host_of(p: torch.Tensor) -> torch.Tensor:
        t = p.detach()
        return t.pin_memory() if device.type == "cuda" and t.device.type == "cpu" else t.cpu()

    def ref(owner: nn.Module | None, attr: str, p: torch.Tensor, start: int,
            rows: tuple[int, int] | None = None) -> _Ref:
        shape = tuple(p.shape) if rows is None else (rows[1] - rows[0],) + tuple(p.shape[1:])
        nbytes = math.prod(shape) * p.element_size()
        host = fil = None
        if files is not None:
            fil = _file_key(names(p), files)
            if rows is not None:
                row = fil.nbytes // fil.shape[0]
                fil = FileTensor(fil.path, fil.offset + rows[0] * row, (rows[1] - rows[0]) * row, fil.dtype, shape)
        else:
            host = host_of(p) if rows is None else host_of(p)[rows[0]:rows[1]]
        return _Ref(start, nbytes, p.dtype, shape, owner, attr, host, fil, p.requires_grad)

    def placeholder(p: torch.Tensor) -> nn.Parameter:
        return nn.Parameter(_placeholder(p.dtype, tuple(p.shape), device), requires_grad=False)

    # Resident weights: read from the files (path mode) or moved to the device.
    for i, ps in enumerate(block_params):
        if i in keep:
            for _, _, p in ps:
                _materialise(p, holders, files, device)
    for p in others:
        _materialise(p, holders, files, device)
    # Streamed blocks: refs into a slot layout; their parameters become placeholders until loaded.
    for i, ps in enumerate(block_params):
        if i in keep:
            continue
        refs, start = [], 0
        for mod, attr, p in ps:
            refs.append(ref(mod, attr, p, start))
            start += _aligned(_nbytes(p))
            mod._parameters[attr] = placeholder(p)
        unit = _Unit(f"block {i}", refs, start)
        if mapped:
            unit.ranges = page_ranges(r.file for r in refs)  # type: ignore[misc]
        sched.units.append(unit)
        _stream_forward(blocks[i], unit, sched)
    # Output head: resident, or streamed in chunks of rows through the slots.
    head_state, emb_state = "none", "resident"
    emb_host = host_of(emb_w) if files is None else None
    emb_file = _file_key(names(emb_w), files) if files is not None else None
    if head_w is not None:
        if head_res:
            _materialise(head_w, holders, files, device)
            head_state = "resident"
        else:
            row_bytes = _nbytes(head_w[0])
            chunks = [_Unit(f"head rows {a}:{b}", [ref(None, "", head_w, 0, (a, b))], _aligned((b - a) * row_bytes))
                      for a, b in _head_chunks(head_w.shape[0], row_bytes, slot_bytes - slack)]
            for u in chunks if mapped else ():
                u.ranges = page_ranges(r.file for r in u.refs)  # type: ignore[misc]
            sched.units.extend(chunks)
            bias = getattr(head_mod, "bias", None)
            bias = bias.detach().to(device) if bias is not None else None
            head_mod.weight = placeholder(head_w)
            sched.replaced.append(("output", head_mod))
            model.set_output_embeddings(ChunkedHead(head_mod, sched, chunks, bias))
            head_state = "streamed"
    # Input embedding: resident when the plan keeps it, else read row by row.
    if emb_res and not (tied and head_res):
        _materialise(emb_w, holders, files, device)
    elif not emb_res:
        emb_mod.weight = placeholder(emb_w)
        if tied and head_state == "streamed":
            head_mod.weight = emb_mod.weight
        sched.replaced.append(("input", emb_mod))
        model.set_input_embeddings(RowEmbedding(emb_mod, emb_host, emb_file, sched.reader, device))
        emb_state = "rows"
    for pos, u in enumerate(sched.units):
        sched.order[id(u)] = pos
    sched.make_slots(slot_bytes, n_slots if sched.units else 0)
    sched.stats = OffloadStats(budget, full, 0, 0, sorted(keep), [i for i in range(len(blocks)) if i not in keep],
                               head_state, emb_state, slot_bytes, len(sched.slot_owner), source, bool(mapped),
                               sum(r.nbytes for u in sched.units for r in u.refs) if len(sched.units) > n_slots else 0)
    left = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if left:
        raise ConfigError(f"offload: weights {left[:3]} were not found in the checkpoint")
    now = sched.resident_bytes()  # mapped pages are measured; their share of the budget is reserved here
    planned = now + (len(sched.slot_owner) * slot_bytes if mapped else 0)
    sched.stats.planned_resident_bytes = sched.stats.peak_resident_bytes = planned
    sched.stats.peak_ratio = planned / full
    if planned > budget:
        raise RuntimeError(f"plmkit offload: the plan holds {planned} resident bytes, over the budget {budget} (a bug)")
    model._plmkit_offload = sched  # type: ignore[assignment]
    return model


def _stream_forward(block: nn.Module, unit: _Unit, sched: Scheduler) -> None:
    """Make ``block`` load its weights before computing. With autograd on, the block is checkpointed here
    (activations recomputed in backward), so that its weights are loaded again when backward needs them
    instead of being kept resident between the two passes."""
    from torch.utils.checkpoint import checkpoint

    forward = block.forward

    def run(*args: Any, **kwargs: Any) -> Any:
        sched.acquire(unit)
        return forward(*args, **kwargs)

    def streamed(*args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            return checkpoint(run, *args, use_reentrant=False, **kwargs)
        return run(*args, **kwargs)

    block.forward = streamed  # an instance attribute: restore() deletes it
    sched.handles.append(_Undo(lambda: block.__dict__.pop("forward", None)))


class _Undo:
    def __init__(self, fn: Callable[[], Any]):
        self.remove = fn


def _holders(model: nn.Module) -> dict[int, list[tuple[nn.Module, str, str]]]:
    """id(parameter) -> every (module, attribute, full name) holding it (tied weights have several)."""
    out: dict[int, list[tuple[nn.Module, str, str]]] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for attr, p in mod._parameters.items():
            if p is not None:
                out.setdefault(id(p), []).append((mod, attr, f"{mname}.{attr}" if mname else attr))
    return out


def _materialise(p: nn.Parameter, holders: dict[int, list[tuple[nn.Module, str, str]]],
                 files: dict[str, FileTensor] | None, device: torch.device) -> None:
    """Make ``p`` a real tensor on ``device``: read from ``files`` when it is still empty (path mode)."""
    if files is not None and p.device.type == "meta":
        f = _file_key([n for _, _, n in holders[id(p)]], files)
        t = torch.empty(f.shape, dtype=f.dtype)
        reader = FileReader()
        reader.read_into(f, as_bytes(t))
        reader.close()
        data = t.to(device=device, dtype=p.dtype)
        new = nn.Parameter(data, requires_grad=p.requires_grad and data.is_floating_point())
        for mod, attr, _ in holders[id(p)]:
            mod._parameters[attr] = new
        holders[id(new)] = holders[id(p)]
    elif p.device != device:
        p.data = p.data.to(device)


def _write_store(sched: Scheduler, cfg: OffloadConfig, names: Callable[[torch.Tensor], list[str]],
                 block_params: list[list[tuple[nn.Module, str, nn.Parameter]]], emb: torch.Tensor,
                 head: torch.Tensor | None) -> dict[str, FileTensor]:
    """Write the weights that may stream (blocks, embedding, head) to a safetensors store: the ``disk`` source
    of an in-memory model."""
    from safetensors.torch import save_file

    if cfg.store_dir:
        folder = Path(cfg.store_dir)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        sched.tmp = tempfile.TemporaryDirectory(prefix="plmkit-offload-")
        folder = Path(sched.tmp.name)
    tensors: dict[str, torch.Tensor] = {}
    for ps in block_params:
        for _, _, p in ps:
            tensors[names(p)[0]] = p.detach().cpu().contiguous()
    for p in (emb, head):
        if p is not None:
            tensors[names(p)[0]] = p.detach().cpu().contiguous()
    path, tmp = folder / "offload.safetensors", folder / "offload.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(path)
    return safetensors_index([path])


# ---------------------------------------------------------------------------------------------- public helpers


def scheduler(model: nn.Module) -> Scheduler:
    s = getattr(model, "_plmkit_offload", None)
    if s is None:
        raise ConfigError("this model is not offloaded (plmkit.infer.offload(model, budget) first)")
    return s


def offload_stats(model: nn.Module) -> OffloadStats:
    """The plan and counters of an offloaded model (budget, peak resident bytes, loads, bytes streamed)."""
    return scheduler(model).stats  # type: ignore[return-value]


def _read(r: _Ref, reader: FileReader) -> torch.Tensor:
    t = torch.empty(r.shape, dtype=r.dtype)
    if r.host is not None:
        t.copy_(r.host)
    elif r.file.dtype == r.dtype:  # type: ignore[union-attr]
        reader.read_into(r.file, as_bytes(t))  # type: ignore[arg-type]
    else:
        raw = torch.empty(r.file.shape, dtype=r.file.dtype)  # type: ignore[union-attr]
        reader.read_into(r.file, as_bytes(raw))  # type: ignore[arg-type]
        t.copy_(raw)
    return t


def restore(model: nn.Module) -> nn.Module:
    """Undo :func:`offload`: every weight resident again on the model's device, hooks and wrappers removed."""
    s = scheduler(model)
    s.close()
    for u in s.units:
        for r in u.refs:
            if r.owner is not None:
                r.owner._parameters[r.attr] = nn.Parameter(_read(r, s.reader).to(s.device), r.requires_grad)
    head = emb = None
    for kind, original in s.replaced:
        if kind == "output":
            chunks = [u.refs[0] for u in s.units if u.refs[0].owner is None]
            head = torch.cat([_read(r, s.reader) for r in chunks]).to(s.device)
            model.set_output_embeddings(original)
        else:
            rows: RowEmbedding = model.get_input_embeddings()  # type: ignore[assignment]
            if rows._host is not None:
                emb = rows._host.to(s.device)
            else:
                f = rows._file
                full = _Ref(0, f.nbytes, f.dtype, f.shape, file=f)  # type: ignore[union-attr]
                emb = _read(full, s.reader).to(s.device)
            model.set_input_embeddings(original)
    if emb is not None:
        model.get_input_embeddings().weight = nn.Parameter(emb, requires_grad=False)
    if head is not None:
        out = model.get_output_embeddings()
        if emb is not None and out.weight is not None and out.weight.shape == emb.shape and s.tied:
            out.weight = model.get_input_embeddings().weight
        else:
            out.weight = nn.Parameter(head, requires_grad=False)
    s.reader.close()
    s.slots.clear()
    s.staging.clear()
    del model._plmkit_offload
    if s.tmp is not None:
        s.tmp.cleanup()
    return model


__all__ = ["OffloadConfig", "OffloadStats", "Scheduler", "offload", "offload_stats", "parse_budget", "restore",
           "scheduler"]

