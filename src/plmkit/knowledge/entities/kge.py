"""Structural knowledge-graph embeddings (TransE, RotatE) of WordNet or geonames, trained with PyKEEN.

The vectors are a knowledge source for entity-aware models (ERNIE's entity inputs, knowledge plugins), so
training uses every triple of the graph; ``heldout`` optionally keeps some triples back and records their
filtered MRR in ``meta`` as a sanity check.

Cost on 2 shared CPU cores (TransE, dim 100, 16 negatives): geonames (7.6k triples) about 0.5 s an epoch,
the 1-hop neighbourhood of 10k WordNet synsets (49k triples) about 17 s, all of WordNet (218k triples) about
100 s; RotatE costs about as much per float (complex dim 50 ~ TransE dim 100). A GPU is used when there is one.

    >>> emb = train_kge("geonames", "transe", dim=64, epochs=50)               # doctest: +SKIP
    >>> emb.save("kge/geonames-transe")                                         # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from typing import Collection

import torch

from ...errors import ConfigError, PlmkitError
from .embeddings import EntityEmbeddings

KGS = ("wordnet", "geonames")
MODELS = {"transe": "TransE", "rotate": "RotatE"}


@dataclass(frozen=True)
class KGEConfig:
    """PyKEEN training settings. ``dim`` is the model's embedding dimension (RotatE: complex, so its vectors
    hold ``2 * dim`` floats); ``negatives`` uniform corruptions per triple with the self-adversarial loss
    (``nssa``, the RotatE paper's recipe) or PyKEEN's margin ranking loss (``margin``)."""

    model: str = "transe"
    dim: int = 100
    epochs: int = 20
    batch_size: int = 1024
    lr: float = 1e-2
    negatives: int = 16
    loss: str = "nssa"
    heldout: int = 0  # triples kept out of training to measure MRR on (0: train on all)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"unknown KGE model {self.model!r}: pass one of {', '.join(MODELS)}")
        if self.loss not in ("nssa", "margin"):
            raise ConfigError(f"loss must be 'nssa' or 'margin', got {self.loss!r}")
        if min(self.dim, self.epochs, self.batch_size, self.negatives) < 1 or self.lr <= 0 or self.heldout < 0:
            raise ConfigError("dim, epochs, batch_size and negatives must be >= 1, lr > 0 and heldout >= 0")


def kg_triples(kg: str) -> list[tuple[str, str, str]]:
    """All triples of a named graph: ``wordnet`` (synset ids, WN18RR relations) or ``geonames``."""
    if kg == "wordnet":
        from ...data.wordnet import wordnet_graph

        return list(wordnet_graph().triples)
    if kg == "geonames":
        from ...data.geonames import geonames_graph

        return list(geonames_graph()[1])
    raise ConfigError(f"unknown knowledge graph {kg!r}: pass one of {', '.join(KGS)}")


def neighbourhood(triples: list[tuple[str, str, str]], entities: Collection[str]) -> list[tuple[str, str, str]]:
    """The triples touching ``entities`` (a head or tail among them): the entities and their 1-hop neighbours,
    without the edges between two neighbours."""
    keep = set(entities)
    return [tr for tr in triples if tr[0] in keep or tr[2] in keep]


def train_kge(kg: str, model: str = "transe", *, dim: int = 100, epochs: int = 20, batch_size: int = 1024,
              lr: float = 1e-2, negatives: int = 16, loss: str = "nssa", heldout: int = 0, seed: int = 0,
              entities: Collection[str] | None = None, progress: bool = False) -> EntityEmbeddings:
    """Train ``model`` (``transe`` or ``rotate``) on every triple of ``kg`` (``wordnet`` or ``geonames``) or,
    with ``entities``, of their 1-hop neighbourhood, and return its entity and relation vectors. Seeded: the
    same call gives the same vectors on the same machine. ``meta`` records the settings, the graph's size,
    the seconds taken and, with ``heldout`` triples, their filtered MRR / Hits@10 (both sides)."""
    config = KGEConfig(model, dim, epochs, batch_size, lr, negatives, loss, heldout)
    triples = kg_triples(kg)
    if entities is not None:
        triples = neighbourhood(triples, entities)
        if not triples:
            raise ConfigError(f"none of the {len(entities)} entities given occurs in the {kg} graph; pass its ids "
                              "(WordNet: '02084071-n', geonames: 'geo:country:FR')")
    return fit_kge(triples, config, seed=seed, progress=progress, kg=kg)


def fit_kge(triples: list[tuple[str, str, str]], config: KGEConfig, *, seed: int = 0, progress: bool = False,
            kg: str = "custom") -> EntityEmbeddings:
    """Train on labelled ``triples`` with ``config`` (see :func:`train_kge`).

    PyKEEN's pipeline always evaluates: without ``heldout`` it scores a seeded sample of 100 training triples
    (how well the graph was fitted: ``meta["fit_metrics"]``, cheap); with it, the held-out triples
    (``meta["heldout_metrics"]``), filtered on all triples."""
    import numpy as np

    try:
        from pykeen.pipeline import pipeline
        from pykeen.triples import TriplesFactory
    except ImportError:  # pragma: no cover - installed by `make setup`
        raise PlmkitError("PyKEEN is not installed: run `pip install -e '.[peers]'` (or `make setup`)") from None
    triples = sorted(set(triples))
    if len(triples) < 2:
        raise ConfigError("a knowledge graph embedding needs at least two triples")
    factory = TriplesFactory.from_labeled_triples(np.array(triples, dtype=str))

    def encode(part: list[tuple[str, str, str]]):
        ids = [(factory.entity_to_id[h], factory.relation_to_id[r], factory.entity_to_id[t]) for h, r, t in part]
        return TriplesFactory(torch.as_tensor(ids, dtype=torch.long).reshape(-1, 3),
                              entity_to_id=factory.entity_to_id, relation_to_id=factory.relation_to_id)

    if config.heldout:
        from ...data.kg import split_transductive

        split = split_transductive(triples, 0.0, min(config.heldout / len(triples), 0.5), seed)
        training, testing, probe = encode(split.train), encode(split.test), "heldout_metrics"
    else:
        sample = np.random.default_rng(seed).choice(len(triples), min(100, len(triples)), replace=False)
        training, testing, probe = factory, encode([triples[i] for i in sorted(sample)]), "fit_metrics"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    with _quiet_loggers("pykeen", "torch_max_mem"):
        result = pipeline(
            training=training, testing=testing, model=MODELS[config.model],
            model_kwargs={"embedding_dim": config.dim}, optimizer="Adam", optimizer_kwargs={"lr": config.lr},
            loss="nssa" if config.loss == "nssa" else "marginranking",
            negative_sampler="basic", negative_sampler_kwargs={"num_negs_per_pos": config.negatives},
            training_kwargs={"num_epochs": config.epochs, "batch_size": config.batch_size, "use_tqdm": progress},
            evaluator="rankbased", evaluation_kwargs={"batch_size": 256, "use_tqdm": False},
            random_seed=seed, device=device)
    get = result.metric_results.get_metric
    meta = {**asdict(config), "model": MODELS[config.model], "kg": kg, "seed": seed, "triples": len(triples),
            "entities": factory.num_entities, "relations": factory.num_relations,
            "train_seconds": round(time.perf_counter() - t0, 1), "device": device,
            probe: {"n": testing.num_triples, "MRR": round(get("both.realistic.inverse_harmonic_mean_rank"), 4),
                    "Hits@10": round(get("both.realistic.hits_at_10"), 4)}}
    emb = EntityEmbeddings.from_pykeen(result.model, factory, meta)
    if emb.meta.get("complex"):
        emb.meta["complex_dim"] = config.dim
    return emb


@contextlib.contextmanager
def _quiet_loggers(*names: str):
    """Only errors from these loggers, and no pin-memory warning, for the block (PyKEEN logs every evaluation and
    warns about CPU memory and pinning on a machine without a GPU)."""
    import warnings

    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pin_memory.*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
