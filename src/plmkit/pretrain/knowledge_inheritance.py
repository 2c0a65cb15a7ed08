"""Knowledge Inheritance: pretrain a larger student with a smaller, already trained teacher's help.

The student's loss is ``(1 − α_t)·L_LM + α_t·L_KD``. ``L_KD`` is the KL divergence of the teacher's
temperature-softened distribution from the student's, times ``τ²``, over the positions the LM loss
scores: the masked tokens of a masked LM, every next-token position of a causal LM. ``α_t`` follows the
schedule: ``linear`` decays from 1 to 0 at ``ki_steps`` (the paper's default), ``kd-then-lm`` is 1 until
``ki_steps`` then 0, ``constant`` stays at ``alpha``. The teacher is frozen, in eval mode, under no_grad,
and runs only on steps where ``α_t > 0`` (inside the training loop's autocast: bf16 where that pays).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..config import JsonConfig
from ..errors import ConfigError
from ..eval.lm import is_causal_lm

SCHEDULES = ("linear", "kd-then-lm", "constant")


@dataclass
class KIConfig(JsonConfig):
    schedule: str = "linear"
    ki_steps: int = 1000  # T_distil: where the linear decay reaches 0 / the KD phase ends
    temperature: float = 2.0
    alpha: float = 0.5  # the weight of the constant schedule

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown KI schedule {self.schedule!r}; known: {', '.join(SCHEDULES)}")
        if self.ki_steps < 1 or self.temperature <= 0 or not 0 <= self.alpha <= 1:
            raise ConfigError("ki_steps must be >= 1, temperature > 0 and alpha in [0, 1]")


def ki_alpha(step: int, config: KIConfig) -> float:
    """The KD weight ``α_t`` at optimizer step ``step`` (0-based)."""
    if config.schedule == "constant":
        return config.alpha
    if config.schedule == "kd-then-lm":
        return 1.0 if step < config.ki_steps else 0.0
    return max(0.0, 1.0 - step / config.ki_steps)


def scored_positions(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits the LM loss scores, as rows, and their target ids: masked positions of a masked LM, the
    positions before each labelled token of a causal LM."""
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != -100
    return logits[keep], labels[keep]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(softmax(t/τ) ‖ softmax(s/τ))·τ²``, averaged over rows (positions)."""
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1).mean() * temperature ** 2


def check_teacher(teacher: torch.nn.Module, student: torch.nn.Module, teacher_tokenizer: Any = None,
                  tokenizer: Any = None) -> None:
    """Refuse a teacher that cannot supervise ``student``: another vocabulary (by size, and token by token when
    both tokenizers are given) or another LM objective."""
    tv, sv = teacher.get_output_embeddings().weight.shape[0], student.get_output_embeddings().weight.shape[0]
    same_tokens = (teacher_tokenizer is None or tokenizer is None
                   or teacher_tokenizer.get_vocab() == tokenizer.get_vocab())
    if tv != sv or not same_tokens:
        raise ConfigError(f"the teacher's vocabulary ({tv} tokens) differs from the student's ({sv}): knowledge "
                          "inheritance needs one tokenizer; pretrain both with the same --tokenizer folder")
    if is_causal_lm(teacher) != is_causal_lm(student):
        raise ConfigError("the teacher and the student must both be masked LMs or both causal LMs")


class KILoss:
    """The KI objective as a :func:`plmkit.train.train` loss (it takes the optimizer step for ``α_t``)."""

    def __init__(self, teacher: torch.nn.Module, student: torch.nn.Module, config: KIConfig, *,
                 teacher_tokenizer: Any = None, tokenizer: Any = None) -> None:
        check_teacher(teacher, student, teacher_tokenizer, tokenizer)
        self.teacher, self.config, self.causal = teacher.eval().requires_grad_(False), config, is_causal_lm(student)
        self.last: dict[str, float] = {}  # the parts of the latest loss, for logging

    def uses_teacher(self, step: int) -> bool:
        return ki_alpha(step, self.config) > 0

    def __call__(self, model: torch.nn.Module, batch: dict[str, Any], step: int) -> torch.Tensor:
        alpha = ki_alpha(step, self.config)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
        out = model(**inputs, labels=batch["labels"])
        if alpha == 0:
            self.last = {"lm": float(out.loss.detach())}
            return out.loss
        device = batch["input_ids"].device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with torch.no_grad():
            teacher_logits = self.teacher(**inputs).logits
        s, _ = scored_positions(out.logits, batch["labels"], self.causal)
        t, _ = scored_positions(teacher_logits, batch["labels"], self.causal)
        kd = kd_loss(s, t, self.config.temperature)
        self.last = {"lm": float(out.loss.detach()), "kd": float(kd.detach())}
        return (1 - alpha) * out.loss + alpha * kd


def compute_to_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """The compute at which a (compute, validation loss) curve first reaches ``target``, interpolated
    linearly between evaluations; None if it never does."""
    prev = None
    for c, loss in curve:
        if loss <= target:
            if prev is None or prev[1] == loss:
                return c
            (c0, l0) = prev
            return c0 + (c - c0) * (l0 - target) / (l0 - loss)
        prev = (c, loss)
    return None
