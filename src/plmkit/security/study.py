"""Measuring a backdoor: victims fine-tuned on poisoned data, clean accuracy and attack success, how visible a
trigger is, and a poisoned-sample detector on the training set.

- **CACC**: the victim's accuracy on the clean test set. **ASR**: its accuracy on the poisoned test set (non-target
  examples with the trigger, labelled with the target), the share the backdoor flips.
- **Visibility**: the perplexity a causal LM gives the triggered text against the original (ONION's signal), and
  the share of texts the parser finds in the trigger template.
- **Semantic drift**: cosine of the original and the triggered text under MiniLM sentence embeddings.
- **Detection** by spectral signatures (Tran et al., 2018). The victim's final [CLS] representations of each
  class's training examples are centred. Each is scored by its squared projection on the top singular direction,
  and the top ``1.5 × rate`` share of each class is flagged. This needs no clean reference data and no extra
  training. It fits a backdoor: poisoned examples share a feature (the trigger) that the victim has learnt to
  tie to the target, so they pull the target class's representations in one direction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..eval.metrics import accuracy


@dataclass(frozen=True)
class VictimSettings:
    """MiniLM fine-tuned with a classification head on the (poisoned) training set."""

    model: str = "minilm"
    steps: int = 200
    batch_size: int = 16
    lr: float = 1e-4
    max_length: int = 64


def train_victim(rows: Sequence[dict], num_labels: int, settings: VictimSettings, out_dir: str | Path, *,
                 seed: int = 0, progress: bool = False) -> tuple[Any, Any]:
    """A classifier fine-tuned on ``rows`` (``{"text", "label"}``), the head drawn from ``seed``."""
    from types import SimpleNamespace

    from ..device import mixed_precision
    from ..train.classify import fine_tuned_head

    return fine_tuned_head(settings.model, SimpleNamespace(train=list(rows), num_labels=num_labels), out_dir,
                           steps=settings.steps, batch_size=settings.batch_size, lr=settings.lr,
                           max_length=settings.max_length, seed=seed, mixed_precision=mixed_precision(),
                           progress=progress)


def attack_scores(model: Any, tokenizer: Any, clean: Sequence[dict], poisoned: Sequence[dict], *,
                  max_length: int = 64) -> dict[str, float]:
    """CACC on the clean test rows and ASR on the poisoned ones."""
    from ..train.classify import predict_labels

    def acc(rows: Sequence[dict]) -> float:
        if not rows:
            return math.nan
        return accuracy(predict_labels(model, tokenizer, [r["text"] for r in rows], max_length=max_length),
                        [r["label"] for r in rows])

    return {"cacc": acc(clean), "asr": acc(poisoned), "clean_n": len(clean), "poisoned_n": len(poisoned)}


DEFENSES = ("none", "onion", "paraphrase")


def defend(defense: str, texts: Sequence[str], *, threshold: float = 100.0, paraphraser: str = "rule",
           seed: int = 0, lm: tuple[Any, Any] | None = None, progress: bool = False
           ) -> tuple[list[str], dict[str, Any]]:
    """``texts`` as the victim reads them behind ``defense`` (:data:`DEFENSES`): none; ONION at ``threshold``
    (SmolLM2 perplexities, or ``lm``'s); or every sentence paraphrased by the named defense paraphraser. Returns
    the texts and a short report (words ONION removed per text; the share of texts the paraphraser changed).
    ``progress``: bars over the LM's batches."""
    from ..errors import ConfigError

    if defense not in DEFENSES:
        raise ConfigError(f"unknown defense '{defense}'; choose from {', '.join(DEFENSES)}")
    if defense == "none":
        return list(texts), {}
    if lm is None and (defense == "onion" or paraphraser == "instruct"):
        from .paraphrase import chat_lm

        lm = chat_lm()
    if defense == "onion":
        from .onion import onion_filter, suspicion_scores

        out = onion_filter(texts, suspicion_scores(*lm, texts, progress=progress), threshold)
        removed = sum(len(a.split()) - len(b.split()) for a, b in zip(texts, out))
        return out, {"threshold": threshold, "words_removed_per_text": removed / max(len(texts), 1)}
    from .paraphrase import defense_paraphraser, paraphrase_defense

    return paraphrase_defense(defense_paraphraser(paraphraser, seed=seed, lm=lm, progress=progress), list(texts))


def semantic_drift(originals: Sequence[str], changed: Sequence[str], encoder: Any = None) -> list[float]:
    """Cosine similarity of each original and its changed text under MiniLM mean-pooled embeddings."""
    from ..editing.retrieval import SentenceEncoder

    encoder = encoder or SentenceEncoder("minilm")
    a, b = encoder.encode(list(originals)), encoder.encode(list(changed))
    return (a * b).sum(-1).tolist()


def perplexity_increase(model: Any, tokenizer: Any, originals: Sequence[str], changed: Sequence[str]) -> dict:
    """Median perplexity of the originals and of the changed texts under a causal LM, and the median ratio."""
    from ..eval.lm import text_nll

    before, after = np.exp(text_nll(model, tokenizer, list(originals))), np.exp(text_nll(model, tokenizer, list(changed)))
    return {"ppl_original": float(np.nanmedian(before)), "ppl_triggered": float(np.nanmedian(after)),
            "ratio": float(np.nanmedian(after / before))}


@torch.no_grad()
def cls_representations(model: Any, tokenizer: Any, texts: Sequence[str], *, max_length: int = 64,
                        batch_size: int = 64) -> torch.Tensor:
    """The final-layer state of the first token (what a BERT classification head reads), (N, d) float32."""
    from ..data.batching import token_batches
    from ..device import model_device

    model.eval()
    out = []
    for batch in token_batches(tokenizer, list(texts), batch_size, max_length, model_device(model)):
        hidden = model(**batch, output_hidden_states=True).hidden_states[-1]
        out.append(hidden[:, 0].float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def spectral_signatures(representations: torch.Tensor, labels: Sequence[int]) -> np.ndarray:
    """Per example, its squared projection on the top singular direction of its class's centred
    representations (higher: more suspect)."""
    labels = np.asarray(labels)
    scores = np.zeros(len(labels))
    reps = representations.double()
    for y in np.unique(labels):
        idx = np.flatnonzero(labels == y)
        if len(idx) < 2:
            continue
        centred = reps[idx] - reps[idx].mean(0, keepdim=True)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        scores[idx] = (centred @ v[0]).pow(2).numpy()
    return scores


def detect_poison(scores: np.ndarray, labels: Sequence[int], flagged_share: float) -> np.ndarray:
    """A boolean mask flagging the top ``flagged_share`` of each class by score."""
    labels = np.asarray(labels)
    flags = np.zeros(len(labels), dtype=bool)
    for y in np.unique(labels):
        idx = np.flatnonzero(labels == y)
        k = int(math.ceil(flagged_share * len(idx)))
        if k:
            flags[idx[np.argsort(-scores[idx])[:k]]] = True
    return flags


def detection_quality(flags: np.ndarray, poisoned: Sequence[bool]) -> dict[str, float]:
    """Precision and recall of flagged examples against the truly poisoned ones."""
    truth = np.asarray(poisoned, dtype=bool)
    hit = int((flags & truth).sum())
    return {"flagged": int(flags.sum()), "poisoned": int(truth.sum()),
            "precision": hit / max(int(flags.sum()), 1), "recall": hit / max(int(truth.sum()), 1)}
