"""One small training loop on accelerate, reused by every method that trains.

The same code runs on this CPU and, unchanged, under ``torchrun`` or ``accelerate launch`` on several
processes (CPU with gloo, GPUs with NCCL): accelerate shards the batches and all-reduces the gradients;
the learning-rate schedule steps once per optimizer step whatever the process count; files are written
by the main process only. See docs/foundation.md ("Training") for the launch commands.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader

from .._io import write_json, write_text
from ..device import is_wrapped, unwrap_model  # noqa: F401  (re-exported)
from ..errors import ConfigError

LossFn = Callable[..., torch.Tensor]  # loss_fn(model, batch) or loss_fn(model, batch, step=k)
EvalFn = Callable[[torch.nn.Module], dict[str, float]]
CounterFn = Callable[[Any, int], dict[str, float]]  # counters(batch, step) -> amounts this micro-batch adds


def causal_lm_collate(tokenizer) -> Callable[[list[dict]], dict]:
    """Pad ``{"input_ids": [...]}`` records; labels are the ids with padding ignored (-100)."""
    def collate(batch: list[dict]) -> dict:
        out = tokenizer.pad(batch, return_tensors="pt")
        out["labels"] = out["input_ids"].masked_fill(out["attention_mask"] == 0, -100)
        return out

    return collate


@dataclass
class TrainConfig:
    out_dir: str
    max_steps: int = 100
    batch_size: int = 16  # per device
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    eval_every: int | None = None
    save_every: int | None = None
    keep_checkpoints: int = 2  # 0 keeps every checkpoint (for analyses along a run)
    log_every: int = 10
    seed: int = 0
    mixed_precision: str = "no"  # no | fp16 | bf16 | auto (bf16 where plmkit.device.bf16_is_fast(), else no)
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("max_steps, batch_size and grad_accum must be >= 1")
        if self.mixed_precision not in ("no", "fp16", "bf16", "auto"):
            raise ConfigError("mixed_precision must be 'no', 'fp16', 'bf16' or 'auto'")


@dataclass(frozen=True)
class TuneConfig:
    """A short fine-tune of a method (prompt-based fine-tuning, DPT, span heads ...): ``steps`` optimizer steps
    with a 10% linear warm-up, no checkpoints kept, not resumed."""

    steps: int = 30
    batch_size: int = 8
    lr: float = 1e-5
    max_length: int = 128
    mixed_precision: str = "auto"
    progress: bool = False

    def train_config(self, out_dir: str | os.PathLike, seed: int = 0) -> "TrainConfig":
        return TrainConfig(out_dir=str(out_dir), max_steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                           warmup_steps=max(1, self.steps // 10), resume=False, seed=seed,
                           mixed_precision=self.mixed_precision, progress=self.progress)


@dataclass
class TrainResult:
    step: int
    losses: list[float] = field(default_factory=list)  # mean loss per logged window
    evals: list[dict[str, float]] = field(default_factory=list)
    out_dir: str = ""
    resumed_from: int = 0
    lrs: list[float] = field(default_factory=list)  # learning rate (first param group) used at each optimizer step
    mixed_precision: str = "no"  # the precision trained in ("auto" resolved)
    totals: dict[str, float] = field(default_factory=dict)  # the counters summed over steps and processes, seconds


def _checkpoints(out: Path) -> list[tuple[int, Path]]:
    found = []
    for p in (out / "checkpoints").glob("step-*"):
        m = re.fullmatch(r"step-(\d+)", p.name)
        if m and (p / "DONE").exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def train(
    model: torch.nn.Module,
    data: Sequence[Any],
    config: TrainConfig,
    loss_fn: LossFn | None = None,
    *,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    eval_fn: EvalFn | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    counters: CounterFn | None = None,
) -> TrainResult:
    """Train ``model`` for ``config.max_steps`` optimizer steps over ``data`` (reshuffled every epoch).

    ``loss_fn(model, batch)`` returns the loss; by default ``model(**batch).loss``. It receives the
    prepared model (a DDP wrapper when several processes train: call its forward, read attributes
    through :func:`unwrap_model`) and runs under the mixed-precision autocast. Only parameters with
    ``requires_grad`` are optimised. With N processes each takes ``batch_size`` samples per micro-batch
    (N * batch_size * grad_accum per optimizer step); the linear warm-up/decay schedule advances once
    per optimizer step. ``eval_fn(model)`` gets the unwrapped model on every process, under the same
    autocast. Checkpoints land in ``out_dir/checkpoints/step-N`` and a rerun with ``resume=True``
    continues from the newest complete one, reproducing the same batches and schedule. On return the
    model is the user's own module again: unwrapped, its forward no longer autocast, in eval mode.

    A ``loss_fn`` with a ``step`` parameter also gets the number of optimizer steps done so far (for
    schedules inside a loss, such as a distillation weight). ``counters(batch, step)`` returns amounts a
    micro-batch adds (tokens, FLOPs ...); they are summed over processes and steps into ``result.totals``
    with the training seconds, kept across a resume, and written with the loss and LR at every log step and
    with every evaluation to ``out_dir/metrics.jsonl`` (one JSON line per such step).
    """
    from accelerate import Accelerator, PartialState
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    cpu = _cpu_only_distributed()
    precision = _resolve_precision(config.mixed_precision, PartialState(cpu=cpu))
    _allow_new_mixed_precision(precision)
    acc = Accelerator(cpu=cpu, gradient_accumulation_steps=config.grad_accum, mixed_precision=precision)
    set_seed(config.seed)
    loss_fn = loss_fn or (lambda m, b: m(**b).loss)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters (all have requires_grad=False)")
    optimizer = optimizer or torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    # Not prepared: accelerate's scheduler wrapper steps num_processes times per optimizer step.
    scheduler = get_linear_schedule_with_warmup(optimizer, config.warmup_steps, config.max_steps)
    acc.register_for_checkpointing(scheduler)
    user_model, own_forward = model, model.__dict__.get("forward")
    try:
        wrapped, optimizer = acc.prepare(model, optimizer)
        result = _loop(acc, wrapped, user_model, optimizer, scheduler, params, data, config, _with_step(loss_fn),
                       collate_fn, eval_fn, counters)
        result.mixed_precision = precision
        acc.wait_for_everyone()
        return result
    finally:
        _release(acc, user_model, own_forward)


def _loop(acc: Any, model: torch.nn.Module, user_model: torch.nn.Module, optimizer: Any, scheduler: Any,
          params: list[torch.nn.Parameter], data: Sequence[Any], config: TrainConfig, loss_fn: LossFn,
          collate_fn: Callable | None, eval_fn: EvalFn | None, counters: CounterFn | None) -> TrainResult:
    import time

    from tqdm.auto import tqdm

    out = Path(config.out_dir)
    result = TrainResult(step=0, out_dir=str(out))
    ckpts = _checkpoints(out) if config.resume else []
    if ckpts:
        result.step, path = ckpts[-1]
        if not (path / "custom_checkpoint_0.pkl").exists():
            raise ConfigError(f"{path} was saved by an older plmkit without the LR scheduler's state: "
                              "rerun with resume=False or another out_dir")
        acc.load_state(str(path))  # model, optimizer, RNG states and the registered scheduler
        state = json.loads((path / "trainer_state.json").read_text())
        result.losses, result.evals, result.resumed_from = state["losses"], state["evals"], result.step
        result.lrs, result.totals = state.get("lrs", []), state.get("totals", {})
    if acc.is_main_process:
        write_json(out / "train_config.json", asdict(config))
        _truncate_metrics(out / "metrics.jsonl", result.step)  # lines a crashed run wrote after its last checkpoint

    def loader(epoch: int) -> DataLoader:
        g = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        return acc.prepare_data_loader(
            DataLoader(data, batch_size=config.batch_size, shuffle=True, generator=g, collate_fn=collate_fn,
                       drop_last=len(data) >= config.batch_size * acc.num_processes))

    batches_per_epoch = len(loader(0))
    if batches_per_epoch == 0:
        raise ConfigError("no training data")
    micro = result.step * config.grad_accum  # micro-batches already consumed
    epoch = micro // batches_per_epoch
    dl = acc.skip_first_batches(loader(epoch), micro % batches_per_epoch)
    it = iter(dl)
    bar = tqdm(total=config.max_steps, initial=result.step, desc="train", disable=not (config.progress and
                                                                                         acc.is_local_main_process))
    window: list[float] = []
    pending: dict[str, float] = {}  # counters of this optimizer step's micro-batches, on this process
    lr = 0.0
    started, seconds_before = time.perf_counter(), result.totals.get("seconds", 0.0)
    model.train()
    while result.step < config.max_steps:
        try:
            batch = next(it)
        except StopIteration:
            epoch += 1
            it = iter(loader(epoch))
            continue
        if counters:
            for k, v in counters(batch, result.step).items():
                pending[k] = pending.get(k, 0.0) + float(v)
        with acc.accumulate(model):
            with acc.autocast():  # also covers loss paths that call submodules directly (eval.lm.lm_loss)
                loss = loss_fn(model, batch, result.step)
            acc.backward(loss)
            if acc.sync_gradients:
                if config.max_grad_norm:
                    acc.clip_grad_norm_(params, config.max_grad_norm)
                lr = optimizer.param_groups[0]["lr"]
            optimizer.step()  # a no-op until the last micro-batch of an accumulation
            if acc.sync_gradients and not acc.optimizer_step_was_skipped:
                scheduler.step()
            optimizer.zero_grad()
        window.append(acc.gather(loss.detach().float().reshape(1)).mean().item())
        if not acc.sync_gradients:
            continue
        result.step += 1
        result.lrs.append(lr)
        bar.update(1)
        if counters:
            _add_counts(acc, result.totals, pending)
            pending = {}
        result.totals["seconds"] = round(seconds_before + time.perf_counter() - started, 3)
        line: dict[str, Any] = {}
        if result.step % config.log_every == 0 or result.step == config.max_steps:
            result.losses.append(sum(window) / len(window))
            bar.set_postfix(loss=f"{result.losses[-1]:.4f}")
            window = []
            line.update(loss=result.losses[-1], lr=lr)
        if eval_fn and config.eval_every and (result.step % config.eval_every == 0 or result.step == config.max_steps):
            model.eval()
            with torch.no_grad(), acc.autocast():
                metrics = {"step": result.step, **eval_fn(user_model), **result.totals}
            model.train()
            result.evals.append(metrics)
            line.update(metrics)
        if line and acc.is_main_process:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": result.step, **line, **result.totals}) + "\n")
        if config.save_every and (result.step % config.save_every == 0 or result.step == config.max_steps):
            _save(acc, out, result, config.keep_checkpoints)
    bar.close()
    return result


def _with_step(loss_fn: LossFn) -> Callable[[torch.nn.Module, Any, int], torch.Tensor]:
    """``loss_fn`` called as ``(model, batch, step)``; the step is passed only to a loss that names it."""
    import inspect

    try:
        takes_step = "step" in inspect.signature(loss_fn).parameters
    except (TypeError, ValueError):  # a builtin or C callable
        takes_step = False
    return (lambda m, b, k: loss_fn(m, b, step=k)) if takes_step else (lambda m, b, k: loss_fn(m, b))


def _add_counts(acc: Any, totals: dict[str, float], counts: dict[str, float]) -> None:
    """Add one optimizer step's counters, summed over processes, to ``totals`` (every process keeps the same)."""
    if not counts:
        return
    keys = sorted(counts)
    values = torch.tensor([counts[k] for k in keys], dtype=torch.float64, device=acc.device)
    if acc.num_processes > 1:
        values = acc.reduce(values, reduction="sum")
    for k, v in zip(keys, values.tolist()):
        totals[k] = totals.get(k, 0.0) + v


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the lines of ``metrics.jsonl`` up to ``step`` (a resumed run writes the later ones again)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
    write_text(path, "".join(ln + "\n" for ln in lines))


def _cpu_only_distributed() -> bool:
    """Launched on several processes (torchrun) on a machine without an accelerator. accelerate then needs
    ``cpu=True`` to set up gloo; without it every process would silently train alone on all the data."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()


def _resolve_precision(mixed_precision: str, state: Any) -> str:
    """``auto``: bf16 where plmkit.device says it is fast on this process's device, else no; all processes
    take the main process's answer (the CPU check times a matmul, which could differ between processes)."""
    if mixed_precision != "auto":
        return mixed_precision
    from accelerate.utils import broadcast_object_list

    from ..device import mixed_precision as fast_precision

    choice = [fast_precision(state.device)]
    if state.num_processes > 1:
        broadcast_object_list(choice)
    return choice[0]


def _release(acc: Any, model: torch.nn.Module, own_forward: Any) -> None:
    """Give the user's module back as it came: accelerate's autocast-patched forward removed (else every
    later forward, evaluation included, would run in bf16/fp16), wrappers and accelerate's references dropped."""
    acc.unwrap_model(model, keep_fp32_wrapper=False)
    if own_forward is None:
        model.__dict__.pop("forward", None)
    else:
        model.forward = own_forward
    model.__dict__.pop("_original_forward", None)
    model.eval()
    acc.free_memory()


def _allow_new_mixed_precision(mixed_precision: str) -> None:
    """accelerate keeps one process-wide state and refuses a second Accelerator with another
    mixed-precision setting; a process that trains twice (an LM head in fp32, then a model in bf16)
    needs it reset. Only the precision part is reset: the distributed (partial) state is kept."""
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def _save(acc: Any, out: Path, result: TrainResult, keep: int) -> None:
    """Save accelerate state (model weights as safetensors) plus our own state; DONE marks completeness."""
    path = out / "checkpoints" / f"step-{result.step}"
    acc.save_state(str(path), safe_serialization=True)
    if acc.is_main_process:
        write_json(path / "trainer_state.json", {"step": result.step, "losses": result.losses, "evals": result.evals,
                                                 "lrs": result.lrs, "totals": result.totals})
        (path / "DONE").touch()
        for _, old in _checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()

