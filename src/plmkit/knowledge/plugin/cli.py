"""``plmkit knowledge-plugin map-tune | finetune | plug``: map-tune a mapper on linked text with the model frozen,
train a downstream classifier without knowledge, and plug the mapper into it with its controls."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ..ernie.cli import _task
from .plug import CONTROLS
from .study import TUNINGS

TASKS = ("typing", "relation")
KB_OF_TASK = {"typing": "wordnet", "relation": "geonames"}


def _entities(path: str) -> Any:
    from ..entities import EntityEmbeddings

    return EntityEmbeddings.load(path)


def _kb(entities: Any) -> str:
    """The linker's knowledge base for a table: its graph (``geo:`` ids are geonames), or both."""
    geo = any(i.startswith("geo:") for i in entities.ids)
    other = any(not i.startswith("geo:") for i in entities.ids)
    return "both" if geo and other else "geonames" if geo else "wordnet"


def _masked_or_causal(name: str) -> tuple[Any, Any]:
    """``minilm``: MiniLM with plmkit's fitted MLM head (it ships none); a causal LM as itself; else a masked LM."""
    from ...assets import load_model
    from ..ernie.cli import _base_model

    try:
        return _base_model(name)
    except Exception:  # noqa: BLE001  (a decoder-only model has no masked-LM class)
        return load_model(name)


def _cmd_map_tune(args: argparse.Namespace) -> None:
    from ..entities import kb_linker
    from ..ernie.study import heldout_texts, pretraining_texts
    from .mapper import embeddings_identity, save_mapper
    from .study import MapTuning, general_mapper

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not (out / "mapper.json").is_file():
        raise ConfigError(f"--out {out} exists and is no mapper folder; pass a new folder")
    entities = _entities(args.kg)
    texts = pretraining_texts(args.texts, seed=args.seed, exclude=heldout_texts(args.task_seed))
    mentions = kb_linker(_kb(entities)).link(texts)
    model, tok = _masked_or_causal(args.model)
    settings = MapTuning(steps=args.steps, batch_size=args.batch_size, lr=args.lr, dropout=args.dropout,
                         max_length=args.max_length, kind=args.kind)
    mapper, info = general_mapper(model, tok, entities, texts, mentions, settings,
                                  out.with_name(out.name + ".run"), seed=args.seed, progress=not args.no_progress)
    save_mapper(mapper, out, {**embeddings_identity(entities.ids, str(Path(args.kg).resolve())),
                              "model": args.model})
    print(f"map-tuned on {info['texts']} linked texts ({info['mentions']} mentions), loss {info['loss_first']:.3f} -> "
          f"{info['loss_last']:.3f}; held-out mention loss: "
          + ", ".join(f"{k} {v:.3f}" for k, v in info["heldout_mention_loss"].items()))
    print(f"wrote {out}")


def _cmd_finetune(args: argparse.Namespace) -> None:
    from ..._io import atomic_dir, write_json
    from ..ernie.finetune import marked_task
    from .study import Downstream, downstream_model

    task = _task(args.task, args.task_seed, args.max_train)
    texts, _ = marked_task(task.train, args.task, None, entity_source="none")
    settings = Downstream(steps=args.steps, batch_size=args.batch_size, full_lr=args.lr, lora_lr=args.lr,
                          prompt_lr=args.lr, max_length=args.max_length)
    model, tok = downstream_model(args.model, texts, [r["label"] for r in task.train], task.num_labels, args.tuning,
                                  settings, seed=args.seed, progress=not args.no_progress)
    with atomic_dir(args.out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(Path(tmp) / "plmkit_task.json", {"task": args.task, "task_seed": args.task_seed,
                                                    "tuning": args.tuning, "labels": list(task.labels),
                                                    "max_length": args.max_length})
    print(f"{args.task}: {args.tuning} tuning, {args.steps} steps on {len(texts)} marked texts; wrote {args.out}")


def load_downstream(folder: str | Path) -> tuple[Any, Any, dict]:
    """A classifier folder written by ``plmkit knowledge-plugin finetune`` (a peft adapter folder is loaded onto its
    base model): ``(model in eval mode, tokenizer, task info)``."""
    from transformers import AutoTokenizer

    d = Path(folder)
    if not (d / "plmkit_task.json").is_file():
        raise ConfigError(f"{d} holds no plmkit_task.json; pass a folder written by `plmkit knowledge-plugin finetune`")
    from ...assets.models import quiet_load_report

    info = json.loads((d / "plmkit_task.json").read_text())
    with quiet_load_report():  # a peft folder's head is loaded after its base model reports it missing
        if (d / "adapter_config.json").is_file():
            from peft import AutoPeftModelForSequenceClassification

            model = AutoPeftModelForSequenceClassification.from_pretrained(str(d), num_labels=len(info["labels"]))
        else:
            from transformers import AutoModelForSequenceClassification

            model = AutoModelForSequenceClassification.from_pretrained(str(d))
    return model.eval(), AutoTokenizer.from_pretrained(str(d)), info


def _cmd_plug(args: argparse.Namespace) -> None:
    from ..entities import kb_linker
    from .mapper import embeddings_identity, load_mapper
    from .plug import evaluate_controls
    from .records import plug_table
    from .study import plug_task

    model, tok, info = load_downstream(args.model)
    entities = _entities(args.kg)
    mapper = load_mapper(args.mapper, embeddings_identity(entities.ids))
    task = _task(info["task"], info["task_seed"])
    split = task.split(args.split)
    data = plug_task(type(task)(task.name, task.labels, [], [], split), info["task"], tok, entities,
                     kb_linker(KB_OF_TASK[info["task"]]), max_length=info.get("max_length", 64), max_test=args.max)
    out = evaluate_controls(model, tok, data.test, mapper.eval(), plug_table(entities.vectors),
                            description_records=data.test_described, controls=args.controls, seed=args.seed)
    if args.json:
        print(json.dumps({"task": info["task"], "split": args.split, "tuning": info.get("tuning"), "controls": out}))
        return
    for control, s in out.items():
        print(f"{info['task']} {args.split}, {control}: accuracy {100 * s['accuracy']:.1f}%, macro-F1 "
              f"{100 * s['macro_f1']:.1f}% (n={s['n']})")


def add_parser(sub: Any) -> None:
    k = sub.add_parser("knowledge-plugin", help="Knowledge Plugin: map KG embeddings into a frozen model's input "
                                                "embeddings (map-tune), train a downstream classifier without "
                                                "knowledge, plug the mapper in")
    ksub = k.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions",
                            help="map-tune, finetune or plug")
    m = ksub.add_parser("map-tune", help="train a mapper on linked English text, the model frozen "
                                         "(mention-masked LM; next-token loss on the mention for a causal LM)")
    m.add_argument("--model", default="minilm", help="asset name or folder (minilm: MiniLM with plmkit's fitted MLM "
                                                     "head; smollm2 or another causal LM predicts the mention)")
    m.add_argument("--kg", required=True, help="entity embeddings folder (written by `plmkit kge train --out`)")
    m.add_argument("--out", required=True, help="folder for mapper.safetensors and mapper.json")
    m.add_argument("--texts", type=int, default=4000, help="English text pieces to link (10%% held out for the "
                                                           "mention-loss check)")
    m.add_argument("--steps", type=int, default=300, help="optimizer steps (only the mapper trains)")
    m.add_argument("--batch-size", type=int, default=16, help="texts per step")
    m.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the mapper")
    m.add_argument("--dropout", type=float, default=0.25, help="dropout on the frozen model while map-tuning")
    m.add_argument("--max-length", type=int, default=64, help="word pieces per text")
    m.add_argument("--kind", choices=("linear", "mlp"), default="linear", help="mapping network")
    m.add_argument("--task-seed", type=int, default=0,
                   help="split seed of the entity tasks whose validation and test sentences must not be trained on")
    m.add_argument("--seed", type=int, default=0, help="seed of the texts, the mapper and the batch order")
    m.add_argument("--no-progress", action="store_true", help="no progress bars")
    m.set_defaults(fn=_cmd_map_tune)

    f = ksub.add_parser("finetune", help="train a downstream classifier on a task's marked text, without knowledge")
    f.add_argument("--task", required=True, choices=TASKS, help="typing: WordNet supersense of the illustrated word; "
                                                                "relation: geonames relation of two named places")
    f.add_argument("--out", required=True, help="folder for the classifier (HF layout, or a peft adapter folder)")
    f.add_argument("--model", default="minilm", help="the backbone, asset name or folder")
    f.add_argument("--tuning", choices=TUNINGS, default="full",
                   help="full fine-tuning, LoRA or prompt tuning (peft; the head trains too)")
    f.add_argument("--steps", type=int, default=200, help="optimizer steps")
    f.add_argument("--batch-size", type=int, default=16, help="examples per step")
    f.add_argument("--lr", type=float, default=1e-4,
                   help="peak learning rate (the recipe uses 1e-4 full, 1e-3 LoRA, 3e-2 prompt tuning)")
    f.add_argument("--max-length", type=int, default=64, help="word pieces per example")
    f.add_argument("--max-train", type=int, default=None, help="use at most this many training examples")
    f.add_argument("--task-seed", type=int, default=0, help="seed of the task's split")
    f.add_argument("--seed", type=int, default=0, help="seed of the new weights and the batch order")
    f.add_argument("--no-progress", action="store_true", help="no progress bars")
    f.set_defaults(fn=_cmd_finetune)

    p = ksub.add_parser("plug", help="score a downstream classifier with the mapper plugged in, and the controls")
    p.add_argument("--model", required=True, help="folder written by `plmkit knowledge-plugin finetune`")
    p.add_argument("--mapper", required=True, help="folder written by `plmkit knowledge-plugin map-tune`")
    p.add_argument("--kg", required=True, help="the entity embeddings folder the mapper was tuned for")
    p.add_argument("--split", default="test", choices=["validation", "test"], help="which split to score")
    p.add_argument("--controls", nargs="+", default=list(CONTROLS), choices=CONTROLS,
                   help="conditions to score (default: all)")
    p.add_argument("--max", type=int, default=None, help="score at most this many examples")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-vector control")
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    p.set_defaults(fn=_cmd_plug)
