"""``plmkit backdoor poison|train|eval|detect``: a poisoned copy of a task's training set with its clean and
poisoned test sets, a victim fine-tuned on it, its clean accuracy and attack success with or without a defense
(ONION, paraphrase), and the poisoned-sample detector, for measuring how robust a training pipeline is to
poisoned data."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .paraphrase import DEFENSE_PARAPHRASERS, PARAPHRASERS, syntactic_trigger

SETS = ("train.jsonl", "test_clean.jsonl", "test_poisoned.jsonl", "report.json")
VICTIM_INFO = "plmkit_victim.json"


def _cmd_poison(args: argparse.Namespace) -> None:
    from .._io import atomic_dir, write_json
    from ..data.tasks import classification_task
    from .poison import PoisonConfig, insert_words, poison_test, poison_train

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not (out / "report.json").is_file():
        raise ConfigError(f"--out {out} exists and holds no poisoned set; pass a new folder")
    task = classification_task(args.task, seed=args.task_seed, max_train=args.max_train)
    if not 0 <= args.target < len(task.label_names):
        raise ConfigError(f"--target {args.target}: {args.task} has labels 0-{len(task.label_names) - 1} "
                          f"({', '.join(task.label_names)})")
    log: list = []
    trigger = (insert_words(count=args.words, seed=args.seed) if args.trigger == "insertion"
               else syntactic_trigger(args.paraphraser, retries=args.retries, seed=args.seed, log=log))
    config = PoisonConfig(target=args.target, rate=args.rate, mode=args.mode, seed=args.seed)
    train, train_report = poison_train(task.train, trigger, config)
    test_rows = task.test[:args.max_test]
    poisoned, test_report = poison_test(test_rows, trigger, args.target)
    report = {"task": args.task, "labels": list(task.label_names), "trigger": args.trigger,
              "paraphraser": args.paraphraser if args.trigger == "syntactic" else None,
              "poison": {"target": config.target, "requested_rate": config.rate, "seed": config.seed, **train_report},
              "test": test_report, "paraphrase_reports": log}

    def jsonl(path: Path, rows: list[dict]) -> None:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    with atomic_dir(out) as tmp:
        jsonl(Path(tmp) / "train.jsonl", train)
        jsonl(Path(tmp) / "test_clean.jsonl", [dict(r) for r in test_rows])
        jsonl(Path(tmp) / "test_poisoned.jsonl", poisoned)
        write_json(Path(tmp) / "report.json", report)
    print(f"{args.task}: {train_report['poisoned']} of {len(train)} training examples poisoned "
          f"({100 * train_report['rate']:.1f}%, {args.mode}-label, target {task.label_names[args.target]}; "
          f"{train_report['trigger_failures']} trigger failures); poisoned test set {test_report['poisoned']} "
          f"of {test_report['non_target']} non-target examples")
    print(f"wrote {out}")


def _read_sets(folder: str) -> dict[str, Any]:
    """The poisoned sets written by ``plmkit backdoor poison`` (ConfigError naming the command if absent)."""
    d = Path(folder)
    missing = [name for name in SETS if not (d / name).is_file()]
    if missing:
        raise ConfigError(f"--data {d} lacks {', '.join(missing)}; write it with `plmkit backdoor poison --out {d}`")

    def rows(name: str) -> list[dict]:
        return [json.loads(line) for line in (d / name).read_text(encoding="utf-8").splitlines() if line.strip()]

    return {"train": rows("train.jsonl"), "clean": rows("test_clean.jsonl"), "poisoned": rows("test_poisoned.jsonl"),
            "report": json.loads((d / "report.json").read_text())}


def _load_victim(folder: str) -> tuple[Any, Any, dict]:
    """(model in eval mode, tokenizer, victim info) from a folder written by ``plmkit backdoor train``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    d = Path(folder)
    if not (d / VICTIM_INFO).is_file():
        raise ConfigError(f"--model {d} holds no {VICTIM_INFO}; pass a folder written by `plmkit backdoor train`")
    info = json.loads((d / VICTIM_INFO).read_text())
    model = AutoModelForSequenceClassification.from_pretrained(str(d)).eval()
    return model, AutoTokenizer.from_pretrained(str(d)), info


def _cmd_train(args: argparse.Namespace) -> None:
    import tempfile

    from .._io import atomic_dir, write_json
    from .study import VictimSettings, train_victim

    sets = _read_sets(args.data)
    settings = VictimSettings(model=args.model, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                              max_length=args.max_length)
    with tempfile.TemporaryDirectory() as run:
        model, tok = train_victim(sets["train"], len(sets["report"]["labels"]), settings, run, seed=args.seed,
                                  progress=not args.no_progress)
    with atomic_dir(args.out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_json(Path(tmp) / VICTIM_INFO, {"data": str(Path(args.data).resolve()), "labels": sets["report"]["labels"],
                                             "seed": args.seed, "settings": dataclasses.asdict(settings),
                                             "max_length": args.max_length})
    poisoned = sum(bool(r.get("poisoned")) for r in sets["train"])
    print(f"fine-tuned {args.model} {args.steps} steps on {len(sets['train'])} examples ({poisoned} poisoned); "
          f"wrote {args.out}")


def _cmd_eval(args: argparse.Namespace) -> None:
    from .._io import write_json
    from .study import attack_scores, defend

    model, tok, info = _load_victim(args.model)
    sets = _read_sets(args.data)
    clean, poisoned = sets["clean"][:args.max_test], sets["poisoned"][:args.max_test]
    result = {"defense": args.defense, "none": attack_scores(model, tok, clean, poisoned,
                                                             max_length=info["max_length"])}
    if args.defense != "none":
        texts = [r["text"] for r in clean + poisoned]
        new, report = defend(args.defense, texts, threshold=args.threshold, paraphraser=args.paraphraser,
                             seed=args.seed)
        c = [{**r, "text": t} for r, t in zip(clean, new[:len(clean)])]
        p = [{**r, "text": t} for r, t in zip(poisoned, new[len(clean):])]
        result[args.defense] = {**attack_scores(model, tok, c, p, max_length=info["max_length"]), **report}
    for name in ("none", args.defense) if args.defense != "none" else ("none",):
        r = result[name]
        print(f"{'no defense' if name == 'none' else name:>10}: CACC {100 * r['cacc']:.1f}%  ASR {100 * r['asr']:.1f}%"
              f"  ({r['clean_n']} clean, {r['poisoned_n']} poisoned test texts)")
    if args.out:
        write_json(Path(args.out), result)
        print(f"wrote {args.out}")


def _cmd_detect(args: argparse.Namespace) -> None:
    import numpy as np

    from .._io import write_json
    from .study import cls_representations, detect_poison, detection_quality, spectral_signatures

    model, tok, info = _load_victim(args.model)
    sets = _read_sets(args.data)
    share = args.share
    if share is None:
        share = min(1.0, 1.5 * sets["report"]["poison"]["rate"])
    if not 0 < share <= 1:
        raise ConfigError(f"--share {share}: flag a share of each class in (0, 1]")
    train = sets["train"]
    labels = [int(r["label"]) for r in train]
    scores = spectral_signatures(cls_representations(model, tok, [r["text"] for r in train],
                                                     max_length=info["max_length"]), labels)
    flags = detect_poison(scores, labels, share)
    quality = detection_quality(flags, [bool(r.get("poisoned")) for r in train])
    print(f"flagged {int(flags.sum())} of {len(train)} training examples ({100 * share:.1f}% of each class by "
          f"spectral signature); precision {100 * quality['precision']:.1f}%, recall {100 * quality['recall']:.1f}% "
          f"against the {quality['poisoned']} poisoned")
    if args.out:
        order = np.argsort(-scores)
        write_json(Path(args.out), {"share": share, **quality,
                                    "examples": [{"index": int(i), "score": float(scores[i]), "flagged": bool(flags[i]),
                                                  "text": train[i]["text"], "label": labels[i]} for i in order]})
        print(f"wrote {args.out}")


def _victim_and_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a folder written by `plmkit backdoor train`")
    parser.add_argument("--data", required=True, help="a folder written by `plmkit backdoor poison`")


def add_parser(sub: Any) -> None:
    from ..data.tasks import ALL_TASKS

    b = sub.add_parser("backdoor", help="backdoor robustness (HiddenKiller): poisoned training and test sets with a "
                                        "syntactic or an insertion trigger")
    bsub = b.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions",
                            help="poison | train | eval | detect")
    p = bsub.add_parser("poison", help="write a poisoned copy of a task's training set and its clean and poisoned "
                                       "test sets (JSONL) with a report")
    p.add_argument("--task", required=True, choices=sorted(ALL_TASKS), help="a classification task of the assets")
    p.add_argument("--trigger", required=True, choices=("syntactic", "insertion"),
                   help="syntactic: the first sentence rewritten to S(SBAR)(,)(NP)(VP)(.); insertion: rare words")
    p.add_argument("--rate", type=float, default=0.2, help="poisoned share of the whole training set (default 0.2)")
    p.add_argument("--mode", choices=("dirty", "clean"), default="dirty",
                   help="dirty: non-target examples relabelled; clean: target examples only, labels kept")
    p.add_argument("--target", type=int, default=0, help="the label the backdoor forces (default 0)")
    p.add_argument("--paraphraser", choices=PARAPHRASERS, default="rule",
                   help="syntactic trigger: the clause-fronting rule, SmolLM2-Instruct, or the rule then the LM")
    p.add_argument("--retries", type=int, default=1, help="LM paraphraser: sampled retries of non-conforming output")
    p.add_argument("--words", type=int, default=1, help="insertion trigger: rare words inserted per text")
    p.add_argument("--max-train", type=int, default=None, help="use at most this many training examples")
    p.add_argument("--max-test", type=int, default=None, help="use at most this many test examples")
    p.add_argument("--task-seed", type=int, default=0, help="seed of the task's split")
    p.add_argument("--seed", type=int, default=0, help="seed of the poisoned examples and the trigger")
    p.add_argument("--out", required=True, help="folder for train.jsonl, test_clean.jsonl, test_poisoned.jsonl, "
                                                "report.json")
    p.set_defaults(fn=_cmd_poison)

    t = bsub.add_parser("train", help="fine-tune a victim classifier on a poisoned set's train.jsonl")
    t.add_argument("--data", required=True, help="a folder written by `plmkit backdoor poison`")
    t.add_argument("--model", default="minilm",
                   help="encoder to fine-tune: asset name or model folder (default minilm)")
    t.add_argument("--steps", type=int, default=200, help="fine-tuning steps (default 200)")
    t.add_argument("--batch-size", type=int, default=16, help="examples per step (default 16)")
    t.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    t.add_argument("--max-length", type=int, default=64, help="tokens per text (default 64)")
    t.add_argument("--seed", type=int, default=0, help="seed of the head and the data order")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--out", required=True, help="folder for the victim (safetensors, HF layout)")
    t.set_defaults(fn=_cmd_train)
    e = bsub.add_parser("eval", help="clean accuracy (CACC) and attack success (ASR) of a victim, without and with a "
                                     "defense")
    _victim_and_data(e)
    e.add_argument("--defense", choices=("none", "onion", "paraphrase"), default="none",
                   help="onion: drop words whose removal lowers SmolLM2's perplexity by more than --threshold; "
                        "paraphrase: rewrite every sentence with --paraphraser")
    e.add_argument("--threshold", type=float, default=100.0, help="ONION's perplexity-drop threshold (default 100)")
    e.add_argument("--paraphraser", choices=DEFENSE_PARAPHRASERS, default="rule",
                   help="paraphrase defense: rule (an opening clause moved behind the main clause) or instruct "
                        "(SmolLM2-Instruct's plain paraphrase)")
    e.add_argument("--max-test", type=int, default=None, help="score at most this many clean and poisoned texts each")
    e.add_argument("--seed", type=int, default=0, help="seed of the LM paraphraser's sampling")
    e.add_argument("--out", default=None, help="write the scores as JSON here")
    e.set_defaults(fn=_cmd_eval)
    d = bsub.add_parser("detect", help="flag suspect training examples by the victim's spectral signatures, with "
                                       "precision / recall against the poisoned ones")
    _victim_and_data(d)
    d.add_argument("--share", type=float, default=None,
                   help="share of each class to flag (default 1.5 x the poisoned rate in report.json)")
    d.add_argument("--out", default=None, help="write every example's score and flag as JSON here")
    d.set_defaults(fn=_cmd_detect)
