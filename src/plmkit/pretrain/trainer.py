"""Pretrain a model from scratch through :func:`plmkit.train.train`, optionally with a KI teacher.

One call builds the model from the seed, trains it on packed blocks (masked-token prediction for bert,
next-token prediction for llama), scores a fixed validation set every ``eval_every`` steps, keeps every
checkpoint (for analyses along the run: ``out_dir/checkpoints/step-N``), logs tokens, FLOPs (the
student's ``6·N·tokens`` plus, where a teacher runs, its ``2·N_t·tokens``) and seconds to
``out_dir/metrics.jsonl``, and saves the final model with its tokenizer in the Hugging Face layout under
``out_dir/model``. Rerunning the same call resumes from the newest checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_dir, write_json
from ..config import JsonConfig
from ..errors import ConfigError
from ..eval.flops import forward_flops, matmul_params, train_flops
from ..eval.lm import is_causal_lm, lm_loss
from .knowledge_inheritance import KIConfig, KILoss
from .masking import batch_generator, mask_batch, masked_objective, pad_collate
from .models import FAMILIES, scratch_model, size


@dataclass
class PretrainConfig(JsonConfig):
    family: str = "bert"  # bert (masked LM) | llama (causal LM)
    size: str = "s"  # a name in plmkit.pretrain.models.SIZES
    steps: int = 1000
    batch_size: int = 32
    lr: float = 5e-4
    warmup_steps: int = 50
    weight_decay: float = 0.01
    mlm_probability: float = 0.15
    eval_every: int = 100  # validation loss; every checkpoint is kept at these steps too
    validation_blocks: int = 256  # at most this many validation blocks are scored
    mixed_precision: str = "auto"  # bf16 where it is fast on this device (plmkit.device), else fp32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ConfigError(f"unknown family {self.family!r}; pretraining supports {', '.join(FAMILIES)}")
        size(self.size)
        if self.steps < 1 or self.eval_every < 1:
            raise ConfigError("steps and eval_every must be >= 1")


@dataclass
class PretrainResult:
    out_dir: str
    curve: list[dict[str, float]] = field(default_factory=list)  # per evaluation: step, val_loss, tokens, flops, s
    final_val_loss: float = float("nan")
    params: int = 0  # matmul parameters (the N of 6·N·tokens)
    teacher_params: int = 0
    resumed_from: int = 0
    mixed_precision: str = "no"


def _collate(tokenizer, causal: bool):
    """Blocks into a batch; a masked LM's masks are drawn in the loss (:mod:`plmkit.pretrain.masking`)."""
    from ..train import causal_lm_collate

    return causal_lm_collate(tokenizer) if causal else pad_collate(tokenizer)


def validation_batches(tokenizer, blocks: list[dict], causal: bool, *, mlm_probability: float = 0.15, seed: int = 0,
                       batch_size: int = 32) -> list[dict]:
    """The validation set, collated once: the masked positions are fixed by ``seed``, so every model and
    checkpoint of a study is scored on the same tokens."""
    collate = _collate(tokenizer, causal)
    batches = [collate(blocks[i:i + batch_size]) for i in range(0, len(blocks), batch_size)]
    if causal:
        return batches
    out = []
    for k, b in enumerate(batches):
        inputs, labels = mask_batch(b["input_ids"], tokenizer, mlm_probability, batch_generator(b["input_ids"], -1 - k,
                                                                                              seed))
        out.append({**b, "input_ids": inputs, "labels": labels})
    return out


def validation_loss(model: torch.nn.Module, batches: list[dict]) -> float:
    """Mean LM loss (nats per scored token) over collated ``batches``, on the model's device."""
    from ..device import model_device, to_device

    device, causal = model_device(model), is_causal_lm(model)
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            b = to_device(b, device)
            n = int((b["labels"][:, 1:] if causal else b["labels"]).ne(-100).sum())  # the tokens the loss scores
            total += float(lm_loss(model, b)) * n
            count += n
    return total / max(count, 1)


def _refuse_other_run(out: Path, config: PretrainConfig, ki: KIConfig | None) -> None:
    """A folder with checkpoints of a run with other settings is not resumed into (its curve would be mixed in)."""
    import json

    saved, saved_ki = out / "pretrain_config.json", out / "ki_config.json"
    if not (out / "checkpoints").exists() or not saved.exists():
        return
    same = json.loads(saved.read_text()) == config.to_dict()
    same_ki = (json.loads(saved_ki.read_text()) if saved_ki.exists() else None) == (ki.to_dict() if ki else None)
    if not (same and same_ki):
        raise ConfigError(f"{out} holds a pretraining run with other settings; pass another output folder or "
                          "delete that one (rerunning with the same settings resumes it)")


def pretrain(out_dir: str | Path, train_blocks: list[dict], validation: list[dict], tokenizer,
             config: PretrainConfig, *, teacher: torch.nn.Module | None = None, ki: KIConfig | None = None,
             teacher_tokenizer: Any = None, progress: bool = True) -> tuple[torch.nn.Module, PretrainResult]:
    """Pretrain ``config.family``/``config.size`` from scratch on ``train_blocks`` (with KI when ``teacher``
    is given; pass ``teacher_tokenizer`` to have its vocabulary checked token by token); ``validation`` are
    packed blocks, scored every ``eval_every`` steps. Returns the model and its curve."""
    from ..train import TrainConfig, train

    out = Path(out_dir)
    causal = config.family == "llama"
    model = scratch_model(config.family, config.size, tokenizer, max_length=len(train_blocks[0]["input_ids"]),
                          seed=config.seed)
    if config.family == "bert" and tokenizer.mask_token_id is None:
        raise ConfigError("a masked LM needs a tokenizer with a mask token: use a bert-family tokenizer")
    ki_loss = None
    objective: Any = lambda m, b, step: m(**b).loss  # noqa: E731
    teacher_n = 0
    if teacher is not None:
        objective = ki_loss = KILoss(teacher, model, ki or KIConfig(), teacher_tokenizer=teacher_tokenizer,
                                     tokenizer=tokenizer)
        teacher_n = matmul_params(teacher)
    if not causal:
        objective = masked_objective(objective, tokenizer, config.mlm_probability, config.seed)
    student_n = matmul_params(model)
    val = validation_batches(tokenizer, validation[:config.validation_blocks], causal,
                             mlm_probability=config.mlm_probability, seed=config.seed)

    def counters(batch: dict, step: int) -> dict[str, float]:
        tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        student = train_flops(student_n, tokens)
        teacher_flops = forward_flops(teacher_n, tokens) if ki_loss is not None and ki_loss.uses_teacher(step) else 0
        return {"tokens": tokens, "student_flops": student, "teacher_flops": teacher_flops,
                "flops": student + teacher_flops}

    _refuse_other_run(out, config, ki if teacher is not None else None)
    if teacher is not None:
        write_json(out / "ki_config.json", (ki or KIConfig()).to_dict())
    config.to_json(out / "pretrain_config.json")
    tc = TrainConfig(out_dir=str(out), max_steps=config.steps, batch_size=config.batch_size, lr=config.lr,
                     weight_decay=config.weight_decay, warmup_steps=config.warmup_steps, eval_every=config.eval_every,
                     save_every=config.eval_every, keep_checkpoints=0, log_every=min(10, config.eval_every),
                     seed=config.seed, mixed_precision=config.mixed_precision, progress=progress)
    res = train(model, train_blocks, tc, objective, collate_fn=_collate(tokenizer, causal),
                eval_fn=lambda m: {"val_loss": validation_loss(m, val)}, counters=counters)
    with atomic_dir(out / "model") as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
    curve = [{k: e[k] for k in ("step", "val_loss", "tokens", "flops", "teacher_flops", "seconds") if k in e}
             for e in res.evals]
    result = PretrainResult(out_dir=str(out), curve=curve, final_val_loss=curve[-1]["val_loss"], params=student_n,
                            teacher_params=teacher_n, resumed_from=res.resumed_from,
                            mixed_precision=res.mixed_precision)
    write_json(out / "result.json", result.__dict__)
    return model, result

