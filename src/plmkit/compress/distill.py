"""Knowledge distillation from the uncompressed model, through :func:`plmkit.train.train`.

The loss is a weighted sum of: the KL divergence between temperature-softened teacher and student output
distributions (× τ², on non-padding positions), the MSE between hidden states of named module pairs (a
learned linear projection maps the student's width to the teacher's where they differ), the student's own
task loss (``labels`` in the batch), and, when L0 gates are attached (:mod:`plmkit.compress.prune`), their
Lagrangian. Magnitude masks passed in are enforced after every optimizer step. The teacher is frozen, in
eval mode and run under ``no_grad``; it must share the student's vocabulary (output width).

    result = distill(student, teacher, records, TrainConfig(out_dir="runs/kd", max_steps=200),
                     DistillConfig(temperature=2.0, hidden_pairs=block_pairs(student, teacher)),
                     collate_fn=causal_lm_collate(tok))
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .. import arch
from ..config import JsonConfig
from ..device import unwrap_model
from ..errors import ConfigError
from ..train import TrainConfig, TrainResult, train
from .prune import L0Gates, enforce_masks

_NOT_INPUTS = ("labels",)


@dataclass
class DistillConfig(JsonConfig):
    """Loss weights and settings. ``hidden_pairs``: (student module, teacher module) names whose outputs are
    matched by MSE (see :func:`block_pairs`). ``lm_weight``: the student's own loss from ``labels``."""

    temperature: float = 2.0
    kd_weight: float = 1.0
    hidden_weight: float = 0.0
    hidden_pairs: tuple[tuple[str, str], ...] = ()
    lm_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"DistillConfig temperature={self.temperature}: must be > 0")
        if min(self.kd_weight, self.hidden_weight, self.lm_weight) < 0:
            raise ConfigError("DistillConfig weights must be >= 0")
        self.hidden_pairs = tuple(tuple(p) for p in self.hidden_pairs)  # type: ignore[misc]
        if any(len(p) != 2 for p in self.hidden_pairs):
            raise ConfigError("DistillConfig hidden_pairs: give [student_module, teacher_module] pairs")
        if self.hidden_weight > 0 and not self.hidden_pairs:
            raise ConfigError("DistillConfig hidden_weight > 0 needs hidden_pairs (see compress.distill.block_pairs)")


def block_pairs(student: nn.Module, teacher: nn.Module) -> tuple[tuple[str, str], ...]:
    """Pair each student block with the teacher block at the same relative depth (the last with the last)."""
    s, t = arch.layers(student), arch.layers(teacher)
    if not s or not t:
        raise ConfigError("block_pairs: a model has no blocks plmkit.arch knows")
    n, m = len(s), len(t)
    return tuple((s[i].prefix, t[round((i + 1) * m / n) - 1].prefix) for i in range(n))


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """``τ² · KL(softmax(t/τ) || softmax(s/τ))`` summed over classes, averaged over (unmasked) positions."""
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ConfigError(f"distillation: the student has {student_logits.shape[-1]} outputs and the teacher "
                          f"{teacher_logits.shape[-1]}; they must share the vocabulary / label set")
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits.float() / t, -1), F.log_softmax(teacher_logits.float() / t, -1),
                  log_target=True, reduction="none").sum(-1)
    return masked_mean(kl, mask) * t * t


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over positions (B, T) where ``mask`` is 1; anything else (per-sequence values, no mask) plainly."""
    if mask is None or values.dim() != 2 or mask.shape != values.shape:
        return values.mean()
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1)


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@contextmanager
def _outputs(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of each named module while inside."""
    got: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in names:
            try:
                mod = model.get_submodule(name)
            except AttributeError:
                raise ConfigError(f"distillation: no module '{name}' in {type(model).__name__}") from None
            handles.append(mod.register_forward_hook(lambda m, a, o, name=name: got.__setitem__(name, _first(o))))
        yield got
    finally:
        for h in handles:
            h.remove()


class Trainee(nn.Module):
    """What the optimizer trains: the student, its gates (if any) and the hidden-state projections."""

    def __init__(self, student: nn.Module, gates: L0Gates | None, projections: nn.ModuleDict):
        super().__init__()
        self.student, self.gates, self.projections = student, gates, projections

    def forward(self, **inputs: Any) -> Any:
        return self.student(**inputs)


def _projections(student: nn.Module, teacher: nn.Module, cfg: DistillConfig, batch: dict) -> nn.ModuleDict:
    """A learned Linear for each hidden pair whose widths differ (measured on one batch)."""
    if not cfg.hidden_pairs:
        return nn.ModuleDict()
    s_names, t_names = [p[0] for p in cfg.hidden_pairs], [p[1] for p in cfg.hidden_pairs]
    inputs = _device_inputs(student, batch)
    with torch.no_grad(), _outputs(student, s_names) as s, _outputs(teacher, t_names) as t:
        student(**inputs)
        teacher(**_device_inputs(teacher, batch))
    dev = next(student.parameters()).device
    return nn.ModuleDict({_key(a): nn.Linear(s[a].shape[-1], t[b].shape[-1], device=dev)
                          for a, b in cfg.hidden_pairs if s[a].shape[-1] != t[b].shape[-1]})


def _key(name: str) -> str:
    return name.replace(".", "__")


def _device_inputs(model: nn.Module, batch: dict) -> dict:
    dev = next(model.parameters()).device
    return {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items() if k not in _NOT_INPUTS}


def distillation_loss(teacher: nn.Module, cfg: DistillConfig) -> Callable[[nn.Module, dict], torch.Tensor]:
    """The loss function :func:`plmkit.train.train` calls with the (prepared) :class:`Trainee` and a batch."""
    s_names, t_names = [p[0] for p in cfg.hidden_pairs], [p[1] for p in cfg.hidden_pairs]

    def loss_fn(model: nn.Module, batch: dict) -> torch.Tensor:
        trainee: Trainee = unwrap_model(model)
        inputs = {k: v for k, v in batch.items() if k not in _NOT_INPUTS}
        with torch.no_grad(), _outputs(teacher, t_names) as t_hidden:
            t_out = teacher(**_device_inputs(teacher, batch))
        with _outputs(trainee.student, s_names) as s_hidden:
            s_out = model(**inputs, **({"labels": batch["labels"]} if cfg.lm_weight and "labels" in batch else {}))
        mask = inputs.get("attention_mask")
        logits = s_out.logits
        loss = torch.zeros((), device=logits.device)
        if cfg.kd_weight:
            loss = loss + cfg.kd_weight * kd_loss(logits, t_out.logits.to(logits.device), cfg.temperature, mask)
        for a, b in cfg.hidden_pairs if cfg.hidden_weight else ():
            h = s_hidden[a]
            key = _key(a)
            if key in trainee.projections:
                h = trainee.projections[key](h)
            mse = F.mse_loss(h.float(), t_hidden[b].float().to(h.device), reduction="none").mean(-1)
            loss = loss + cfg.hidden_weight * masked_mean(mse, mask) / len(cfg.hidden_pairs)
        if cfg.lm_weight and getattr(s_out, "loss", None) is not None:
            loss = loss + cfg.lm_weight * s_out.loss
        if trainee.gates is not None:
            loss = loss + trainee.gates.lagrangian()
        return loss

    return loss_fn


def distill(student: nn.Module, teacher: nn.Module, data: Sequence[Any], train_config: TrainConfig,
            config: DistillConfig | None = None, *, gates: L0Gates | None = None,
            masks: dict[str, torch.Tensor] | None = None, collate_fn: Callable[[list[Any]], Any] | None = None,
            eval_fn: Callable[[nn.Module], dict[str, float]] | None = None) -> TrainResult:
    """Train ``student`` towards ``teacher`` on ``data`` (records that ``collate_fn`` batches); see the module
    docstring. ``gates``: L0 gates attached to the student (trained with their own learning rate, the
    Lagrangian added to the loss). ``masks``: magnitude masks held after every optimizer step. ``eval_fn``
    receives the student. Resumable like every :func:`plmkit.train.train` run."""
    cfg = config or DistillConfig()
    if teacher is student:
        raise ConfigError("distill: the teacher must be a separate (uncompressed) copy of the model")
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    probe = collate_fn(list(data[: min(2, len(data))])) if collate_fn else data[0]
    trainee = Trainee(student, gates, _projections(student, teacher, cfg, probe))
    groups = [{"params": [p for p in student.parameters() if p.requires_grad], "lr": train_config.lr,
               "weight_decay": train_config.weight_decay}]
    if len(trainee.projections):
        groups.append({"params": list(trainee.projections.parameters()), "lr": train_config.lr})
    if gates is not None:
        gates.steps_total = train_config.max_steps * train_config.grad_accum
        lr = gates.config.lr
        groups += [{"params": list(gates.log_alpha), "lr": lr, "weight_decay": 0.0},
                   {"params": [gates.lambdas], "lr": lr, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups)
    handle = enforce_masks(optimizer, student, masks) if masks else None
    student_eval = (lambda m: eval_fn(unwrap_model(m).student)) if eval_fn else None
    try:
        return train(trainee, data, train_config, distillation_loss(teacher, cfg), collate_fn=collate_fn,
                     eval_fn=student_eval, optimizer=optimizer)
    finally:
        if handle is not None:
            handle.remove()


__all__ = ["DistillConfig", "Trainee", "block_pairs", "distill", "distillation_loss", "kd_loss", "masked_mean"]
