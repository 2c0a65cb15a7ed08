"""KEPLER runs on disk: train on a described graph, export embeddings, evaluate link prediction.

A run directory holds everything an evaluation needs::

    DIR/graph/        the split graph (train/valid/test.tsv, entity and relation descriptions, kg.json)
    DIR/model/        the trained encoder + LM head (Hugging Face layout, safetensors) and tokenizer
    DIR/embeddings/   embeddings.safetensors (every entity, incl. unseen ones; relations) + PyKEEN-style id maps
    DIR/run.json      settings, timings and the language-modelling losses before and after

``plmkit kepler train`` and ``plmkit kepler eval`` call :func:`kepler_train` and :func:`kepler_evaluate`.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_path, write_json
from ..data.kg import DescribedKG
from ..errors import ConfigError, PlmkitError
from ..eval.ranking import link_prediction
from ..train import TrainConfig
from .kepler import (
    KEPLER,
    KEPLERConfig,
    TransEScorer,
    load_embeddings,
    save_embeddings,
    train_frozen_transe,
    train_kepler,
)

KGS = ("wordnet",)


def load_kg(kg: str, n_entities: int | None = 10_000, inductive: bool = False, seed: int = 0) -> DescribedKG:
    """A described graph by name (``wordnet``) or from a folder written by :meth:`DescribedKG.save`."""
    if kg == "wordnet":
        from ..data.wordnet import wordnet_kg

        return wordnet_kg(n_entities, inductive, seed)
    if (Path(kg) / "kg.json").exists():
        return DescribedKG.load(kg)
    raise ConfigError(f"unknown graph {kg!r}: pass one of {KGS} or a folder with kg.json, train.tsv, valid.tsv, "
                      "test.tsv and entity_descriptions.tsv (see DescribedKG.save)")


def lm_texts(n_train: int = 4000, n_heldout: int = 200, seed: int = 0) -> tuple[list[str], list[str]]:
    """Training and held-out passages of the bundled English text, for the LM objective."""
    from ..data.text import english_corpus

    passages = english_corpus(seed=seed)
    if len(passages) < n_heldout + 10:
        raise PlmkitError("too little English text installed for the LM objective: run `plmkit assets install`")
    return passages[n_heldout:n_heldout + n_train], passages[:n_heldout]


def kepler_train(out_dir: str | Path, *, kg: str | DescribedKG = "wordnet", encoder: str = "minilm",
                 entities: int | None = 10_000, inductive: bool = False, config: KEPLERConfig | None = None,
                 steps: int = 1000, batch_size: int = 16, lr: float = 5e-5, relation_lr: float | None = 1e-2,
                 head_steps: int | None = None, warm_start_steps: int = 300,
                 mixed_precision: str = "auto", save_every: int | None = None, seed: int = 0,
                 progress: bool = True) -> dict[str, Any]:
    """Train KEPLER on a graph and export embeddings for every entity; returns the run summary.

    ``head_steps`` trains a fresh LM head on the frozen encoder first (default: 300 steps when the
    checkpoint has no LM head, as with MiniLM, else none), so the LM loss before KE training is a
    fair reference for the loss after it. ``warm_start_steps`` first fits the relation table on the
    start encoder's (fixed) description embeddings of the training entities, so joint training does
    not begin by pulling the encoder towards random relation vectors (0 turns this off; it does
    not apply with relation descriptions). ``mixed_precision="auto"`` (default) autocasts the
    forward pass in bf16 where this machine runs it natively (``plmkit.device.bf16_is_fast``: GPUs, CPUs
    with AMX/AVX512-BF16), else trains in float32. ``save_every``
    keeps checkpoints under ``DIR/train/checkpoints``; rerunning the same command resumes from the newest.
    """
    from ..assets import missing_head
    from ..eval.lm import is_causal_lm, masked_lm_loss
    from ..train.heads import fit_lm_head

    out = Path(out_dir)
    config = config or KEPLERConfig()
    graph = kg if isinstance(kg, DescribedKG) else load_kg(kg, entities, inductive, seed)
    graph.save(out / "graph")
    vocab = graph.vocab
    model, tok = KEPLER.from_pretrained(encoder, len(vocab.relations), config)
    texts, heldout = lm_texts(seed=seed)
    summary: dict[str, Any] = {"encoder": encoder, "graph": graph.name, "inductive": graph.split.inductive,
                               "entities": len(vocab), "relations": len(vocab.relations),
                               "train_triples": len(graph.split.train), "kepler_config": asdict(model.config),
                               "steps": steps, "batch_size": batch_size, "lr": lr, "relation_lr": relation_lr,
                               "mixed_precision": mixed_precision,
                               "seed": seed}
    causal = is_causal_lm(model.lm)

    def heldout_lm_loss() -> float | None:
        return None if causal else masked_lm_loss(model.lm, tok, heldout, seed=seed)

    if head_steps is None:
        head_steps = 300 if missing_head(model.lm, encoder) else 0
    if head_steps:
        t0 = time.perf_counter()
        summary["lm_loss_random_head"] = heldout_lm_loss()
        fit_lm_head(model.lm, tok, texts, out / "lm_head", steps=head_steps, seed=seed, progress=progress)
        summary["head_seconds"] = round(time.perf_counter() - t0, 1)
    summary["head_steps"] = head_steps
    summary["lm_loss_before"] = heldout_lm_loss()
    t0 = time.perf_counter()
    descriptions = graph.entity_texts(vocab)
    train_ids = vocab.encode(graph.split.train)
    if warm_start_steps and not config.relation_descriptions:
        warm_start_relations(model, tok, descriptions, train_ids, warm_start_steps, out / "warm_start",
                             seed=seed, progress=progress)
    summary["warm_start_steps"] = warm_start_steps if not config.relation_descriptions else 0
    # negatives come from the training triples' entities only, so an inductive run never reads a test entity
    result = train_kepler(model, tok, descriptions, train_ids,
                          TrainConfig(out_dir=str(out / "train"), max_steps=steps, batch_size=batch_size, lr=lr,
                                      warmup_steps=max(1, steps // 10), seed=seed, progress=progress,
                                      log_every=max(1, steps // 20), mixed_precision=mixed_precision,
                                      save_every=save_every),
                          texts=texts, relation_texts=graph.relation_list(vocab), relation_lr=relation_lr)
    summary.update(train_seconds=round(time.perf_counter() - t0, 1), losses=result.losses,
                   lm_loss_after=heldout_lm_loss())
    t0 = time.perf_counter()
    ents = model.embed_texts(tok, descriptions, progress=progress, desc="embedding entities")
    rels = model.relation_vectors(tok, graph.relation_list(vocab))
    summary["embed_seconds"] = round(time.perf_counter() - t0, 1)
    save_embeddings(out / "embeddings", ents, rels, vocab, config)
    save_model(model, tok, out / "model")
    write_json(out / "run.json", summary)
    return summary


def warm_start_relations(model: KEPLER, tokenizer, descriptions: list[str], triples: torch.Tensor, steps: int,
                         out_dir: str | Path, seed: int = 0, progress: bool = False) -> None:
    """Set ``model``'s relation table to TransE relations fitted on its current, fixed embeddings of
    the entities in ``triples`` (other rows of the embedding table stay zero and are never read)."""
    used = torch.unique(triples[:, [0, 2]])
    vectors = torch.zeros(len(descriptions), model.lm.config.hidden_size)
    vectors[used] = model.embed_texts(tokenizer, [descriptions[i] for i in used.tolist()], progress=progress,
                                      desc="warm start: embedding")
    fitted = train_frozen_transe(vectors, triples, model.relation_embeddings.num_embeddings,
                                 TrainConfig(out_dir=str(out_dir), max_steps=steps, batch_size=128, lr=1e-2, seed=seed,
                                             progress=progress, resume=False), model.config)
    with torch.no_grad():
        model.relation_embeddings.weight.copy_(fitted.relation_embeddings.weight)


def save_model(model: KEPLER, tokenizer, directory: str | Path) -> Path:
    """The encoder with its LM head in Hugging Face layout (safetensors), the tokenizer, the
    relation table (``kepler_relations.safetensors``) and the KEPLER config."""
    from safetensors.torch import save_file

    d = Path(directory)
    model.lm.save_pretrained(d, safe_serialization=True)
    tokenizer.save_pretrained(d)
    with atomic_path(d / "kepler_relations.safetensors") as tmp:
        save_file({"relation_embeddings": model.relation_embeddings.weight.detach().contiguous()}, str(tmp))
    model.config.to_json(d / "kepler_config.json")
    return d


def load_model(directory: str | Path) -> tuple[KEPLER, Any]:
    """(KEPLER, tokenizer) saved by :func:`save_model`, ready to embed texts or train further."""
    from safetensors.torch import load_file

    from ..assets import load_model as load_lm
    from .kepler import _lm_task

    d = Path(directory)
    if not (d / "kepler_config.json").exists():
        raise PlmkitError(f"{d} holds no KEPLER model: pass a run's model folder (DIR/model)")
    rel = load_file(str(d / "kepler_relations.safetensors"))["relation_embeddings"]
    lm, tok = load_lm(str(d), task=_lm_task(str(d)))
    model = KEPLER(lm, rel.shape[0], KEPLERConfig.from_json(d / "kepler_config.json"))
    with torch.no_grad():
        model.relation_embeddings.weight.copy_(rel)
    return model.eval(), tok


def evaluation_triples(graph: DescribedKG, vocab, split: str) -> dict[str, Any]:
    """What the protocol ranks and filters: transductive = every entity, filtered on train+valid+test;
    inductive = the entities of the evaluated part's own graph, filtered on that graph."""
    if split not in ("valid", "test"):
        raise ConfigError("split must be 'valid' or 'test'")
    part = getattr(graph.split, split)
    if graph.split.inductive:
        return {"triples": vocab.encode(part), "filter": vocab.encode(part).tolist(),
                "candidates": sorted(vocab.entity_id[e] for e in graph.split.entities(split))}
    return {"triples": vocab.encode(part), "filter": vocab.encode(graph.split.all_triples()).tolist(),
            "candidates": None}


def kepler_evaluate(run_dir: str | Path, split: str = "test", inductive: bool | None = None,
                    progress: bool = False) -> dict[str, Any]:
    """Filtered link prediction (MR, MRR, Hits@1/3/10; head, tail, both) of a run's embeddings."""
    run = Path(run_dir)
    if not (run / "graph" / "kg.json").exists():
        raise PlmkitError(f"{run} is not a KEPLER run: train one with `plmkit kepler train --out {run}`")
    graph = DescribedKG.load(run / "graph")
    if inductive is not None and inductive != graph.split.inductive:
        trained = "inductive" if graph.split.inductive else "transductive"
        raise ConfigError(f"this run was trained on the {trained} split and is evaluated that way: "
                          f"{'drop' if inductive else 'pass'} --inductive, or train another run "
                          f"{'with' if inductive else 'without'} --inductive")
    ents, rels, vocab, config = load_embeddings(run / "embeddings")
    return evaluate_embeddings(graph, vocab, ents, rels, config, split, progress)


def evaluate_embeddings(graph: DescribedKG, vocab, entities: torch.Tensor, relations: torch.Tensor,
                        config: KEPLERConfig, split: str = "test", progress: bool = False) -> dict[str, Any]:
    """TransE link prediction of ``entities``/``relations`` (rows in ``vocab`` order) under the
    protocol of ``graph``'s split (see :func:`evaluation_triples`)."""
    ev = evaluation_triples(graph, vocab, split)
    scorer = TransEScorer(entities, relations, config.gamma, config.p_norm)
    metrics = link_prediction(scorer.tails, scorer.heads, ev["triples"], ev["filter"], len(vocab),
                              candidates=ev["candidates"], progress=progress)
    return {"split": split, "setting": "inductive" if graph.split.inductive else "transductive",
            "candidates": len(ev["candidates"]) if ev["candidates"] is not None else len(vocab), **metrics}
