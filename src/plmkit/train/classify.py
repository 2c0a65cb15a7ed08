"""Sequence classification: fine-tune any HF ``*ForSequenceClassification`` model and predict with it."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..data.batching import token_batches
from .loop import TrainResult, TuneConfig, train


def classification_collate(tokenizer):
    """Pad ``{"input_ids", "labels"}`` records into a batch with an attention mask and a label tensor."""
    def collate(batch: list[dict]) -> dict:
        out = tokenizer.pad([{"input_ids": b["input_ids"]} for b in batch], return_tensors="pt")
        out["labels"] = torch.tensor([b["labels"] for b in batch])
        return out

    return collate


def fine_tune_classifier(model: torch.nn.Module, tokenizer, rows: Sequence[dict], out_dir: str | Path, *,
                         steps: int, batch_size: int = 16, lr: float = 1e-4, max_length: int = 128, seed: int = 0,
                         mixed_precision: str = "no", progress: bool = True) -> TrainResult:
    """Train on ``rows`` of ``{"text", "label"}`` for ``steps`` optimizer steps (10% warm-up, no checkpoints).

    The model is left in eval mode."""
    enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length)["input_ids"]
    data = [{"input_ids": e, "labels": int(r["label"])} for e, r in zip(enc, rows)]
    model.train()
    tune = TuneConfig(steps=steps, batch_size=batch_size, lr=lr, max_length=max_length,
                      mixed_precision=mixed_precision, progress=progress)
    result = train(model, data, tune.train_config(out_dir, seed), collate_fn=classification_collate(tokenizer))
    model.eval()
    return result


@torch.no_grad()
def predict_labels(model: torch.nn.Module, tokenizer, texts: Sequence[str], *, max_length: int = 128,
                   batch_size: int = 32) -> list[int]:
    """The arg-max class of each text."""
    model.eval()
    device = next(model.parameters()).device
    preds: list[int] = []
    for b in token_batches(tokenizer, list(texts), batch_size, max_length, device=device):
        preds += model(**b).logits.argmax(-1).tolist()
    return preds


def fine_tuned_head(source: str | Path, task, out_dir: str | Path, *, steps: int, batch_size: int = 16,
                    lr: float = 1e-4, max_length: int = 128, seed: int = 0, mixed_precision: str = "auto",
                    progress: bool = False) -> tuple[torch.nn.Module, object]:
    """(model, tokenizer): the model in ``source`` (asset name or folder) with a new classification head for
    ``task`` (a :class:`plmkit.data.tasks.ClassificationTask`), drawn from ``seed``, fine-tuned on its train split."""
    from ..assets import load_model
    from ..assets.models import quiet_load_report

    with quiet_load_report():  # the new head's MISSING keys are expected
        model, tok = load_model(str(source), task="sequence-classification", num_labels=task.num_labels, seed=seed)
    fine_tune_classifier(model, tok, task.train, out_dir, steps=steps, batch_size=batch_size, lr=lr,
                         max_length=max_length, seed=seed, mixed_precision=mixed_precision, progress=progress)
    return model, tok


def accuracy_on(model: torch.nn.Module, tokenizer, rows: Sequence[dict], *, max_length: int = 128) -> float:
    """Accuracy of the arg-max class on ``{"text", "label"}`` rows."""
    from ..eval.metrics import accuracy

    return accuracy(predict_labels(model, tokenizer, [r["text"] for r in rows], max_length=max_length),
                    [r["label"] for r in rows])
