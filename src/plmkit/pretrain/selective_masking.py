"""Selective masking: find the tokens a task depends on, and mask those in task-guided pretraining.

1. :func:`token_importance` labels the tokens of a task's sentences with a fine-tuned classifier by the
   buffer rule. Tokens are added left to right to a buffer; ``rule="reference"`` (the released code's
   rule) marks a token important when the buffer with it scores the gold label within ``threshold`` of the
   whole sentence's score, and then leaves it out of the buffer; ``rule="delta"`` marks it important when
   adding it raises P(gold) by more than ``threshold``, and always keeps it. Only sentences the classifier
   gets right are labelled. All sentences advance together: one batched forward pass per position.
2. :class:`TokenTagger`, a linear head over a frozen encoder's token states, learns those labels
   (:func:`train_tagger`) and scores an unlabelled in-domain corpus.
3. :func:`selective_masks` masks, in each sequence, the top-scored tokens the tagger calls important (at
   most ``mask_rate`` of the tokens; stop words and special tokens never), 80/10/10; :func:`save_masked`
   writes them as a ``datasets`` folder with statistics.

Every step counts the FLOPs it spends (``2·N·tokens`` per forward pass), so a study can charge mask
generation to the method that uses it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .._io import atomic_dir, write_json
from ..config import JsonConfig
from ..errors import ConfigError
from ..eval.flops import forward_flops, matmul_params
from .masking import IGNORE, apply_mask, pad_collate, special_mask, special_wrap, with_specials

RULES = ("reference", "delta")


@dataclass
class SelectiveMaskConfig(JsonConfig):
    threshold: float = 0.01  # δ
    rule: str = "reference"  # reference | delta (see the module docstring)
    mask_rate: float = 0.15  # at most this share of a sequence's tokens is masked
    max_length: int = 128
    batch_size: int = 64
    tagger_steps: int = 200
    tagger_lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"unknown rule {self.rule!r}; known: {', '.join(RULES)}")
        if not 0 < self.mask_rate <= 1 or self.threshold < 0:
            raise ConfigError("mask_rate must be in (0, 1] and threshold >= 0")


@dataclass
class Importance:
    ids: list[list[int]]  # the labelled sentences' token ids (no special tokens)
    important: list[list[bool]]
    flops: int = 0  # forward FLOPs the labelling spent
    sentences_seen: int = 0  # before keeping only the ones the classifier gets right


def stop_word_ids(tokenizer) -> set[int]:
    """Ids of whole-word tokens that are English stop words (scikit-learn's list): never important."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    vocab = tokenizer.get_vocab()
    return {i for w, i in vocab.items() if w.lstrip("Ġ▁").lower() in ENGLISH_STOP_WORDS}


def _probs(model: nn.Module, tokenizer, seqs: Sequence[list[int]], batch_size: int) -> tuple[torch.Tensor, int]:
    """Class probabilities of each token sequence (special tokens added), and the forward FLOPs spent."""
    from ..device import model_device

    device, n = model_device(model), matmul_params(model)
    prefix, suffix = special_wrap(tokenizer)
    out, flops = [], 0
    for i in range(0, len(seqs), batch_size):
        batch = tokenizer.pad({"input_ids": [prefix + list(s) + suffix for s in seqs[i:i + batch_size]]},
                              return_tensors="pt").to(device)
        with torch.no_grad():
            out.append(model(**batch).logits.float().softmax(-1).cpu())
        flops += forward_flops(n, int(batch["attention_mask"].sum()))
    return (torch.cat(out) if out else torch.zeros(0, 1)), flops


def token_importance(classifier: nn.Module, tokenizer, texts: Sequence[str], labels: Sequence[int],
                     config: SelectiveMaskConfig = SelectiveMaskConfig()) -> Importance:
    """Label each token of ``texts`` (sentences) important or not for its gold label (the buffer rule)."""
    classifier.eval()
    stops = stop_word_ids(tokenizer)
    ids = [x[:config.max_length - 2] for x in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    keep = [k for k, x in enumerate(ids) if x]
    probs, flops = _probs(classifier, tokenizer, [ids[k] for k in keep], config.batch_size)
    right = [(k, float(p[labels[k]])) for k, p in zip(keep, probs) if int(p.argmax()) == labels[k]]
    sents, gold = [ids[k] for k, _ in right], [labels[k] for k, _ in right]
    target = [p for _, p in right]  # P(gold | whole sentence)
    important = [[False] * len(s) for s in sents]
    buffers: list[list[int]] = [[] for _ in sents]
    previous = [0.0] * len(sents)
    if config.rule == "delta" and sents:  # P(gold) of the empty buffer
        empty, f = _probs(classifier, tokenizer, [[]], 1)
        previous, flops = [float(empty[0, y]) for y in gold], flops + f
    for pos in range(max((len(s) for s in sents), default=0)):
        active = [j for j, s in enumerate(sents) if pos < len(s)]
        trial = [buffers[j] + [sents[j][pos]] for j in active]
        scores, f = _probs(classifier, tokenizer, trial, config.batch_size)
        flops += f
        for j, buf, row in zip(active, trial, scores):
            p = float(row[gold[j]])
            if config.rule == "reference":  # the buffer with the token recovers the sentence's confidence
                hit = target[j] - p < config.threshold
                if not hit:
                    buffers[j] = buf
            else:  # adding the token raises P(gold) by more than the threshold
                hit = p - previous[j] > config.threshold
                buffers[j], previous[j] = buf, p
            important[j][pos] = hit and sents[j][pos] not in stops
    return Importance(ids=sents, important=important, flops=flops, sentences_seen=len(keep))


class TokenTagger(nn.Module):
    """P(important) per token: a linear head over an encoder's last hidden states. The encoder (shared with the
    model it came from, untouched: its states are read under no_grad) stays reachable as ``.encoder``; ``.head``
    holds the only trained weights."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        from ..arch import base_model

        self.encoder = base_model(encoder)
        self.head = nn.Linear(self.encoder.config.hidden_size, 1)

    def states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of P(important), (batch, length)."""
        return self.head(self.states(input_ids, attention_mask)).squeeze(-1)

    def save(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        with atomic_dir(folder) as tmp:
            weights = {k: v.contiguous() for k, v in self.head.state_dict().items()}
            save_file(weights, str(tmp / "tagger_head.safetensors"))

    def load(self, folder: str | Path) -> "TokenTagger":
        from safetensors.torch import load_file

        self.head.load_state_dict(load_file(str(Path(folder) / "tagger_head.safetensors")))
        return self


@dataclass
class TaggerResult:
    flops: int  # encoder forward over the labelled sentences + the head's training
    train_accuracy: float
    positive_rate: float  # share of labelled tokens that are important
    losses: list[float] = field(default_factory=list)


def train_tagger(tagger: TokenTagger, tokenizer, importance: Importance, out_dir: str | Path,
                 config: SelectiveMaskConfig = SelectiveMaskConfig(), progress: bool = False) -> TaggerResult:
    """Fit the head on the labelled tokens (the encoder's states are computed once, then the head trains on
    them through :func:`plmkit.train.train`, class-balanced BCE)."""
    from ..device import model_device
    from ..train import TrainConfig, train

    device = model_device(tagger.encoder)
    feats, targets, flops = [], [], 0
    n_enc = matmul_params(tagger.encoder)
    for i in range(0, len(importance.ids), config.batch_size):
        seqs = importance.ids[i:i + config.batch_size]
        batch = tokenizer.pad({"input_ids": [with_specials(tokenizer, s) for s in seqs]},
                              return_tensors="pt").to(device)
        states = tagger.states(batch["input_ids"], batch["attention_mask"]).float().cpu()
        flops += forward_flops(n_enc, int(batch["attention_mask"].sum()))
        offset = len(special_wrap(tokenizer)[0])
        for k, s in enumerate(seqs):
            feats.append(states[k, offset:offset + len(s)])
            targets.append(torch.tensor(importance.important[i + k], dtype=torch.float32))
    x, y = torch.cat(feats), torch.cat(targets)
    if len(x) == 0 or y.sum() == 0:
        raise ConfigError("no important tokens were labelled: lower the threshold or label more sentences")
    pos_weight = (len(y) - y.sum()) / y.sum()
    data = [{"x": a, "y": b} for a, b in zip(x, y)]
    head = tagger.head

    def loss(model: nn.Module, batch: dict) -> torch.Tensor:
        logits = model(batch["x"]).squeeze(-1).float()
        return nn.functional.binary_cross_entropy_with_logits(logits, batch["y"],
                                                              pos_weight=pos_weight.to(logits.device))

    res = train(head, data, TrainConfig(out_dir=str(out_dir), max_steps=config.tagger_steps, batch_size=256,
                                        lr=config.tagger_lr, resume=False, progress=progress, seed=config.seed),
                loss, collate_fn=lambda rows: {"x": torch.stack([r["x"] for r in rows]),
                                               "y": torch.stack([r["y"] for r in rows])})
    with torch.no_grad():
        pred = (head(x.to(next(head.parameters()).device)).squeeze(-1) > 0).float().cpu()
    head_n = sum(p.numel() for p in head.parameters())
    flops += 6 * head_n * config.tagger_steps * 256
    return TaggerResult(flops=flops, train_accuracy=float((pred == y).float().mean()),
                        positive_rate=float(y.mean()), losses=res.losses)


@dataclass
class MaskedCorpus:
    input_ids: list[list[int]]  # masked inputs (special tokens included)
    labels: list[list[int]]  # original ids at masked positions, -100 elsewhere
    stats: dict[str, float]
    flops: int  # the tagger's forward passes over the corpus


def selective_masks(tagger: TokenTagger, tokenizer, texts: Sequence[str],
                    config: SelectiveMaskConfig = SelectiveMaskConfig()) -> MaskedCorpus:
    """Tag ``texts`` and mask each one's top-scored important tokens (at most ``mask_rate``), 80/10/10."""
    from ..device import model_device

    device = model_device(tagger.encoder)
    stops = torch.tensor(sorted(stop_word_ids(tokenizer)), dtype=torch.long)
    g = torch.Generator().manual_seed(config.seed)
    n_enc = matmul_params(tagger.encoder)
    inputs, labels, flops = [], [], 0
    counts = {"tokens": 0, "masked": 0, "as_mask": 0, "as_random": 0, "kept": 0, "sequences": 0}
    enc = tokenizer(list(texts), truncation=True, max_length=config.max_length)["input_ids"]
    for i in range(0, len(enc), config.batch_size):
        batch = tokenizer.pad({"input_ids": enc[i:i + config.batch_size]}, return_tensors="pt")
        ids, att = batch["input_ids"], batch["attention_mask"]
        with torch.no_grad():
            scores = torch.sigmoid(tagger(ids.to(device), att.to(device)).float()).cpu()
        flops += forward_flops(n_enc, int(att.sum()))
        text = (att == 1) & ~special_mask(ids, tokenizer)  # the passage's own tokens
        eligible = text & ~torch.isin(ids, stops) & (scores > 0.5)
        chosen = torch.zeros_like(eligible)
        for r in range(len(ids)):
            n_tokens = int(text[r].sum())
            budget = int(config.mask_rate * n_tokens)
            cand = torch.nonzero(eligible[r]).squeeze(-1)
            if budget and len(cand):
                top = cand[scores[r, cand].argsort(descending=True)[:budget]]
                chosen[r, top] = True
            counts["tokens"] += n_tokens
        masked, lab = apply_mask(ids, chosen, tokenizer, g)
        counts["masked"] += int(chosen.sum())
        counts["as_mask"] += int((chosen & (masked == tokenizer.mask_token_id)).sum())
        counts["kept"] += int((chosen & (masked == ids)).sum())
        for r in range(len(ids)):
            n = int(att[r].sum())
            inputs.append(masked[r, :n].tolist())
            labels.append(lab[r, :n].tolist())
        counts["sequences"] += len(ids)
    counts["as_random"] = counts["masked"] - counts["as_mask"] - counts["kept"]
    m = max(counts["masked"], 1)
    stats = {**counts, "mask_rate": counts["masked"] / max(counts["tokens"], 1), "share_mask": counts["as_mask"] / m,
             "share_random": counts["as_random"] / m, "share_kept": counts["kept"] / m}
    return MaskedCorpus(inputs, labels, stats, flops)


def save_masked(masked: MaskedCorpus, folder: str | Path) -> Path:
    """Write the masked corpus as a ``datasets`` folder (``input_ids``, ``labels``) with ``stats.json``;
    atomically: a crash leaves the previous folder readable."""
    import datasets

    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one small shard: its bar is noise
    try:
        with atomic_dir(folder) as tmp:
            data = datasets.Dataset.from_dict({"input_ids": masked.input_ids, "labels": masked.labels})
            data.save_to_disk(str(tmp / "data"))
            write_json(tmp / "stats.json", {**masked.stats, "mask_flops": masked.flops})
    finally:
        if shown:
            datasets.enable_progress_bars()
    return Path(folder)


def load_masked(folder: str | Path) -> list[dict[str, Any]]:
    from datasets import load_from_disk

    return [dict(r) for r in load_from_disk(str(Path(folder) / "data"))]


def masked_collate(tokenizer):
    """Pad pre-masked records: labels padded with -100 (the tokenizer pads on the right)."""
    pad = pad_collate(tokenizer)

    def collate(rows: list[dict]) -> dict:
        out = pad(rows)
        width = out["input_ids"].shape[1]
        out["labels"] = torch.tensor([r["labels"] + [IGNORE] * (width - len(r["labels"])) for r in rows])
        return out

    return collate


@dataclass
class TGPResult:
    steps: int
    flops: float  # training FLOPs (6·N·tokens)
    tokens: float
    seconds: float
    losses: list[float] = field(default_factory=list)


def task_guided_pretrain(model: nn.Module, tokenizer, out_dir: str | Path, *, masked: MaskedCorpus | None = None,
                         texts: Sequence[str] | None = None, steps: int = 100, batch_size: int = 16, lr: float = 5e-5,
                         max_length: int = 128, mlm_probability: float = 0.15, seed: int = 0,
                         mixed_precision: str = "auto", progress: bool = False) -> TGPResult:
    """Continue masked-LM pretraining of ``model`` on in-domain text: on ``masked`` (selective masks, fixed)
    or on ``texts`` with random masks drawn per step (:func:`plmkit.pretrain.masking.masked_objective`)."""
    from ..eval.lm import lm_loss
    from ..train import TrainConfig, train
    from .masking import masked_objective

    if (masked is None) == (texts is None):
        raise ConfigError("pass either masked (selective masking) or texts (random masking)")
    n = matmul_params(model)
    if masked is not None:
        data = [{"input_ids": i, "labels": lab} for i, lab in zip(masked.input_ids, masked.labels)]
        collate = masked_collate(tokenizer)
        loss: Any = lambda m, b, step: lm_loss(m, b)  # noqa: E731  (vocabulary logits at masked positions only)
    else:
        enc = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
        data = [{"input_ids": e} for e in enc]
        collate = pad_collate(tokenizer)
        loss = masked_objective(lambda m, b, step: lm_loss(m, b), tokenizer, mlm_probability, seed)

    def counters(batch: dict, step: int) -> dict[str, float]:
        tokens = int(batch["attention_mask"].sum())
        return {"tokens": tokens, "flops": 6 * n * tokens}

    model.train()
    res = train(model, data, TrainConfig(out_dir=str(out_dir), max_steps=steps, batch_size=batch_size, lr=lr,
                                         warmup_steps=max(1, steps // 10), resume=False, seed=seed,
                                         mixed_precision=mixed_precision, progress=progress),
                loss, collate_fn=collate, counters=counters)
    return TGPResult(steps=steps, flops=res.totals.get("flops", 0.0), tokens=res.totals.get("tokens", 0.0),
                     seconds=res.totals.get("seconds", 0.0), losses=res.losses)
