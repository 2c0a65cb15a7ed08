"""ERNIE's fine-tuning heads: entity typing and relation classification, the mentions marked in the text.

As in the paper, the mentions are marked by characters put around them (``@`` for the typed mention, ``#`` for
the head and ``$`` for the tail of a relation), and the class is read from the first token's final state.
Typing trains with a sigmoid and binary cross-entropy per class, the paper's typing loss (here on one gold class
per example; ``labels`` may also be a (B, C) multi-hot tensor), relations with cross-entropy; prediction is the
arg-max class. The same head serves a plain encoder (the baseline), so both are fine-tuned the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import SequenceClassifierOutput

from ... import arch
from ...device import model_device, to_device
from ...errors import ConfigError
from ...train.loop import TrainResult, TuneConfig, train
from .align import encode_with_entities, entity_collate
from .model import ERNIE


class ERNIEClassifier(nn.Module):
    """A linear head on the first token's final state of ``encoder`` (an :class:`ERNIE` or a plain encoder)."""

    def __init__(self, encoder: nn.Module, num_labels: int, *, multi_label: bool = False, dropout: float = 0.1,
                 seed: int = 0):
        super().__init__()
        self.encoder, self.multi_label = encoder, multi_label
        d = arch.layers(encoder.model if isinstance(encoder, ERNIE) else encoder)[-1].d_model
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d, num_labels)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=gen) * 0.02)
            self.head.bias.zero_()
        self.head.to(model_device(encoder))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                entity_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> SequenceClassifierOutput:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        if isinstance(self.encoder, ERNIE):
            h = self.encoder.encode(input_ids, attention_mask, entity_ids, **extra)
        else:
            h = arch.base_model(self.encoder)(input_ids=input_ids, attention_mask=attention_mask,
                                              **extra).last_hidden_state
        logits = self.head(self.dropout(h[:, 0]))
        loss = None
        if labels is not None:
            if self.multi_label:
                target = F.one_hot(labels, logits.shape[-1]).to(logits.dtype) if labels.dim() == 1 else labels
                loss = F.binary_cross_entropy_with_logits(logits.float(), target.float())
            else:
                loss = F.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


MARKS = {"typing": ("@",), "relation": ("#", "$")}


def mark_mentions(text: str, spans: Sequence[tuple[int, int]], marks: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Put ``marks[i]`` before and after ``spans[i]`` (non-overlapping); returns the text and the spans' new
    offsets (the mention itself, without its marks)."""
    for a, b in spans:
        if not 0 <= a < b <= len(text):
            raise ConfigError(f"mention span {a}:{b} is empty or outside the text (length {len(text)})")
    ordered = sorted(spans)
    for (a, b), (c, d) in zip(ordered, ordered[1:]):
        if c < b:
            raise ConfigError(f"mentions {a}:{b} and {c}:{d} overlap; they cannot both be marked")
    events = sorted([(a, 1, i) for i, (a, _) in enumerate(spans)] + [(b, 0, i) for i, (_, b) in enumerate(spans)])
    pieces, last, moved, new = [], 0, 0, {}
    for at, opening, i in events:  # at one offset, a closing mark goes before an opening one
        pieces += [text[last:at], marks[i]]
        last = at
        if opening:
            moved += len(marks[i])
            new[i, 0] = at + moved
        else:
            new[i, 1] = at + moved
            moved += len(marks[i])
    pieces.append(text[last:])
    return "".join(pieces), [(new[i, 0], new[i, 1]) for i in range(len(spans))]


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    entity: str


def marked_task(rows: Sequence[dict], kind: str, linker: Any | None, *, entity_source: str = "linked"
                ) -> tuple[list[str], list[list[Any]]]:
    """The texts of entity-typing (``kind="typing"``: rows with ``text, start, end, label, synset``) or relation
    rows (``kind="relation"``: ``text, head_start, head_end, tail_start, tail_end, head, tail, label``) with their
    mentions marked, and each text's mentions (``start``, ``end``, ``entity``).

    ``entity_source``: ``linked`` (the linker's mentions of the marked text), ``gold`` (linked, with the task's
    mentions given their gold entity: an upper bound on linking), ``none`` (no mentions)."""
    if entity_source not in ("linked", "gold", "none"):
        raise ConfigError("entity_source must be linked, gold or none")
    if kind == "typing":
        spans = [[(r["start"], r["end"])] for r in rows]
        golds = [[r.get("synset")] for r in rows]
    elif kind == "relation":
        spans = [[(r["head_start"], r["head_end"]), (r["tail_start"], r["tail_end"])] for r in rows]
        golds = [[r.get("head"), r.get("tail")] for r in rows]
    else:
        raise ConfigError("kind must be typing or relation")
    texts, task_spans = [], []
    for r, sp in zip(rows, spans):
        t, new = mark_mentions(r["text"], sp, MARKS[kind][:len(sp)])
        texts.append(t)
        task_spans.append(new)
    if entity_source == "none" or linker is None:
        mentions: list[list[Any]] = [[] for _ in texts]
    else:
        mentions = [list(m) for m in linker.link(texts)]
    if entity_source == "gold":
        for i, (sp, gold) in enumerate(zip(task_spans, golds)):
            keep = [m for m in mentions[i] if all(m.end <= a or m.start >= b for a, b in sp)]
            mentions[i] = keep + [_Span(a, b, g) for (a, b), g in zip(sp, gold) if g]
    return texts, mentions


def task_records(tokenizer: Any, rows: Sequence[dict], kind: str, entities: Any, linker: Any | None, *,
                 entity_source: str = "linked", max_length: int = 128) -> list[dict]:
    """Fine-tuning records ``{"input_ids", "entity_ids", "label"}`` of a task's rows, the mentions marked and
    their entities on the first word piece (see :func:`marked_task` for ``kind`` and ``entity_source``)."""
    texts, mentions = marked_task(rows, kind, linker, entity_source=entity_source)
    records = encode_with_entities(tokenizer, texts, mentions, entities, max_length=max_length)
    for rec, r in zip(records, rows):
        rec["label"] = int(r["label"])
    return records


def without_entities(records: Sequence[dict]) -> list[dict]:
    """The same records with every entity taken away (ERNIE with no entities at run time)."""
    return [{**r, "entity_ids": [0] * len(r["entity_ids"])} for r in records]


def fine_tune(classifier: ERNIEClassifier, tokenizer: Any, records: Sequence[dict], out_dir: str | Path,
              tune: TuneConfig, *, seed: int = 0) -> TrainResult:
    """Fine-tune the whole classifier (encoder, aggregators and head; the entity table stays frozen) through
    :func:`plmkit.train.train`; left in eval mode."""
    classifier.train()
    result = train(classifier, list(records), tune.train_config(out_dir, seed), collate_fn=entity_collate(tokenizer))
    classifier.eval()
    return result


@torch.no_grad()
def predict(classifier: ERNIEClassifier, tokenizer: Any, records: Sequence[dict], *, batch_size: int = 32) -> list[int]:
    """The arg-max class of each record."""
    classifier.eval()
    collate = entity_collate(tokenizer)
    preds: list[int] = []
    for i in range(0, len(records), batch_size):
        batch = collate([{k: v for k, v in r.items() if k != "label"} for r in records[i:i + batch_size]])
        batch = to_device(batch, classifier)
        preds += classifier(**batch).logits.argmax(-1).tolist()
    return preds


def scores(preds: Sequence[int], records: Sequence[dict]) -> dict[str, float]:
    """Accuracy and macro-F1 over the classes of the gold labels (the same classes for every model scored on
    these records, whatever it predicts)."""
    from ...eval.metrics import accuracy, f1

    gold = [r["label"] for r in records]
    return {"accuracy": accuracy(preds, gold), "macro_f1": f1(preds, gold, average="macro", labels=sorted(set(gold))),
            "n": len(gold)}


HEAD_WEIGHTS, HEAD_CONFIG = "classifier.safetensors", "classifier.json"


def save_classifier(classifier: ERNIEClassifier, directory: str | Path, tokenizer: Any = None,
                    entity_ids: list[str] | None = None, info: dict | None = None) -> Path:
    """An ERNIE folder (:func:`~plmkit.knowledge.ernie.save_ernie`) plus the head (``classifier.safetensors``) and
    ``classifier.json`` (labels, multi-label, ``info`` such as the task), written atomically together."""
    from safetensors.torch import save_file

    from ..._io import write_json
    from .model import save_ernie

    if not isinstance(classifier.encoder, ERNIE):
        raise ConfigError("save_classifier saves ERNIE classifiers; save a plain encoder with save_pretrained")

    def head(folder: Path) -> None:
        save_file({k: v.contiguous().cpu() for k, v in classifier.head.state_dict().items()}, str(folder / HEAD_WEIGHTS))
        write_json(folder / HEAD_CONFIG, {"num_labels": classifier.head.out_features,
                                          "multi_label": classifier.multi_label, **(info or {})})

    return save_ernie(classifier.encoder, directory, tokenizer, entity_ids, extra=head)


def load_classifier(directory: str | Path, *, device: str | torch.device | None = None
                    ) -> tuple[ERNIEClassifier, Any, list[str] | None, dict]:
    """``(classifier, tokenizer, entity ids, info)`` from a folder :func:`save_classifier` wrote (on ``device``)."""
    import json

    from safetensors.torch import load_file

    from ...errors import PlmkitError
    from .model import load_ernie

    d = Path(directory)
    if not (d / HEAD_CONFIG).is_file():
        raise PlmkitError(f"{d} holds no {HEAD_CONFIG}; pass a folder written by `plmkit ernie finetune --out`")
    ernie, tok, ids = load_ernie(d, device=device)
    info = json.loads((d / HEAD_CONFIG).read_text())
    clf = ERNIEClassifier(ernie, info["num_labels"], multi_label=info["multi_label"])
    clf.head.load_state_dict(load_file(str(d / HEAD_WEIGHTS)))
    return clf.eval(), tok, ids, info
