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


def load_kg(kg: str, n_entities: int | None = 10_000, inductive: bool = False, seed: int = 0,
            max_train: int | None = None) -> DescribedKG:
    """A described graph by name (``wordnet``), from a folder written by :meth:`DescribedKG.save`, or
    from a folder holding a Wikidata5M release (``inductive`` picks its split; ``max_train`` samples
    its training triples; see :func:`plmkit.data.wikidata5m.wikidata5m_kg`)."""
    from ..data.wikidata5m import is_wikidata5m, wikidata5m_kg

    if kg == "wordnet":
        from ..data.wordnet import wordnet_kg

        return wordnet_kg(n_entities, inductive, seed)
    if (Path(kg) / "kg.json").exists():
        return DescribedKG.load(kg)
    if is_wikidata5m(kg):
        return wikidata5m_kg(kg, "inductive" if inductive else "transductive", max_train=max_train, seed=seed)
    raise ConfigError(f"unknown graph {kg!r}: pass one of {KGS}, a folder with kg.json, train.tsv, valid.tsv, "
                      "test.tsv and entity_descriptions.tsv (see DescribedKG.save), or a folder with the "
                      "extracted Wikidata5M files (wikidata5m_text.txt, wikidata5m_<setting>_<part>.txt)")


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
                 max_train: int | None = None, progress: bool = True) -> dict[str, Any]:
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
    ``max_train`` samples that many training triples of a Wikidata5M release (see :func:`load_kg`).
    """
    from ..assets import missing_head
    from ..eval.lm import is_causal_lm, masked_lm_loss
    from ..train.heads import fit_lm_head

    out = Path(out_dir)
    config = config or KEPLERConfig()
    graph = kg if isinstance(kg, DescribedKG) else load_kg(kg, entities, inductive, seed, max_train)
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
    run = _check_run(run_dir)
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


# --- using a trained run: embed new entities, predict links, hand the embeddings to PyKEEN ---------------

def read_descriptions(path: str | Path) -> dict[str, str]:
    """Entity descriptions from a text file: ``label<TAB>description`` a line (the layout of
    ``graph/entity_descriptions.tsv``), or one description a line (labelled ``line1``, ``line2``, ...)."""
    from ..errors import read_text_utf8

    out: dict[str, str] = {}
    for n, line in enumerate(read_text_utf8(Path(path), "descriptions file").splitlines(), 1):
        if not line.strip():
            continue
        label, sep, text = line.partition("\t")
        label, text = (label.strip(), text.strip()) if sep else (f"line{n}", line.strip())
        if not text:
            raise ConfigError(f"{path}:{n}: empty description for {label!r}")
        if label in out:
            raise ConfigError(f"{path}:{n}: label {label!r} appears twice")
        out[label] = text
    if not out:
        raise ConfigError(f"{path} holds no descriptions: write one 'label<TAB>description' (or one description) a line")
    return out


def kepler_embed(run_dir: str | Path, descriptions: dict[str, str], out_dir: str | Path | None = None,
                 progress: bool = False) -> tuple[list[str], torch.Tensor]:
    """Embed entities from their descriptions with a run's trained encoder: the inductive use, for
    entities the run never saw. Returns ``(labels, [n, hidden] embeddings)``; with ``out_dir`` also
    writes ``embeddings.safetensors`` (``entity_embeddings``, the run's ``relation_embeddings``) and
    PyKEEN-style id maps there, so :func:`kepler_predict` and :func:`to_pykeen` read it like a run's own."""
    run = _check_run(run_dir)
    model, tok = load_model(run / "model")
    labels = list(descriptions)
    ents = model.embed_texts(tok, [descriptions[k] for k in labels], progress=progress, desc="embedding entities")
    if out_dir is not None:
        _, rels, vocab, config = load_embeddings(run / "embeddings")
        from ..data.kg import KGVocab

        save_embeddings(out_dir, ents, rels, KGVocab(labels, vocab.relations), config)
    return labels, ents


def kepler_predict(run_dir: str | Path, relation: str, *, head: str | None = None, tail: str | None = None,
                   head_text: str | None = None, tail_text: str | None = None, k: int = 10) -> list[dict[str, Any]]:
    """The ``k`` best tails of ``(head, relation, ?)`` (or heads of ``(?, relation, tail)``) among the
    run's entities, by its TransE score. The query entity is a label of the run's graph, or a
    description (``head_text``/``tail_text``) embedded by the trained encoder. Each row:
    ``{"label", "score", "description", "known"}`` (``known``: the triple is in the run's graph)."""
    run = _check_run(run_dir)
    if sum(x is not None for x in (head, tail, head_text, tail_text)) != 1:
        raise ConfigError("give exactly one query entity: --head, --tail, --head-text or --tail-text")
    ents, rels, vocab, config = load_embeddings(run / "embeddings")
    if relation not in vocab.relation_id:
        raise ConfigError(f"unknown relation {relation!r}; the run has: {', '.join(vocab.relations[:20])}")
    label = head if head is not None else tail
    if label is not None:
        if label not in vocab.entity_id:
            raise ConfigError(f"unknown entity {label!r}: pass a label of the run's graph (graph/entity_descriptions"
                              ".tsv) or describe it with --head-text/--tail-text")
        query = ents[vocab.entity_id[label]]
    else:
        _, query = kepler_embed(run, {"query": head_text if head_text is not None else tail_text})
        query = query[0]
    r = rels[vocab.relation_id[relation]]
    predict_tails = head is not None or head_text is not None
    target = query + r if predict_tails else query - r  # ||h + r - t|| = ||h - (t - r)||
    scores = config.gamma - torch.linalg.vector_norm(ents.float() - target.float(), ord=config.p_norm, dim=-1)
    top = torch.topk(scores, min(k, len(scores)))
    graph = DescribedKG.load(run / "graph")
    known = set(graph.split.all_triples())
    rows = []
    for s, i in zip(top.values.tolist(), top.indices.tolist()):
        e = vocab.entities[i]
        triple = (label, relation, e) if predict_tails else (e, relation, label)
        rows.append({"label": e, "score": s, "description": graph.descriptions.get(e, ""),
                     "known": label is not None and triple in known})
    return rows


def to_pykeen(run_dir: str | Path, part: str = "train"):
    """A run's graph and embeddings for PyKEEN: ``(triples_factory, model)``.

    ``triples_factory`` holds the run's ``part`` triples with the run's id maps; ``model`` is a
    ``pykeen.models.TransE`` whose entity and relation tables start from the run's embeddings
    (``pykeen.nn.init.PretrainedInitializer``, no normalising constraint), so it scores exactly as
    the run does up to the margin: PyKEEN's score is ``-||h + r - t||``, KEPLER's ``gamma`` more.
    Train it further with PyKEEN's pipeline, or use its initialisers in another model."""
    from pykeen.models import TransE
    from pykeen.nn.init import PretrainedInitializer

    from .baselines import triples_factory

    run = _check_run(run_dir)
    graph = DescribedKG.load(run / "graph")
    ents, rels, vocab, config = load_embeddings(run / "embeddings")
    if vocab.entities != graph.vocab.entities:
        raise ConfigError(f"{run}/embeddings does not match {run}/graph: pass the run folder itself")
    if config.p_norm not in (1.0, 2.0):
        raise ConfigError(f"PyKEEN's TransE takes the L1 or L2 norm; this run used p={config.p_norm}")
    factory = triples_factory(graph, vocab, part)
    model = TransE(triples_factory=factory, embedding_dim=ents.shape[1], scoring_fct_norm=int(config.p_norm),
                   entity_initializer=PretrainedInitializer(ents.float()), entity_constrainer=None,
                   relation_initializer=PretrainedInitializer(rels.float()), random_seed=0)
    return factory, model


def _check_run(run_dir: str | Path) -> Path:
    run = Path(run_dir)
    if not (run / "graph" / "kg.json").exists() or not (run / "embeddings").is_dir():
        raise PlmkitError(f"{run} is not a KEPLER run: train one with `plmkit kepler train --out {run}`")
    return run
