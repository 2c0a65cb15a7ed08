"""DPT (Yao et al. 2022): prompt tuning for discriminative PLMs, where an ELECTRA-style discriminator tells
which label word in the prompt is "original".

The input is ``[CLS] text [SEP] template holding every label word [SEP]``; the replaced-token-detection head
scores the first token of each label word; p_c(original) = sigmoid(b_c - z_c), where z_c is the head's
"replaced" logit at class c's word and b_c a learnable class bias (added inside the sigmoid so the result stays
a probability). Training: binary cross-entropy with the gold word original and the others replaced, the whole
model tuned. Prediction: the class whose word looks most original.

No ELECTRA discriminator installs here, so :func:`pretrain_discriminator` makes one: a BERT-family encoder
(MiniLM) becomes an ``ElectraForPreTraining`` (same weights, a fresh RTD head) and is trained on replaced-token
detection over real English text, the replacements sampled from a frozen masked-LM generator.
A real ELECTRA discriminator loads with :func:`load_discriminator` and is used as it is.

>>> disc, tok = load_discriminator("path/to/electra-discriminator")                   # doctest: +SKIP
>>> clf = DPTClassifier(disc, num_labels=2)
>>> train_dpt(clf, tok, prompt, split.train, "runs/dpt")                              # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.tasks import Row
from ..device import model_device
from ..errors import ConfigError
from ..train.loop import TuneConfig
from .prompts import Prompt
from .scoring import continuation


# --- the discriminator --------------------------------------------------------------------------------------

def discriminator_from_encoder(encoder: nn.Module, seed: int = 0) -> nn.Module:
    """An ``ElectraForPreTraining`` holding a BERT encoder's weights (its pooler dropped) and a fresh RTD head
    drawn from ``seed``. Only BERT-layout encoders convert (RoBERTa's position ids differ)."""
    from transformers import ElectraConfig, ElectraForPreTraining

    from ..arch import base_model

    bert = base_model(encoder)
    c = bert.config
    if c.model_type != "bert":
        raise ConfigError(f"only BERT-family encoders convert to an ELECTRA discriminator, not '{c.model_type}'; "
                          "pass a real ELECTRA discriminator (load_discriminator) instead")
    config = ElectraConfig(vocab_size=c.vocab_size, embedding_size=c.hidden_size, hidden_size=c.hidden_size,
                           num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                           intermediate_size=c.intermediate_size, hidden_act=c.hidden_act,
                           hidden_dropout_prob=c.hidden_dropout_prob,
                           attention_probs_dropout_prob=c.attention_probs_dropout_prob,
                           max_position_embeddings=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
                           layer_norm_eps=c.layer_norm_eps, pad_token_id=c.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        disc = ElectraForPreTraining(config)
    state = {k: v for k, v in bert.state_dict().items() if not k.startswith("pooler.")}
    missing, unexpected = disc.electra.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise ConfigError(f"the encoder's weights do not map onto ELECTRA: missing {missing}, unexpected {unexpected}")
    return disc.to(model_device(encoder)).eval()


def load_discriminator(name: str | Path) -> tuple[nn.Module, Any]:
    """(``ElectraForPreTraining``, tokenizer) from an ELECTRA discriminator folder (or hub id), or, for a BERT
    encoder (``minilm``), its conversion with an untrained RTD head (pretrain it with :func:`rtd_pretrain`)."""
    from ..assets import load_config, load_model

    config = load_config(str(name))
    if config.model_type == "electra":
        model, tok = load_model(str(name), task="auto")
        if not hasattr(model, "discriminator_predictions"):
            raise ConfigError(f"'{name}' is an ELECTRA model without a discriminator head (a generator?); "
                              "DPT needs ElectraForPreTraining")
        return model.eval(), tok
    encoder, tok = load_model(str(name), task="base")
    return discriminator_from_encoder(encoder), tok


def rtd_logits(discriminator: nn.Module, **batch: torch.Tensor) -> torch.Tensor:
    """(B, T) "replaced" logits of an ``ElectraForPreTraining`` (or anything returning them as ``logits``)."""
    return discriminator(**batch).logits


# --- replaced-token-detection pretraining ---------------------------------------------------------------------

@dataclass(frozen=True)
class RTDConfig:
    steps: int = 300
    batch_size: int = 16
    lr: float = 5e-5
    max_length: int = 64
    mask_probability: float = 0.15
    seed: int = 0
    mixed_precision: str = "auto"
    progress: bool = True


def _generator_logits(generator: nn.Module, ids: torch.Tensor, attention_mask: torch.Tensor,
                      where: torch.Tensor) -> torch.Tensor:
    """The frozen masked LM's logits at the ``where`` positions only (its head runs on those alone)."""
    from ..arch import base_model

    head = getattr(generator, "cls", None)
    if head is None:
        return generator(input_ids=ids, attention_mask=attention_mask).logits[where]
    hidden = base_model(generator)(input_ids=ids, attention_mask=attention_mask).last_hidden_state
    return head(hidden[where])


@torch.no_grad()
def corrupt(generator: nn.Module, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            mask_probability: float = 0.15, generator_rng: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ELECTRA's corruption: mask ``mask_probability`` of the real (non-special) tokens, let ``generator`` sample
    a token at each, and return (corrupted ids, replaced labels 0/1 as float, the scored positions)."""
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), device=input_ids.device)
    scored = attention_mask.bool() & ~torch.isin(input_ids, special)
    draw = torch.rand(input_ids.shape, generator=generator_rng, device="cpu").to(input_ids.device)
    where = scored & (draw < mask_probability)
    masked = input_ids.masked_fill(where, tokenizer.mask_token_id)
    logits = _generator_logits(generator, masked, attention_mask, where).float()
    sampled = torch.multinomial(logits.softmax(-1), 1, generator=generator_rng if logits.device.type == "cpu"
                                else None)[:, 0]
    corrupted = input_ids.clone()
    corrupted[where] = sampled.to(input_ids.dtype)
    return corrupted, (corrupted != input_ids).float(), scored


def rtd_loss(discriminator: nn.Module, corrupted: torch.Tensor, attention_mask: torch.Tensor,
             replaced: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    logits = rtd_logits(discriminator, input_ids=corrupted, attention_mask=attention_mask)
    return F.binary_cross_entropy_with_logits(logits[scored].float(), replaced[scored])


def rtd_pretrain(discriminator: nn.Module, generator: nn.Module, tokenizer, texts: Sequence[str],
                 out_dir: str | Path, config: RTDConfig = RTDConfig()):
    """Train ``discriminator`` (all of it) on replaced-token detection over ``texts`` through :func:`plmkit.train`;
    the generator stays frozen. Resumable from ``out_dir``'s checkpoints. Returns the train result."""
    from ..train import TrainConfig, train
    from ..train.heads import lm_collate

    if tokenizer.mask_token_id is None:
        raise ConfigError("replaced-token detection needs a tokenizer with a mask token")
    generator.eval().requires_grad_(False)
    ids = tokenizer(list(texts), truncation=True, max_length=config.max_length)["input_ids"]
    data = [{"input_ids": i} for i in ids if len(i) > 4]
    pad = lm_collate(tokenizer, causal=True)

    def loss_fn(model: nn.Module, batch: dict) -> torch.Tensor:
        corrupted, replaced, scored = corrupt(generator, tokenizer, batch["input_ids"], batch["attention_mask"],
                                              config.mask_probability)
        return rtd_loss(model, corrupted, batch["attention_mask"], replaced, scored)

    discriminator.train()
    return train(discriminator, data, TrainConfig(out_dir=str(out_dir), max_steps=config.steps,
                                                  batch_size=config.batch_size, lr=config.lr,
                                                  warmup_steps=max(1, config.steps // 10), seed=config.seed,
                                                  mixed_precision=config.mixed_precision, progress=config.progress,
                                                  save_every=max(1, config.steps // 2)),
                 loss_fn, collate_fn=lambda b: {k: v for k, v in pad(b).items() if k != "labels"})


@torch.no_grad()
def rtd_accuracy(discriminator: nn.Module, generator: nn.Module, tokenizer, texts: Sequence[str], *,
                 max_length: int = 64, mask_probability: float = 0.15, seed: int = 0,
                 batch_size: int = 32) -> dict[str, float]:
    """Replaced-token detection on held-out ``texts`` corrupted by ``generator`` (seeded): accuracy over all
    scored tokens, recall on the replaced ones, accuracy on the originals, and the all-original baseline."""
    from ..data.batching import token_batches

    discriminator.eval()
    rng = torch.Generator().manual_seed(seed)
    hits = total = rep_hit = rep = orig_hit = orig = 0
    for b in token_batches(tokenizer, list(texts), batch_size, max_length, device=model_device(discriminator)):
        corrupted, replaced, scored = corrupt(generator, tokenizer, b["input_ids"], b["attention_mask"],
                                              mask_probability, rng)
        pred = (rtd_logits(discriminator, input_ids=corrupted, attention_mask=b["attention_mask"]) > 0).float()
        ok = (pred == replaced) & scored
        hits, total = hits + int(ok.sum()), total + int(scored.sum())
        is_rep = scored & (replaced > 0)
        rep_hit, rep = rep_hit + int((ok & is_rep).sum()), rep + int(is_rep.sum())
        orig_hit, orig = orig_hit + int((ok & scored & ~is_rep).sum()), orig + int((scored & ~is_rep).sum())
    if total == 0:
        raise ConfigError("rtd_accuracy: no tokens to score")
    return {"accuracy": hits / total, "replaced_recall": rep_hit / max(1, rep),
            "original_accuracy": orig_hit / max(1, orig), "replaced_share": rep / total,
            "all_original_baseline": orig / total, "tokens": total}


# --- DPT classification ---------------------------------------------------------------------------------------

class DPTClassifier(nn.Module):
    """A discriminator with one learnable bias per class; ``forward`` returns (B, C) logits of "original" per
    label word (``sigmoid`` of them is p(original))."""

    def __init__(self, discriminator: nn.Module, num_labels: int):
        super().__init__()
        if num_labels < 2:
            raise ConfigError("DPT needs at least two classes")
        self.discriminator = discriminator
        self.class_bias = nn.Parameter(torch.zeros(num_labels))

    @property
    def config(self):
        return self.discriminator.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, label_positions: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C) logits of "original" at each class's word: b_c - z_c."""
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        z = rtd_logits(self.discriminator, input_ids=input_ids, attention_mask=attention_mask, **extra)
        return self.class_bias - z.gather(1, label_positions).float()


def dpt_loss(original_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy, the gold class's word original (1) and every other replaced (0), mean over words."""
    target = F.one_hot(labels, original_logits.shape[1]).float()
    return F.binary_cross_entropy_with_logits(original_logits, target)


def label_sequence(prompt: Prompt) -> tuple[str, list[int]]:
    """The second segment, the template after the text with its blank holding every label word in class order,
    and the character offset of each word in it."""
    text, starts = prompt.before.strip(), []
    for w in prompt.label_words:
        text += " " if text else ""
        starts.append(len(text))
        text += continuation(w).strip()
    return text + prompt.after.rstrip(), starts


def encode_dpt(tokenizer, prompt: Prompt, text: str, max_length: int = 128) -> dict:
    """``{"input_ids", "attention_mask", ["token_type_ids"], "label_positions"}`` for one text: the text is the
    first segment (truncated first), the template with all label words the second."""
    second, starts = label_sequence(prompt)
    enc = tokenizer(text, second, truncation="only_first", max_length=max_length, return_offsets_mapping=True)
    seq_ids, offsets = enc.sequence_ids(), enc["offset_mapping"]
    positions = []
    for w, start in zip(prompt.label_words, starts):
        hit = [i for i, (s, o) in enumerate(zip(seq_ids, offsets)) if s == 1 and o[0] <= start < o[1]]
        if not hit:
            raise ConfigError(f"label word '{w}' has no token in the prompt (max_length {max_length} too small?)")
        positions.append(hit[0])
    out = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
    out["label_positions"] = positions
    return out


def dpt_collate(tokenizer):
    def collate(batch: list[dict]) -> dict:
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch[0]]
        out = tokenizer.pad([{k: b[k] for k in keys} for b in batch], return_tensors="pt")
        out["label_positions"] = torch.tensor([b["label_positions"] for b in batch])
        if "labels" in batch[0]:
            out["labels"] = torch.tensor([b["labels"] for b in batch])
        return out

    return collate


@dataclass(frozen=True)
class DPTConfig(TuneConfig):
    lr: float = 2e-5
    bias_lr: float = 1e-2  # the class biases learn faster (they start at zero)


def train_dpt(classifier: DPTClassifier, tokenizer, prompt: Prompt, rows: Sequence[Row], out_dir: str | Path,
              config: DPTConfig = DPTConfig(), *, seed: int = 0):
    """Tune the whole discriminator and the class biases on ``rows`` with :func:`dpt_loss` (via plmkit.train)."""
    from ..train import train

    if len(prompt.label_words) != classifier.class_bias.numel():
        raise ConfigError(f"the prompt has {len(prompt.label_words)} label words for "
                          f"{classifier.class_bias.numel()} classes")
    data = [{**encode_dpt(tokenizer, prompt, r["text"], config.max_length), "labels": int(r["label"])} for r in rows]
    body = [p for n, p in classifier.named_parameters() if n != "class_bias"]
    optimizer = torch.optim.AdamW([{"params": body, "lr": config.lr},
                                   {"params": [classifier.class_bias], "lr": config.bias_lr}])

    def loss_fn(model: nn.Module, batch: dict) -> torch.Tensor:
        labels = batch.pop("labels")
        return dpt_loss(model(**batch), labels)

    classifier.train()
    result = train(classifier, data, config.train_config(out_dir, seed), loss_fn, collate_fn=dpt_collate(tokenizer),
                   optimizer=optimizer)
    classifier.eval()
    return result


@torch.no_grad()
def dpt_predict(classifier: DPTClassifier, tokenizer, prompt: Prompt, texts: Sequence[str], *,
                max_length: int = 128, batch_size: int = 32) -> np.ndarray:
    """(N, C) p(original) of each class's word."""
    classifier.eval()
    device = model_device(classifier)
    collate = dpt_collate(tokenizer)
    out = []
    for i in range(0, len(texts), batch_size):
        batch = collate([encode_dpt(tokenizer, prompt, t, max_length) for t in texts[i:i + batch_size]])
        out.append(torch.sigmoid(classifier(**{k: v.to(device) for k, v in batch.items()})).cpu().numpy())
    return np.concatenate(out)


def dpt_accuracy(classifier: DPTClassifier, tokenizer, prompt: Prompt, rows: Sequence[Row], **kw) -> float:
    probs = dpt_predict(classifier, tokenizer, prompt, [r["text"] for r in rows], **kw)
    return float(np.mean(probs.argmax(1) == np.array([r["label"] for r in rows])))
