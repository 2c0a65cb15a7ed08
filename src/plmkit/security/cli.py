"""``plmkit backdoor poison``: a poisoned copy of a task's training set and its clean and poisoned test sets, for
measuring how robust a training pipeline is to poisoned data."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .paraphrase import PARAPHRASERS, syntactic_trigger


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


def add_parser(sub: Any) -> None:
    from ..data.tasks import ALL_TASKS

    b = sub.add_parser("backdoor", help="backdoor robustness (HiddenKiller): poisoned training and test sets with a "
                                        "syntactic or an insertion trigger")
    bsub = b.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions", help="poison")
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
