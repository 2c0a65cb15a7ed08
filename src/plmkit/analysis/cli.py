"""``plmkit neurons``: skill neurons (skill, perturb, prune) and functional modularity, from the command line."""
from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

SCORES = "scores.safetensors"


def _save_scores(scores: dict[str, np.ndarray], path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from .._io import atomic_path

    with atomic_path(path) as tmp:
        save_file({s: torch.as_tensor(np.asarray(v, np.float32)) for s, v in scores.items()}, str(tmp))


def read_scores(folder: str | Path) -> dict[str, np.ndarray]:
    """The averaged skill scores written by ``plmkit neurons skill`` ({site: (d_ff,)}), in site order."""
    from safetensors.numpy import load_file

    path = Path(folder) / SCORES
    if not path.exists():
        raise ConfigError(f"no {SCORES} in '{folder}': run `plmkit neurons skill --out {folder}` first")
    raw = load_file(str(path))
    return {s: raw[s] for s in sorted(raw, key=_site_order)}


def _site_order(site: str) -> tuple:
    parts = site.split(".")
    return (parts[0] == "decoder", *(int(p) if p.isdigit() else 0 for p in parts))


def _meta(folder: str | Path) -> dict[str, Any]:
    import json

    path = Path(folder) / "skill.json"
    if not path.exists():
        raise ConfigError(f"no skill.json in '{folder}': run `plmkit neurons skill --out {folder}` first")
    return json.loads(path.read_text())


def _cmd_skill(args: argparse.Namespace) -> None:
    from .._io import write_json
    from ..data.tasks import binary_task
    from ..device import cpu_info
    from . import skill_neurons as sn

    task = binary_task(args.task, seed=args.split_seed, max_train=args.max_train)
    cfg = sn.SkillConfig(virtual_tokens=args.virtual_tokens, steps=args.steps, batch_size=args.batch_size,
                         lr=args.lr, max_length=args.max_length, progress=not args.no_progress)
    out = Path(args.out)
    runs, all_scores = [], []
    for seed in args.seeds:
        model, tok = sn.prompt_tune(args.model, task, cfg, seed=seed)
        all_scores.append(sn.skill_scores(model, tok, task, max_length=cfg.max_length))
        runs.append({"seed": seed, "validation": sn.accuracy(model, tok, task.validation, cfg.max_length),
                     "test": sn.accuracy(model, tok, task.test, cfg.max_length)})
        print(f"seed {seed}: validation {runs[-1]['validation']:.3f}, test {runs[-1]['test']:.3f}")
        if seed == args.seeds[0]:
            sn.save_task_model(model, tok, out / "model")
    scores = sn.mean_scores(all_scores)
    _save_scores(scores, out / SCORES)
    table = sn.site_scores_table(scores, args.top)
    write_json(out / "skill.json", {"model": args.model, "task": args.task, "split_seed": args.split_seed,
                                    "max_train": args.max_train, "config": asdict(cfg), "runs": runs,
                                    "layers": table, "read_at": sn.read_at(model), "cpu": cpu_info()})
    print(f"{'site':<26} {'mean score':>10} {'top ' + format(args.top, '.0%') + ' from':>12} {'max':>6}")
    for r in table:
        print(f"{r['site']:<26} {r['mean']:10.3f} {r['top_threshold']:12.3f} {r['max']:6.3f}")
    print(f"scores (|acc - 0.5|, averaged over {len(args.seeds)} seeds) -> {out / SCORES}; "
          f"prompt-tuned model (seed {args.seeds[0]}) -> {out / 'model'}")


def _task_of(folder: str | Path):
    from ..data.tasks import binary_task

    meta = _meta(folder)
    return meta, binary_task(meta["task"], seed=meta["split_seed"], max_train=meta.get("max_train"))


def _cmd_perturb(args: argparse.Namespace) -> None:
    from .._io import write_json
    from . import skill_neurons as sn

    meta, task = _task_of(args.skill)
    model, tok = sn.load_task_model(Path(args.model or Path(args.skill) / "model"))
    scores = read_scores(args.skill)
    max_length = meta["config"]["max_length"]
    means = None
    if args.kind == "mean":  # each neuron's mean over the train tokens
        from ..device import model_device
        from .neurons import activation_stats

        means = activation_stats(model, sn.labelled_batches(tok, task.train, 32, max_length, model_device(model)),
                                 sites=list(scores), pool="tokens")
    rows = sn.perturbation_curve(model, tok, task.test, scores, args.fractions,
                                 perturbation=sn.Perturbation(args.kind, args.scale), seeds=args.seeds, means=means,
                                 max_length=max_length)
    summary = sn.summarise_curve(rows)
    print(f"{'fraction':>8} {'selection':>9} {'accuracy':>16}")
    for r in summary:
        print(f"{r['fraction']:8.0%} {r['selection']:>9} {r['mean']:8.3f} ± {r['std']:.3f}")
    print(f"test n={len(task.test)}; {args.kind} (scale {args.scale}) on every token position; random = the same "
          "number of neurons per layer")
    if args.json:
        write_json(args.json, {"skill": str(args.skill), "kind": args.kind, "scale": args.scale, "rows": rows,
                               "summary": summary})


def _cmd_prune(args: argparse.Namespace) -> None:
    from . import skill_neurons as sn

    meta, task = _task_of(args.skill)
    max_length = meta["config"]["max_length"]
    model, tok = sn.load_task_model(Path(args.skill) / "model")
    scores = read_scores(args.skill)
    pruned, report = sn.prune_to_skill(model, tok, task, scores, args.keep, layer_share=args.layer_share,
                                       max_length=max_length)
    folder = sn.save_task_model(pruned, tok, args.out)
    acc0, acc1 = sn.accuracy(model, tok, task.test, max_length), sn.accuracy(pruned, tok, task.test, max_length)
    speed = sn.prefill_speed(model, pruned, tok, task.texts("test"), batch_size=args.batch_size,
                             max_length=max_length, repeats=args.repeats)
    print(f"parameters {report.params_before:,} -> {report.params_after:,}; FFN sizes {report.ffn_sizes}")
    print(f"test accuracy {acc0:.3f} -> {acc1:.3f} (n={len(task.test)}); prefill of {args.batch_size}: "
          f"{speed['speedup']:.2f}x (FLOPs bound {speed['bound']:.2f}x)")
    print(f"saved to {folder} (plmkit.analysis.skill_neurons.load_task_model('{folder}'))")


def _cmd_modularity(args: argparse.Namespace) -> None:
    import torch
    from safetensors.torch import save_file

    from .._io import atomic_path, write_json
    from ..assets import load_model
    from ..data.functions import all_functions
    from . import modularity as mod

    model, tok = load_model(args.model, task="base")
    fns = all_functions(seed=args.seed, max_words=args.max_words, max_per_relation=args.max_per_relation,
                        max_per_task=args.max_per_task, sense=args.sense)
    scores = mod.functions_predictivity(model, tok, fns, max_length=args.max_length)
    part = mod.expert_partition(model, args.experts, args.method, seed=args.seed)
    rand = mod.random_partition_like(part, seed=args.seed)
    out = Path(args.out)
    rows = []
    for kind in sorted({f.kind for f in fns}) + ["all"]:
        sub = {f.name: scores[f.name] for f in fns if kind in ("all", f.kind)}
        ext, base = mod.modularization_extent(sub, part, top=args.top), mod.modularization_extent(sub, rand, top=args.top)
        rows.append({"kind": kind, "functions": len(sub), "extent": ext.overall, "random": base.overall,
                     "by_layer": ext.by_layer})
    functional = {f.name: {s: v.tolist() for s, v in
                           mod.functional_experts(scores[f.name], part, args.top, args.alpha).items()} for f in fns}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "partition.safetensors") as tmp:
        save_file({s: torch.as_tensor(v, dtype=torch.int64) for s, v in part.items()}, str(tmp))
    write_json(out / "modularity.json", {"model": args.model, "experts": args.experts, "method": args.method,
                                         "top": args.top, "alpha": args.alpha, "extent": rows,
                                         "functional_experts": functional})
    print(f"{'kind':<10} {'functions':>9} {'extent':>7} {'random':>7}")
    for r in rows:
        print(f"{r['kind']:<10} {r['functions']:9d} {r['extent']:7.3f} {r['random']:7.3f}")
    print(f"extent = top-{args.top:.0%} neurons in the best expert over the same under random partitions "
          f"(1 = none); {args.method} partition -> {out / 'partition.safetensors'}, functional experts "
          f"(p <= {args.alpha}) -> {out / 'modularity.json'}")


def add_parser(sub: Any) -> None:
    """Register ``plmkit neurons ...`` on the main parser's subcommands."""
    from ..data.tasks import TASKS

    n = sub.add_parser("neurons", help="neuron analysis: skill neurons (find, perturb, prune) and functional "
                                       "experts (modularity)")
    nsub = n.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions",
                            help="skill, perturb, prune or modularity")
    sk = nsub.add_parser("skill", help="prompt-tune a frozen model on a task (per seed) and score every FFN neuron")
    sk.add_argument("--model", default="minilm", help="asset name or model folder (default minilm)")
    sk.add_argument("--task", default="topics", choices=sorted(TASKS), help="binary task (default topics)")
    sk.add_argument("--out", required=True, help="folder for scores.safetensors, skill.json and model/")
    sk.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="prompt-tuning seeds (default 0 1 2)")
    sk.add_argument("--steps", type=int, default=200, help="prompt-tuning steps per seed (default 200)")
    sk.add_argument("--virtual-tokens", type=int, default=16, help="soft prompt length (default 16)")
    sk.add_argument("--lr", type=float, default=3e-2, help="prompt-tuning learning rate (default 0.03)")
    sk.add_argument("--batch-size", type=int, default=16, help="texts per step (default 16)")
    sk.add_argument("--max-length", type=int, default=64, help="tokens per text (default 64)")
    sk.add_argument("--max-train", type=int, default=None, help="cap on train texts (default: all)")
    sk.add_argument("--split-seed", type=int, default=0, help="seed of the train/validation/test split (default 0)")
    sk.add_argument("--top", type=float, default=0.02, help="fraction reported per layer (default 0.02)")
    sk.add_argument("--no-progress", action="store_true", help="no progress bars")
    pe = nsub.add_parser("perturb", help="test accuracy with the top skill neurons perturbed vs random neurons")
    pe.add_argument("--skill", required=True, help="folder written by `plmkit neurons skill`")
    pe.add_argument("--model", default=None, help="a model folder of the same task to perturb instead (e.g. a "
                                                   "LoRA or BitFit model saved by save_task_model)")
    pe.add_argument("--fractions", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2],
                    help="fractions of each layer's neurons (default 0.02 0.05 0.1 0.2)")
    pe.add_argument("--kind", default="noise", choices=("noise", "zero", "mean", "shuffle"),
                    help="noise: add Gaussian noise of std --scale; zero; mean; shuffle x --scale (default noise)")
    pe.add_argument("--scale", type=float, default=0.5, help="noise std or shuffle factor (default 0.5)")
    pe.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="random draws and noise seeds")
    pe.add_argument("--json", default=None, help="also write the rows to this JSON file")
    pr = nsub.add_parser("prune", help="keep only the top skill neurons of the upper layers; write a smaller model")
    pr.add_argument("--skill", required=True, help="folder written by `plmkit neurons skill`")
    pr.add_argument("--keep", type=float, required=True, help="fraction of each pruned layer's neurons kept")
    pr.add_argument("--layer-share", type=float, default=0.5, help="upper share of the layers pruned (default 0.5)")
    pr.add_argument("--out", required=True, help="folder for the pruned model (HF layout, load_model reads it)")
    pr.add_argument("--batch-size", type=int, default=16, help="texts in the timed prefill batch (default 16)")
    pr.add_argument("--repeats", type=int, default=10, help="interleaved timing repeats (default 10)")
    mo = nsub.add_parser("modularity", help="neuron predictivity for word-sense, knowledge and task functions; "
                                            "experts; modularization extent against a random partition")
    mo.add_argument("--model", default="minilm", help="asset name or model folder (default minilm)")
    mo.add_argument("--experts", type=int, default=32, help="experts per layer; must divide d_ff (default 32)")
    mo.add_argument("--method", default="kmeans", choices=("kmeans", "random"),
                    help="kmeans: MoEfication's balanced k-means of FFN input rows (default); random")
    mo.add_argument("--out", required=True, help="folder for modularity.json and partition.safetensors")
    mo.add_argument("--max-words", type=int, default=120, help="polysemous words for word-sense functions")
    mo.add_argument("--sense", default="lexname", choices=("lexname", "synset"),
                    help="senses by WordNet supersense (default) or by synset")
    mo.add_argument("--max-per-relation", type=int, default=200, help="sentences per knowledge relation")
    mo.add_argument("--max-per-task", type=int, default=400, help="texts per task function")
    mo.add_argument("--top", type=float, default=0.01, help="a function's top neurons, per layer (default 0.01)")
    mo.add_argument("--alpha", type=float, default=0.001, help="hypergeometric p threshold (default 0.001)")
    mo.add_argument("--max-length", type=int, default=64, help="tokens per text (default 64)")
    mo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    for p, fn in ((sk, _cmd_skill), (pe, _cmd_perturb), (pr, _cmd_prune), (mo, _cmd_modularity)):
        p.set_defaults(fn=fn)
