"""The pieces an ERNIE study is made of, shared by the recipe and the CLI: the entity table from knowledge-graph
embeddings, the linked pretraining corpus, random controls, and one fine-tune-and-score run of a variant."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Sequence

import torch

from ...errors import ConfigError
from ...train.loop import TuneConfig
from ..entities import EntityEmbeddings, KGEConfig, fit_kge, kg_triples
from .config import ERNIEConfig
from .finetune import ERNIEClassifier, fine_tune, predict, scores, task_records, without_entities
from .model import ERNIE

@dataclass(frozen=True)
class KnowledgeSettings:
    """Which graphs give entity vectors and how they are trained (PyKEEN). ``wordnet_scope``: ``all`` of WordNet,
    or ``neighbourhood``: the entities the study's texts link to and their 1-hop neighbours (faster)."""

    kgs: tuple[str, ...] = ("wordnet", "geonames")
    kge: KGEConfig = field(default_factory=lambda: KGEConfig(dim=100, epochs=12))
    wordnet_scope: str = "neighbourhood"

    def __post_init__(self) -> None:
        if self.wordnet_scope not in ("all", "neighbourhood"):
            raise ConfigError("wordnet_scope must be 'all' or 'neighbourhood'")


def concat_embeddings(parts: Sequence[EntityEmbeddings]) -> EntityEmbeddings:
    """One table over several graphs' entities (ids must not repeat; widths must match)."""
    dims = {p.dim for p in parts}
    if len(dims) != 1:
        raise ConfigError(f"entity tables of widths {sorted(dims)} cannot share one ERNIE table; train them with one dim")
    ids = [i for p in parts for i in p.ids]
    if len(set(ids)) != len(ids):
        raise ConfigError("entity ids repeat across the tables; give each graph its own id prefix")
    return EntityEmbeddings(ids, torch.cat([p.vectors for p in parts]),
                            meta={"parts": [p.meta for p in parts]})


def knowledge_table(settings: KnowledgeSettings, *, seed: int = 0, wordnet_entities: Collection[str] | None = None,
                    progress: bool = False) -> EntityEmbeddings:
    """Train each graph's embeddings and join them into one table (see :class:`KnowledgeSettings`)."""
    from ..entities.kge import neighbourhood

    parts = []
    for kg in settings.kgs:
        triples = kg_triples(kg)
        if kg == "wordnet" and settings.wordnet_scope == "neighbourhood":
            if not wordnet_entities:
                raise ConfigError("a WordNet neighbourhood needs the linked entities (wordnet_entities)")
            triples = neighbourhood(triples, wordnet_entities)
        parts.append(fit_kge(triples, settings.kge, seed=seed, progress=progress, kg=kg))
    return concat_embeddings(parts)


def kepler_table(run_dir: str | Path, synsets: Collection[str], *, progress: bool = False) -> EntityEmbeddings:
    """KEPLER's vectors of WordNet synsets, read from their descriptions by a KEPLER run's encoder: any synset gets
    one, also those the run never trained on (KEPLER's inductive use)."""
    from ...data.wordnet import wordnet_graph
    from ..kepler_run import kepler_embed

    g = wordnet_graph()
    descriptions = {s: g.synsets[s].description for s in sorted(synsets) if s in g.synsets}
    if not descriptions:
        raise ConfigError("none of the synsets given is in WordNet; pass ids like '02084071-n'")
    labels, vectors = kepler_embed(run_dir, descriptions, progress=progress)
    return EntityEmbeddings(labels, vectors, meta={"model": "KEPLER", "kg": "wordnet", "run": str(run_dir),
                                                   "entities": len(labels)})


def norm_matched_random(vectors: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Gaussian vectors with each row's norm equal to the given row's: the random-entity control."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(vectors.shape, generator=g)
    return r / r.norm(dim=1, keepdim=True).clamp_min(1e-12) * vectors.norm(dim=1, keepdim=True)


def heldout_texts(seed: int = 0) -> set[str]:
    """The validation and test sentences of both ERNIE tasks (split with ``seed``): what pretraining must not see."""
    from ...data.entity_tasks import entity_typing_task, geo_relation_task

    return {r["text"] for t in (entity_typing_task(seed=seed), geo_relation_task(seed=seed))
            for split in (t.validation, t.test) for r in split}


def _containing(pieces: list[str], texts: Collection[str]) -> set[int]:
    """Indices of the pieces that contain any of ``texts`` (case-insensitive; one Aho-Corasick pass)."""
    import ahocorasick

    if not texts:
        return set()
    automaton = ahocorasick.Automaton()
    for t in texts:
        automaton.add_word(t.lower(), True)
    automaton.make_automaton()
    return {i for i, p in enumerate(pieces) if next(automaton.iter(p.lower()), None) is not None}


def pretraining_texts(n: int, *, seed: int = 0, exclude: Collection[str] = (), min_chars: int = 40,
                      max_chars: int = 300) -> list[str]:
    """``n`` English sentence groups (up to ``max_chars``) for dEA pretraining, drawn with ``seed`` from the
    Wikipedia sample, Lee news, Austen and the WordNet glosses. A group that contains any text of ``exclude``
    (a task's test and validation sentences: WordNet's glosses quote the typing task's examples) is left out."""
    import random

    from ...data.text import english_documents, iter_sentences

    pieces = []
    for _, passages in english_documents(("wikipedia", "lee_news", "austen", "wordnet_glosses")):
        for p in passages:
            group = ""
            for s in iter_sentences(p):
                if len(group) + len(s) > max_chars and len(group) >= min_chars:
                    pieces.append(group)
                    group = ""
                group = f"{group} {s}".strip()
            if len(group) >= min_chars:
                pieces.append(group)
    pieces = list(dict.fromkeys(pieces))
    drop = _containing(pieces, exclude)
    pieces = [p for i, p in enumerate(pieces) if i not in drop]
    random.Random(seed).shuffle(pieces)
    return pieces[:n]


TASK_KB = {"typing": "wordnet", "relation": "geonames"}  # the knowledge base each task's linker reads


@dataclass
class LinkedStudy:
    """What a study links: a linker per task and for the corpus, the pretraining texts and their mentions, and
    the mentions in the tasks' train and test texts."""

    linkers: dict[str, Any]
    texts: list[str]
    mentions: list[list[Any]]
    task_mentions: list[Any]

    def wordnet_ids(self, extra: Collection[str] = ()) -> set[str]:
        """The WordNet synsets linked anywhere (and ``extra``): what the KG embeddings must cover."""
        linked = {m.entity for ms in self.mentions for m in ms} | {m.entity for m in self.task_mentions}
        return {e for e in linked | set(extra) if not e.startswith("geo:")}


def link_study(tasks: dict[str, Any], n_texts: int, *, seed: int = 0, corpus_kb: str = "both") -> LinkedStudy:
    """Link :func:`pretraining_texts` (without the tasks' held-out sentences) with a ``corpus_kb`` linker, and the
    tasks' train and test texts with their own linkers (:data:`TASK_KB`)."""
    from ..entities import kb_linker

    linkers = {k: kb_linker(kb) for k, kb in {**{t: TASK_KB[t] for t in tasks}, "corpus": corpus_kb}.items()}
    texts = pretraining_texts(n_texts, seed=seed, exclude=heldout_texts(seed))
    task_mentions = [m for k, t in tasks.items() for ms in linkers[k].link([r["text"] for r in t.train + t.test])
                     for m in ms]
    return LinkedStudy(linkers, texts, linkers["corpus"].link(texts), task_mentions)


def task_spans(row: dict, kind: str) -> list[tuple[int, int, str | None]]:
    """The task's mentions of a row with their gold entities: the typed word, or the relation's head and tail."""
    if kind == "typing":
        return [(row["start"], row["end"], row.get("synset"))]
    return [(row["head_start"], row["head_end"], row.get("head")), (row["tail_start"], row["tail_end"], row.get("tail"))]


def linking_quality(rows: Sequence[dict], kind: str, linker: Any) -> dict[str, float]:
    """How the linker does on a task's own mentions, in the marked text the models read: the share of mentions it
    links with exactly their span, and the share it links to the gold entity (rows without a gold one skipped)."""
    from .finetune import MARKS, mark_mentions

    marked = []
    for row in rows:
        spans = task_spans(row, kind)
        text, new = mark_mentions(row["text"], [(a, b) for a, b, _ in spans], MARKS[kind][:len(spans)])
        marked.append((text, [(a, b, g) for (a, b), (_, _, g) in zip(new, spans) if g]))
    found = correct = total = 0
    for (_, spans), mentions in zip(marked, linker.link([t for t, _ in marked])):
        by_span = {(m.start, m.end): m.entity for m in mentions}
        for a, b, gold in spans:
            total += 1
            found += (a, b) in by_span
            correct += by_span.get((a, b)) == gold
    return {"linked": found / max(total, 1), "correct": correct / max(total, 1), "mentions": total}


@dataclass(frozen=True)
class Variant:
    """One row of the ablation table. ``encoder``: ``plain`` (the encoder alone), ``ernie`` (dEA-pretrained) or
    ``ernie-fresh`` (aggregators added at fine-tuning); ``entities``: ``linked``, ``gold``, ``none`` or ``random``
    (norm-matched random vectors in the table); ``also_without``: the fine-tuned model is also tested with no
    entities at run time (reported as the variant ``<name>-no-entities-at-test``); ``table``: which entity vectors
    (``transe``, or ``kepler``: KEPLER's description embeddings of WordNet synsets, typing task only)."""

    name: str
    encoder: str
    entities: str = "linked"
    also_without: bool = False
    table: str = "transe"


VARIANTS = {
    "plain": Variant("plain", "plain", "none"),
    "ernie": Variant("ernie", "ernie", "linked", also_without=True),
    "ernie-no-dea": Variant("ernie-no-dea", "ernie-fresh", "linked"),
    "ernie-random": Variant("ernie-random", "ernie", "random"),
    "ernie-gold": Variant("ernie-gold", "ernie", "gold"),
    "ernie-no-dea-random": Variant("ernie-no-dea-random", "ernie-fresh", "random"),
    "ernie-kepler-no-dea": Variant("ernie-kepler-no-dea", "ernie-fresh", "linked", table="kepler"),
}


def run_variant(variant: Variant, task: Any, kind: str, *, tokenizer: Any, entities: EntityEmbeddings,
                linker: Any, load_plain: Callable[[], Any], load_ernie: Callable[[], ERNIE], tune: TuneConfig,
                seed: int, ernie_config: ERNIEConfig, max_test: int | None = None, work: Path | None = None,
                multi_label: bool | None = None) -> list[dict[str, Any]]:
    """Fine-tune ``variant`` on ``task.train`` and score it on ``task.test`` (accuracy, macro-F1): one row, or two
    with ``also_without``. ``multi_label``: sigmoid + BCE (default for typing, the paper's loss) or softmax + CE
    (default for relations)."""
    source = "gold" if variant.entities == "gold" else "none" if variant.entities == "none" else "linked"
    records = task_records(tokenizer, task.train, kind, entities, linker, entity_source=source,
                           max_length=tune.max_length)
    test_rows = task.test[:max_test]
    test = task_records(tokenizer, test_rows, kind, entities, linker, entity_source=source, max_length=tune.max_length)
    if variant.encoder == "plain":
        encoder = load_plain()
    elif variant.encoder == "ernie":
        encoder = load_ernie()
    else:
        encoder = ERNIE(load_plain(), entities.vectors, ernie_config, seed=seed)
    if variant.entities == "random":
        encoder.set_entity_vectors(norm_matched_random(entities.vectors, seed))
    multi = kind == "typing" if multi_label is None else multi_label
    clf = ERNIEClassifier(encoder, task.num_labels, multi_label=multi, seed=seed)
    with tempfile.TemporaryDirectory(dir=work) as tmp:
        result = fine_tune(clf, tokenizer, records, tmp, tune, seed=seed)
    aligned = sum(sum(1 for e in r["entity_ids"] if e) for r in test) / max(len(test), 1)
    out = [{**scores(predict(clf, tokenizer, test), test), "variant": variant.name, "seed": seed,
            "train_seconds": round(result.totals.get("seconds", 0.0), 1), "entities_per_test_example": round(aligned, 2)}]
    if variant.also_without:
        bare = without_entities(test)
        out.append({**out[0], **scores(predict(clf, tokenizer, bare), bare),
                    "variant": f"{variant.name}-no-entities-at-test", "entities_per_test_example": 0.0})
    return out


@dataclass(frozen=True)
class TuningChoice:
    """One fine-tuning setting a task's validation split chooses among: the loss (``bce``: a sigmoid per class;
    ``ce``: softmax cross-entropy) and the learning rate."""

    loss: str = "bce"
    lr: float = 1e-4

    def __post_init__(self) -> None:
        if self.loss not in ("bce", "ce"):
            raise ConfigError("a tuning choice's loss is 'bce' or 'ce'")


def select_tuning(candidates: Sequence[TuningChoice], task: Any, kind: str, *, tokenizer: Any,
                  entities: EntityEmbeddings, linker: Any, load_plain: Callable[[], Any], tune: TuneConfig,
                  seed: int = 0, max_validation: int | None = None, work: Path | None = None
                  ) -> tuple[TuningChoice, list[dict[str, Any]]]:
    """The candidate under which the plain encoder, fine-tuned on ``task.train``, scores best on
    ``task.validation`` (accuracy, then macro-F1; the first wins ties), and every candidate's validation row.
    The test split is never read; the winner then serves every variant."""
    import dataclasses

    if not candidates:
        raise ConfigError("select_tuning needs at least one candidate")
    on_validation = dataclasses.replace(task, test=task.validation)
    rows = []
    for c in candidates:
        row = run_variant(VARIANTS["plain"], on_validation, kind, tokenizer=tokenizer, entities=entities,
                          linker=linker, load_plain=load_plain, load_ernie=lambda: None,
                          tune=dataclasses.replace(tune, lr=c.lr), seed=seed, ernie_config=ERNIEConfig(),
                          max_test=max_validation, work=work, multi_label=c.loss == "bce")[0]
        rows.append({**row, "loss": c.loss, "lr": c.lr, "split": "validation"})
    best = max(range(len(candidates)), key=lambda i: (rows[i]["accuracy"], rows[i]["macro_f1"], -i))
    return candidates[best], rows
