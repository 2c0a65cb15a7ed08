"""Structural knowledge-embedding peers (PyKEEN's TransE, RotatE, ...) trained on plmkit's splits.

They learn one vector per training entity, so they cannot embed an entity first seen at test
time: :func:`pykeen_link_prediction` refuses inductive splits instead of reporting a number.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from ..data.kg import DescribedKG, KGVocab
from ..errors import ConfigError, PlmkitError


def triples_factory(graph: DescribedKG, vocab: KGVocab, part: str = "train"):
    """A PyKEEN ``TriplesFactory`` of ``graph``'s ``part`` triples with ``vocab``'s ids."""
    from pykeen.triples import TriplesFactory

    return TriplesFactory(vocab.encode(getattr(graph.split, part)), entity_to_id=vocab.entity_id,
                          relation_to_id=vocab.relation_id)


def pykeen_link_prediction(graph: DescribedKG, model: str = "TransE", *, epochs: int = 100, dim: int = 200,
                           batch_size: int = 512, lr: float = 1e-2, negatives: int = 32, loss: str = "nssa",
                           seed: int = 0, model_kwargs: dict | None = None, progress: bool = False) -> dict[str, Any]:
    """Train a PyKEEN model on ``graph``'s training triples and evaluate it on the test triples
    with PyKEEN's own filtered rank-based evaluator (filtered on train+valid+test, realistic ties).
    The defaults follow the RotatE paper's recipe: ``negatives`` uniform corruptions per triple
    and the self-adversarial negative-sampling loss (``nssa``).

    Returns ``{"head"|"tail"|"both": {"MR", "MRR", "Hits@1/3/10", "n"}, "seconds", "model"}``
    plus ``"pykeen_model"`` (the trained model, e.g. for scoring with plmkit's evaluator).
    """
    try:
        from pykeen.evaluation import RankBasedEvaluator
        from pykeen.pipeline import pipeline
    except ImportError as e:  # pragma: no cover - installed by `make setup`
        raise PlmkitError("PyKEEN is not installed: run `pip install -e '.[peers]'` (or `make setup`)") from e
    if graph.split.inductive:
        raise ConfigError(f"{model} learns a vector per training entity and cannot embed the unseen entities "
                          "of an inductive split; evaluate it on a transductive split")
    vocab = graph.vocab
    train, valid, test = (triples_factory(graph, vocab, p) for p in ("train", "valid", "test"))
    t0 = time.perf_counter()
    result = pipeline(
        training=train, validation=valid, testing=test, model=model,
        model_kwargs={"embedding_dim": dim, **(model_kwargs or {})},
        optimizer="Adam", optimizer_kwargs={"lr": lr}, loss=loss,
        negative_sampler="basic", negative_sampler_kwargs={"num_negs_per_pos": negatives},
        training_kwargs={"num_epochs": epochs, "batch_size": batch_size, "use_tqdm": progress},
        evaluator=RankBasedEvaluator, evaluation_kwargs={"batch_size": 256, "use_tqdm": progress},
        random_seed=seed, device="cpu" if not torch.cuda.is_available() else "cuda",
    )
    out: dict[str, Any] = {side: pykeen_metrics(result.metric_results, side) for side in ("head", "tail", "both")}
    out.update(model=model, epochs=epochs, dim=dim, seconds=round(time.perf_counter() - t0, 1),
               pykeen_model=result.model)
    return out


def pykeen_metrics(metric_results, side: str = "both", ties: str = "realistic") -> dict[str, float]:
    """PyKEEN's rank-based results in plmkit's metric names (MR, MRR, Hits@k, n)."""
    get = metric_results.get_metric
    out = {"MR": get(f"{side}.{ties}.arithmetic_mean_rank"), "MRR": get(f"{side}.{ties}.inverse_harmonic_mean_rank")}
    out.update({f"Hits@{k}": get(f"{side}.{ties}.hits_at_{k}") for k in (1, 3, 10)})
    out["n"] = int(get(f"{side}.{ties}.count"))
    return out
