"""KEPLER: knowledge embeddings from entity descriptions, trained jointly with language modelling.

An entity's embedding is the encoder's representation of its description; relations are a learned
table (or, in the variant, the encoding of a relation description). Triples are scored by TransE,
``gamma - ||h + r - t||_p``, and the knowledge-embedding (KE) loss pushes true triples above
corrupted ones. The total loss is ``L_KE + lm_weight * L_LM`` on the same encoder, so the model
keeps its language skills while its representations absorb the graph. Because entities are read
from text, entities never seen in training get embeddings too (inductive link prediction).

    >>> model, tok = KEPLER.from_pretrained("minilm", num_relations=11)        # doctest: +SKIP
    >>> train_kepler(model, tok, descriptions, triples, TrainConfig("runs/k"), texts=texts)  # doctest: +SKIP

``plmkit.knowledge.kepler_train`` wraps a whole run (graph, LM head, training, export).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..config import JsonConfig
from ..errors import ConfigError, PlmkitError
from ..train import TrainConfig, TrainResult, train
from ..eval.lm import is_causal_lm, lm_loss
from ..train.heads import lm_collate

POOLING = ("auto", "cls", "mean", "last")
_ST_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_lasttoken": "last"}


def default_pooling(lm: nn.Module) -> str:
    """The pooling that fits ``lm``: what a sentence-transformers folder declares (``1_Pooling/config.json``:
    MiniLM's is ``mean``); ``mean`` for a causal LM (its first token sees nothing after itself); otherwise the
    first token, as KEPLER pools RoBERTa."""
    folder = Path(str(getattr(lm.config, "_name_or_path", "") or ""))
    st = folder / "1_Pooling" / "config.json"
    if st.is_file():
        import json

        modes = json.loads(st.read_text(encoding="utf-8"))
        for key, mode in _ST_POOLING.items():
            if modes.get(key):
                return mode
    return "mean" if is_causal_lm(lm) else "cls"


@dataclass
class KEPLERConfig(JsonConfig):
    """Method hyperparameters. ``lm_weight=0`` trains the KE objective alone (the ablation);
    ``ke_weight=0`` trains the LM objective alone on the same data and steps (the control for KEPLER's
    language-modelling claim)."""

    gamma: float = 4.0  # TransE margin
    p_norm: float = 2.0  # norm of h + r - t
    negatives: int = 1  # corrupted heads, and as many corrupted tails, per triple
    filter_negatives: bool = True  # never use a known true triple as a negative
    pooling: str = "auto"  # entity embedding: "cls" (first token), "mean", "last" (last real token), "auto"
    relation_descriptions: bool = False  # relation embedding = encoding of a relation description
    lm_weight: float = 1.0
    ke_weight: float = 1.0
    mlm_probability: float = 0.15
    max_description_tokens: int = 64
    max_text_tokens: int = 64  # LM passages are cut here (the LM side costs more than the KE side per step)

    def __post_init__(self) -> None:
        if self.pooling not in POOLING:
            raise ConfigError(f"pooling must be one of {POOLING}, got {self.pooling!r}")
        if self.negatives < 1:
            raise ConfigError("negatives must be >= 1")
        if self.p_norm <= 0 or self.lm_weight < 0 or self.ke_weight < 0 or not 0 < self.mlm_probability < 1:
            raise ConfigError("p_norm must be > 0, lm_weight and ke_weight >= 0 and mlm_probability in (0, 1)")
        if self.lm_weight == 0 and self.ke_weight == 0:
            raise ConfigError("lm_weight and ke_weight are both 0: nothing would be trained")


def transe_score(h: torch.Tensor, r: torch.Tensor, t: torch.Tensor, gamma: float, p: float = 2.0) -> torch.Tensor:
    """``gamma - ||h + r - t||_p`` over the last dimension (broadcasting)."""
    return gamma - torch.linalg.vector_norm(h + r - t, ord=p, dim=-1)


def kepler_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """KEPLER's KE loss: ``(-mean log sigmoid(pos) - mean log sigmoid(-neg)) / 2``.

    ``positive`` is ``[B]``; ``negative`` is ``[B, n]`` (averaged per triple, then over the batch).
    """
    return (-F.logsigmoid(positive).mean() - F.logsigmoid(-negative).mean(dim=-1).mean()) / 2


def _relation_table(num_relations: int, dim: int, gamma: float, seed: int = 0) -> nn.Embedding:
    """Relation vectors drawn uniformly from +-(gamma + 2) / dim, as KEPLER's code initialises them
    (from ``seed``, not the global RNG)."""
    bound = (gamma + 2.0) / dim
    g = torch.Generator().manual_seed(seed)
    weight = (torch.rand(num_relations, dim, generator=g) * 2 - 1) * bound
    return nn.Embedding.from_pretrained(weight, freeze=False)


class NegativeSampler:
    """Corrupts heads and tails with entities drawn uniformly from ``entities``.

    With ``filtered=True`` a corruption that forms a known true triple (or repeats the original
    entity) is redrawn, up to ``max_tries`` times. Draws are a function of the batch and ``seed``
    only, so a resumed run sees the same negatives.
    """

    def __init__(self, entities: Sequence[int] | torch.Tensor, known: torch.Tensor, *, filtered: bool = True,
                 seed: int = 0, max_tries: int = 20):
        self.entities = torch.as_tensor(entities, dtype=torch.long)
        if len(self.entities) < 2:
            raise ConfigError("negative sampling needs at least two entities")
        self.known = {tuple(x) for x in torch.as_tensor(known).reshape(-1, 3).tolist()}
        self.filtered, self.seed, self.max_tries = filtered, seed, max_tries

    def _generator(self, triples: torch.Tensor) -> torch.Generator:
        key = int((triples.reshape(-1).double() * torch.arange(1, triples.numel() + 1).double().sqrt()).sum() * 1000)
        return torch.Generator().manual_seed((key + self.seed) % (2**63 - 1))

    def corrupt(self, triples: torch.Tensor, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``(heads, tails)``, each ``[B, n]`` entity ids: corrupted heads and corrupted tails."""
        g = self._generator(triples)
        out = []
        for side in (0, 2):
            draw = self.entities[torch.randint(len(self.entities), (len(triples), n), generator=g)]
            if self.filtered:
                for i, (h, r, t) in enumerate(triples.tolist()):
                    for j in range(n):
                        for _ in range(self.max_tries):
                            e = int(draw[i, j])
                            cand = (e, r, t) if side == 0 else (h, r, e)
                            if e != (h if side == 0 else t) and cand not in self.known:
                                break
                            draw[i, j] = self.entities[torch.randint(len(self.entities), (1,), generator=g)]
            out.append(draw)
        return out[0], out[1]


class KEPLER(nn.Module):
    """An encoder (with its LM head) plus a relation table, scoring triples with TransE.

    ``lm`` is a Hugging Face model with a language-modelling head (masked LM for encoders, causal
    LM for decoders); its base model encodes descriptions.
    """

    def __init__(self, lm: nn.Module, num_relations: int, config: KEPLERConfig | None = None, seed: int = 0):
        super().__init__()
        self.lm = lm
        config = config or KEPLERConfig()
        if config.pooling == "auto":  # resolved here, so a saved run records what it used
            config = KEPLERConfig.from_dict({**config.to_dict(), "pooling": default_pooling(lm)})
        if config.pooling == "cls" and is_causal_lm(lm):
            raise ConfigError("pooling='cls' on a causal LM gives every description the same vector (its first "
                              "token sees no later token): use pooling='mean', 'last' or 'auto'")
        self.config = config
        self.relation_embeddings = _relation_table(num_relations, lm.config.hidden_size, self.config.gamma, seed)

    @classmethod
    def from_pretrained(cls, name: str, num_relations: int, config: KEPLERConfig | None = None,
                        **kwargs: Any) -> tuple["KEPLER", Any]:
        """(model, tokenizer) from an asset name, folder or hub id. The LM head is the checkpoint's, or
        a new random one when it has none (``plmkit.assets.missing_head`` tells; fit it with
        ``plmkit.train.heads.fit_lm_head``, as ``kepler_train`` does)."""
        from ..assets import load_model

        lm, tok = load_model(name, task=_lm_task(name), **kwargs)
        return cls(lm, num_relations, config), tok

    @property
    def encoder(self) -> nn.Module:
        return getattr(self.lm, "base_model", self.lm)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled description embeddings ``[N, hidden]``: first token, mean over real tokens, or the last real
        token (left or right padding)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.config.pooling == "cls":
            return hidden[:, 0]
        if self.config.pooling == "last":
            positions = torch.arange(hidden.shape[1], device=hidden.device) * attention_mask.to(torch.long)
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), positions.argmax(-1)]
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)

    def relations(self, relation_inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``[R, hidden]`` relation vectors: the table, or encoded relation descriptions."""
        if self.config.relation_descriptions:
            if relation_inputs is None:
                raise ConfigError("relation_descriptions=True needs the tokenized relation descriptions")
            return self.encode(relation_inputs["input_ids"], relation_inputs["attention_mask"])
        return self.relation_embeddings.weight

    def ke_loss(self, ke: dict[str, torch.Tensor]) -> torch.Tensor:
        """KE loss of a collated batch (see :class:`KEPLERCollator`)."""
        ents = self.encode(ke["input_ids"], ke["attention_mask"])
        rels = self.relations(ke.get("relations"))
        return triple_loss(ents, rels, ke, self.config)

    def forward(self, ke: dict[str, torch.Tensor], lm: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        c = self.config
        if c.ke_weight == 0 and (lm is None or c.lm_weight == 0):
            raise ConfigError("ke_weight=0 trains the LM objective only: pass LM texts (and lm_weight > 0)")
        loss = c.ke_weight * self.ke_loss(ke) if c.ke_weight > 0 else None
        if lm is not None and c.lm_weight > 0:
            part = c.lm_weight * lm_loss(self.lm, lm)
            loss = part if loss is None else loss + part
        return loss

    @torch.no_grad()
    def embed_texts(self, tokenizer, texts: Sequence[str], batch_size: int = 128, progress: bool = False,
                    desc: str = "embedding") -> torch.Tensor:
        """Embeddings of ``texts`` (``[len(texts), hidden]``, float32), batched by length."""
        from tqdm.auto import tqdm

        was_training = self.training
        self.eval()
        ids = tokenizer(list(texts), truncation=True, max_length=self.config.max_description_tokens)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = torch.empty(len(ids), self.lm.config.hidden_size)
        device = next(self.parameters()).device
        for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
            idx = order[s:s + batch_size]
            b = tokenizer.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            out[idx] = self.encode(b["input_ids"].to(device), b["attention_mask"].to(device)).float().cpu()
        self.train(was_training)
        return out

    @torch.no_grad()
    def relation_vectors(self, tokenizer=None, relation_texts: Sequence[str] | None = None) -> torch.Tensor:
        if self.config.relation_descriptions:
            if tokenizer is None or relation_texts is None:
                raise ConfigError("relation_descriptions=True: pass the tokenizer and the relation descriptions")
            return self.embed_texts(tokenizer, relation_texts)
        return self.relation_embeddings.weight.detach().float().cpu().clone()


def _lm_task(name: str) -> str:
    """``masked-lm`` for families with a masked-LM class (BERT, RoBERTa, ...), else ``causal-lm``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    from ..assets import load_config

    return "masked-lm" if load_config(name).model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES else "causal-lm"


def triple_loss(entities: torch.Tensor, relations: torch.Tensor, ke: dict[str, torch.Tensor],
                config: KEPLERConfig) -> torch.Tensor:
    """KE loss given the embeddings of the batch's unique entities and of all relations.

    ``ke["heads"]``/``["tails"]`` index rows of ``entities`` (``[B]``), ``ke["neg_heads"]``/``["neg_tails"]``
    likewise (``[B, n]``), ``ke["rels"]`` rows of ``relations``.
    """
    h, t, r = entities[ke["heads"]], entities[ke["tails"]], relations[ke["rels"]]
    pos = transe_score(h, r, t, config.gamma, config.p_norm)
    neg_h = transe_score(entities[ke["neg_heads"]], r.unsqueeze(1), t.unsqueeze(1), config.gamma, config.p_norm)
    neg_t = transe_score(h.unsqueeze(1), r.unsqueeze(1), entities[ke["neg_tails"]], config.gamma, config.p_norm)
    return kepler_loss(pos, torch.cat([neg_h, neg_t], dim=1))


class KEPLERCollator:
    """Builds training batches: each item is ``{"triple": (h, r, t), "text": token ids or None}``.

    The KE part holds each entity's description once (positives and negatives share rows); the LM
    part masks the text with the tokenizer's MLM collator (or shifts it for a causal LM).
    """

    def __init__(self, tokenizer, description_ids: Sequence[Sequence[int]], sampler: NegativeSampler,
                 config: KEPLERConfig, relation_ids: Sequence[Sequence[int]] | None = None, causal: bool = False):
        self.tokenizer, self.description_ids, self.sampler, self.config = tokenizer, description_ids, sampler, config
        self.relation_ids = relation_ids
        self.lm_collate = lm_collate(tokenizer, causal, config.mlm_probability)

    def __call__(self, items: list[dict]) -> dict[str, Any]:
        triples = torch.tensor([it["triple"] for it in items], dtype=torch.long)
        neg_h, neg_t = self.sampler.corrupt(triples, self.config.negatives)
        ents, inverse = torch.unique(torch.cat([triples[:, 0], triples[:, 2], neg_h.reshape(-1), neg_t.reshape(-1)]),
                                     return_inverse=True)
        b, n = len(triples), self.config.negatives
        desc = self.tokenizer.pad({"input_ids": [self.description_ids[e] for e in ents.tolist()]}, return_tensors="pt")
        ke = {"input_ids": desc["input_ids"], "attention_mask": desc["attention_mask"], "rels": triples[:, 1],
              "heads": inverse[:b], "tails": inverse[b:2 * b], "neg_heads": inverse[2 * b:2 * b + b * n].reshape(b, n),
              "neg_tails": inverse[2 * b + b * n:].reshape(b, n)}
        if self.config.relation_descriptions:
            rel = self.tokenizer.pad({"input_ids": list(self.relation_ids)}, return_tensors="pt")
            ke["relations"] = {"input_ids": rel["input_ids"], "attention_mask": rel["attention_mask"]}
        texts = [it["text"] for it in items if it.get("text") is not None]
        out: dict[str, Any] = {"ke": ke}
        if texts and self.config.lm_weight > 0:
            out["lm"] = dict(self.lm_collate([{"input_ids": t} for t in texts]))
        return out


def kepler_loss_fn(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    return model(batch["ke"], batch.get("lm"))


class FrozenTransE(nn.Module):
    """TransE over fixed entity vectors (e.g. a frozen encoder's description embeddings): only the
    relation table learns. The baseline that shows what KE training of the encoder adds."""

    def __init__(self, entity_vectors: torch.Tensor, num_relations: int, config: KEPLERConfig | None = None,
                 seed: int = 0):
        super().__init__()
        self.config = config or KEPLERConfig()
        self.register_buffer("entity_vectors", entity_vectors.float())
        self.relation_embeddings = _relation_table(num_relations, entity_vectors.shape[1], self.config.gamma, seed)

    def forward(self, ke: dict[str, torch.Tensor], lm: Any = None) -> torch.Tensor:
        return triple_loss(self.entity_vectors, self.relation_embeddings.weight, ke, self.config)


def frozen_collate(sampler: NegativeSampler, negatives: int) -> Callable[[list[dict]], dict]:
    """Batches for :class:`FrozenTransE`: entity ids index the stored vectors directly."""
    def collate(items: list[dict]) -> dict:
        triples = torch.tensor([it["triple"] for it in items], dtype=torch.long)
        neg_h, neg_t = sampler.corrupt(triples, negatives)
        return {"ke": {"heads": triples[:, 0], "rels": triples[:, 1], "tails": triples[:, 2],
                       "neg_heads": neg_h, "neg_tails": neg_t}}

    return collate


class TransEScorer:
    """Scores every entity as the tail of ``(h, r, ?)`` or the head of ``(?, r, t)`` from stored
    embeddings, for :func:`plmkit.eval.link_prediction`."""

    def __init__(self, entities: torch.Tensor, relations: torch.Tensor, gamma: float = 4.0, p: float = 2.0):
        self.entities, self.relations, self.gamma, self.p = entities.float(), relations.float(), gamma, p

    def tails(self, h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return self.gamma - torch.cdist(self.entities[h] + self.relations[r], self.entities, p=self.p)

    def heads(self, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # ||h + r - t|| = ||h - (t - r)||
        return self.gamma - torch.cdist(self.entities[t] - self.relations[r], self.entities, p=self.p)


def save_embeddings(directory: str | Path, entities: torch.Tensor, relations: torch.Tensor, vocab,
                    config: KEPLERConfig) -> Path:
    """Write ``embeddings.safetensors`` (``entity_embeddings``, ``relation_embeddings``), PyKEEN-style
    ``entity_to_id.tsv.gz``/``relation_to_id.tsv.gz`` and the config, atomically per file."""
    from safetensors.torch import save_file

    from .._io import atomic_path

    d = Path(directory)
    if len(vocab.entities) != len(entities) or len(vocab.relations) != len(relations):
        raise ValueError("the id maps and the embedding tables differ in size")
    with atomic_path(d / "embeddings.safetensors") as tmp:
        save_file({"entity_embeddings": entities.float().contiguous(), "relation_embeddings": relations.float().contiguous()},
                  str(tmp), metadata={"scoring": "transe", "gamma": str(config.gamma), "p_norm": str(config.p_norm)})
    vocab.save(d)
    config.to_json(d / "kepler_config.json")
    return d


def load_embeddings(directory: str | Path):
    """``(entities, relations, vocab, config)`` written by :func:`save_embeddings`."""
    from safetensors.torch import load_file

    from ..data.kg import KGVocab

    d = Path(directory)
    if not (d / "embeddings.safetensors").exists():
        raise PlmkitError(f"no KEPLER embeddings in {d}: run `plmkit kepler train --out DIR` first and pass that DIR")
    t = load_file(str(d / "embeddings.safetensors"))
    return (t["entity_embeddings"], t["relation_embeddings"], KGVocab.load(d),
            KEPLERConfig.from_json(d / "kepler_config.json"))


def check_distinct_embeddings(model: KEPLER, tokenizer, descriptions: Sequence[str], n: int = 32) -> None:
    """Refuse to train when distinct descriptions all get the same vector (a pooling that reads a position
    no description changes): TransE could then learn nothing about entities."""
    texts = list(dict.fromkeys(descriptions))[:n]
    if len(texts) < 2:
        return
    e = model.embed_texts(tokenizer, texts)
    spread = (e - e.mean(0)).norm(dim=-1).max()
    if spread <= 1e-6 * e.norm(dim=-1).mean().clamp(min=1e-12):
        raise ConfigError(f"pooling='{model.config.pooling}' gives {len(texts)} different descriptions the same "
                          "embedding; choose another pooling (mean, last) for this encoder")


def train_kepler(model: KEPLER, tokenizer, descriptions: Sequence[str], triples: torch.Tensor, config: TrainConfig,
                 *, texts: Sequence[str] | None = None, relation_texts: Sequence[str] | None = None,
                 negative_entities: Sequence[int] | torch.Tensor | None = None,
                 relation_lr: float | None = None) -> TrainResult:
    """Train ``model`` on ``triples`` (``[n, 3]`` ids into ``descriptions`` and the relation table)
    with the KE loss plus, when ``texts`` are given and ``lm_weight > 0``, the LM loss on them.

    Negatives are drawn from ``negative_entities`` (default: the entities of ``triples``, so an
    inductive run never reads a held-out entity) and filtered against ``triples``. ``relation_lr``
    gives the relation table its own learning rate (a fine-tuning lr barely moves a freshly
    initialised table in a short run). Runs on plmkit's accelerate loop: checkpoints, resume and
    ``accelerate launch`` come with it.
    """
    kc = model.config
    triples = torch.as_tensor(triples, dtype=torch.long).reshape(-1, 3)
    if negative_entities is None:
        negative_entities = torch.unique(triples[:, [0, 2]])
    if kc.relation_descriptions and relation_texts is None:
        raise ConfigError("relation_descriptions=True: pass relation_texts (one description per relation id)")
    sampler = NegativeSampler(negative_entities, triples, filtered=kc.filter_negatives, seed=config.seed)
    desc_ids = tokenizer(list(descriptions), truncation=True, max_length=kc.max_description_tokens)["input_ids"]
    rel_ids = (tokenizer(list(relation_texts), truncation=True, max_length=kc.max_description_tokens)["input_ids"]
               if kc.relation_descriptions else None)
    text_ids = (tokenizer(list(texts), truncation=True, max_length=kc.max_text_tokens)["input_ids"]
                if texts and kc.lm_weight > 0 else [None])
    items = [{"triple": tuple(tr), "text": text_ids[i % len(text_ids)]} for i, tr in enumerate(triples.tolist())]
    collate = KEPLERCollator(tokenizer, desc_ids, sampler, kc, rel_ids, causal=is_causal_lm(model.lm))
    optimizer = None
    if relation_lr is not None:
        table = model.relation_embeddings.weight
        rest = [p for p in model.parameters() if p.requires_grad and p is not table]
        optimizer = torch.optim.AdamW([{"params": rest, "lr": config.lr},
                                       {"params": [table], "lr": relation_lr, "weight_decay": 0.0}],
                                      lr=config.lr, weight_decay=config.weight_decay)
    check_distinct_embeddings(model, tokenizer, descriptions)
    model.train()
    result = train(model, items, config, kepler_loss_fn, collate_fn=collate, optimizer=optimizer)
    model.eval()
    return result


def train_frozen_transe(entity_vectors: torch.Tensor, triples: torch.Tensor, num_relations: int, config: TrainConfig,
                        kepler_config: KEPLERConfig | None = None) -> FrozenTransE:
    """Fit only relation vectors over fixed entity vectors with the KEPLER loss (the frozen baseline)."""
    model = FrozenTransE(entity_vectors, num_relations, kepler_config, seed=config.seed)
    triples = torch.as_tensor(triples, dtype=torch.long).reshape(-1, 3)
    sampler = NegativeSampler(torch.unique(triples[:, [0, 2]]), triples, filtered=model.config.filter_negatives,
                              seed=config.seed)
    train(model, [{"triple": tuple(t)} for t in triples.tolist()], config, kepler_loss_fn,
          collate_fn=frozen_collate(sampler, model.config.negatives))
    return model.eval()
