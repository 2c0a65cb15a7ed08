"""``plmkit ernie pretrain | finetune | eval``: an ERNIE encoder from MiniLM (or any BERT-family model), fine-tuned
on the entity-typing or relation task, scored."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ...errors import ConfigError

TASKS = ("typing", "relation")


def _base_model(name: str) -> tuple[Any, Any]:
    """``minilm``: the cached MiniLM with its fitted MLM head (MiniLM ships none); else the model as a masked LM."""
    if name == "minilm":
        from ...reproduce.shared import MLMHeadSettings, minilm_mlm

        return minilm_mlm(MLMHeadSettings())[:2]
    from ...assets import load_model

    return load_model(name, task="masked-lm")


def _task(name: str, seed: int, max_train: int | None = None):
    import dataclasses

    from ...data.entity_tasks import entity_typing_task, geo_relation_task

    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}: pass typing or relation")
    task = entity_typing_task(seed=seed) if name == "typing" else geo_relation_task(seed=seed)
    return dataclasses.replace(task, train=task.train[:max_train]) if max_train else task


def _linker(task: str):
    from ..entities import kb_linker

    return kb_linker("wordnet" if task == "typing" else "geonames")


def _table(ernie: Any, ids: list[str] | None):
    from ..entities import EntityEmbeddings

    if not ids:
        raise ConfigError("this ERNIE folder records no entity ids; save it with save_ernie(..., entity_ids=...)")
    return EntityEmbeddings(list(ids), ernie.entity_table[1:].detach().cpu().clone())


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from ...train.loop import TrainConfig
    from ..entities import EntityEmbeddings, KGEConfig, kb_linker
    from . import ERNIE, ERNIEConfig, encode_with_entities, pretrain, save_ernie
    from .study import KnowledgeSettings, heldout_texts, knowledge_table, pretraining_texts

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not (out / "ernie.json").is_file():
        raise ConfigError(f"--out {out} exists and is no ERNIE folder; pass a new folder")
    linker = kb_linker("both")
    texts = pretraining_texts(args.texts, seed=args.seed, exclude=heldout_texts(args.task_seed))
    mentions = linker.link(texts)
    if args.entities:
        entities = EntityEmbeddings.load(args.entities)
    else:
        settings = KnowledgeSettings(kgs=tuple(args.kg), kge=KGEConfig(dim=args.kge_dim, epochs=args.kge_epochs),
                                     wordnet_scope=args.wordnet_scope)
        linked = {m.entity for ms in mentions for m in ms if not m.entity.startswith("geo:")}
        entities = knowledge_table(settings, seed=args.seed, wordnet_entities=linked, progress=not args.no_progress)
    model, tok = _base_model(args.model)
    ernie = ERNIE(model, entities.vectors, ERNIEConfig(t_layers=args.t_layers, entity_heads=args.entity_heads),
                  seed=args.seed)
    records = encode_with_entities(tok, texts, mentions, entities, max_length=args.max_length)
    res = pretrain(ernie, tok, records, TrainConfig(
        out_dir=str(out.with_name(out.name + ".run")), max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        warmup_steps=max(1, args.steps // 10), seed=args.seed, mixed_precision="auto", progress=not args.no_progress))
    save_ernie(ernie, out, tok, entities.ids)
    aligned = sum(sum(1 for e in r["entity_ids"] if e) for r in records)
    print(f"dEA + MLM: {len(records)} texts, {aligned} aligned entities, {res.step} steps, loss "
          f"{res.losses[0]:.3f} -> {res.losses[-1]:.3f}; {len(entities)} entities x {entities.dim}")
    print(f"wrote {out} (the run's checkpoints: {out.name}.run/, resumable)")


def _scores(clf: Any, tok: Any, rows: list[dict], task: str, entities: Any, source: str, max_length: int) -> dict:
    from .finetune import predict, scores, task_records, without_entities

    linker = None if source == "none" else _linker(task)
    recs = task_records(tok, rows, task, entities, linker, entity_source="linked" if source == "none" else source,
                        max_length=max_length)
    if source == "none":
        recs = without_entities(recs)
    return scores(predict(clf, tok, recs), recs)


def _cmd_finetune(args: argparse.Namespace) -> None:
    from ...train.loop import TuneConfig
    from .finetune import ERNIEClassifier, fine_tune, save_classifier, task_records
    from .model import load_ernie
    from .study import norm_matched_random

    import torch

    ernie, tok, ids = load_ernie(args.ernie, device="cuda" if torch.cuda.is_available() else "cpu")
    entities = _table(ernie, ids)
    task = _task(args.task, args.task_seed, args.max_train)
    source = "linked" if args.entities == "random" else args.entities
    if args.entities == "random":
        ernie.set_entity_vectors(norm_matched_random(entities.vectors, args.seed))
    records = task_records(tok, task.train, args.task, entities, _linker(args.task), entity_source=source,
                           max_length=args.max_length)
    clf = ERNIEClassifier(ernie, task.num_labels, multi_label=args.task == "typing", seed=args.seed)
    tune = TuneConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, max_length=args.max_length,
                      progress=not args.no_progress)
    fine_tune(clf, tok, records, Path(args.out).with_name(Path(args.out).name + ".run"), tune, seed=args.seed)
    info = {"task": args.task, "task_seed": args.task_seed, "labels": list(task.labels), "entities": args.entities,
            "max_length": args.max_length}
    save_classifier(clf, args.out, tok, ids, info)
    val = _scores(clf, tok, task.validation, args.task, entities, source, args.max_length)
    print(f"{args.task} validation: accuracy {100 * val['accuracy']:.1f}%, macro-F1 {100 * val['macro_f1']:.1f}% "
          f"(n={val['n']})")
    print(f"wrote {args.out}")


def _cmd_eval(args: argparse.Namespace) -> None:
    from .finetune import load_classifier

    import torch

    clf, tok, ids, info = load_classifier(args.model, device="cuda" if torch.cuda.is_available() else "cpu")
    entities = _table(clf.encoder, ids)
    task = _task(info["task"], info["task_seed"])
    rows = task.split(args.split)[:args.max]
    out = _scores(clf, tok, rows, info["task"], entities, args.entities, info.get("max_length", 64))
    if args.json:
        print(json.dumps({"task": info["task"], "split": args.split, "entities": args.entities, **out}))
    else:
        print(f"{info['task']} {args.split} (entities: {args.entities}): accuracy {100 * out['accuracy']:.1f}%, "
              f"macro-F1 {100 * out['macro_f1']:.1f}% (n={out['n']})")


def add_parser(sub: Any) -> None:
    e = sub.add_parser("ernie", help="ERNIE: knowledge-graph entities fused into an encoder's upper blocks; "
                                     "pretrain (dEA + MLM), fine-tune on entity typing / relations, evaluate")
    esub = e.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions",
                            help="pretrain, finetune or eval")
    p = esub.add_parser("pretrain", help="link English text, train KG embeddings, continue pretraining with dEA + MLM")
    p.add_argument("--out", required=True, help="folder for the ERNIE model (HF layout + ernie.safetensors)")
    p.add_argument("--model", default="minilm", help="a BERT-family encoder with an MLM head, asset name or folder "
                                                     "(minilm: MiniLM with plmkit's fitted MLM head)")
    p.add_argument("--kg", nargs="+", default=["wordnet", "geonames"], choices=["wordnet", "geonames"],
                   help="knowledge graphs whose TransE vectors form the entity table")
    p.add_argument("--entities", help="an entity-embedding folder (plmkit kge train --out) instead of training one")
    p.add_argument("--wordnet-scope", default="neighbourhood", choices=["neighbourhood", "all"],
                   help="train WordNet vectors on the linked synsets' 1-hop neighbourhood (faster) or all of it")
    p.add_argument("--kge-dim", type=int, default=100, help="entity vector width (TransE)")
    p.add_argument("--kge-epochs", type=int, default=12, help="TransE training epochs")
    p.add_argument("--texts", type=int, default=4000, help="how many English text pieces to link and pretrain on")
    p.add_argument("--steps", type=int, default=300, help="pretraining optimizer steps")
    p.add_argument("--batch-size", type=int, default=16, help="texts per step")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (10%% warm-up, linear decay)")
    p.add_argument("--max-length", type=int, default=64, help="word pieces per text")
    p.add_argument("--t-layers", type=int, default=None, help="plain blocks below the aggregators (default: half)")
    p.add_argument("--entity-heads", type=int, default=4, help="heads of the entity self-attention")
    p.add_argument("--task-seed", type=int, default=0,
                   help="split seed of the tasks whose validation and test sentences pretraining must not see")
    p.add_argument("--seed", type=int, default=0, help="seed of the texts, the KG vectors and the new weights")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(fn=_cmd_pretrain)

    f = esub.add_parser("finetune", help="fine-tune an ERNIE folder on a task (CLS head, marked mentions)")
    f.add_argument("--ernie", required=True, help="folder written by `plmkit ernie pretrain`")
    f.add_argument("--task", required=True, choices=TASKS, help="typing: WordNet supersense of the illustrated word; "
                                                                "relation: geonames relation of two named places")
    f.add_argument("--out", required=True, help="folder for the fine-tuned classifier")
    f.add_argument("--entities", default="linked", choices=["linked", "gold", "none", "random"],
                   help="entities from the linker, the gold ones, none, or norm-matched random vectors")
    f.add_argument("--steps", type=int, default=300, help="fine-tuning optimizer steps")
    f.add_argument("--batch-size", type=int, default=16, help="examples per step")
    f.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    f.add_argument("--max-length", type=int, default=64, help="word pieces per example")
    f.add_argument("--max-train", type=int, default=None, help="use at most this many training examples")
    f.add_argument("--task-seed", type=int, default=0, help="seed of the task's split")
    f.add_argument("--seed", type=int, default=0, help="seed of the head and the batch order")
    f.add_argument("--no-progress", action="store_true", help="no progress bars")
    f.set_defaults(fn=_cmd_finetune)

    v = esub.add_parser("eval", help="accuracy and macro-F1 of a fine-tuned ERNIE on its task")
    v.add_argument("--model", required=True, help="folder written by `plmkit ernie finetune`")
    v.add_argument("--split", default="test", choices=["validation", "test"], help="which split to score")
    v.add_argument("--entities", default="linked", choices=["linked", "gold", "none"],
                   help="how the examples get entities at run time")
    v.add_argument("--max", type=int, default=None, help="score at most this many examples")
    v.add_argument("--json", action="store_true", help="one JSON object instead of a sentence")
    v.set_defaults(fn=_cmd_eval)
