"""Recipe ``bmcook``: compression stages composed by one config, each a real artifact, measured side by side.

- SmolLM2-135M: fp32 against plmkit int8 and int4 weight-only (kernels chosen by timing on this CPU) and the
  peers (torch dynamic int8, torchao int8 weight-only, llama.cpp Q8_0 / Q4_1 on the asset's GGUF, where
  installed): held-out perplexity, capital-city cloze, batch-1 decode and prefill tokens/s, bytes; the full
  run adds the composed model: L0 pruning of whole layers, KV-head groups and FFN neurons, each distilled
  from the fp32 model, then int8.
- MiniLM fine-tuned on fortune topics: L0 pruning of layers, then of FFN neurons, distilled from the
  fine-tuned model, then int8 (and, in the full run, int8 attention + MoEfication of the pruned FFNs): test
  accuracy and batched prefill throughput per stage.
"""
from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..assets.models import gguf_file, load_model
from ..compress.bench import (FP32, INT4, INT8, TORCH_DYNAMIC, TORCHAO, compare_lm_speed, compare_prefill,
                              llama_cpp_rows, peer_status, torch_dynamic_int8, torchao_int8, weight_bytes)
from ..compress.cook import CookConfig, StageConfig, cook
from ..compress.quant import QuantConfig, activation_sensitivity, cpu_description, quantize, sensitive_roles
from ..data import geonames, text, token_batches
from ..eval import next_token_accuracy, perplexity
from .registry import Budgets, RecipeContext, recipe
from .shared import ClassifierSettings, TopicSplit, topic_classifier


INT8_DYNAMIC = "plmkit int8 dynamic"


@dataclass(frozen=True)
class LMSettings:
    corpus_chars: int = 60_000
    n_eval: int = 40  # held-out passages scored for perplexity
    cloze: int = 40  # capital-city prompts
    new_tokens: int = 16
    repeats: int = 2
    int4_groups: tuple[int, ...] = (32,)
    peers: bool = True  # torch dynamic int8, torchao and llama.cpp (where installed)
    dynamic: bool = False  # plmkit int8 with int8 inputs, the roles measured as sensitive kept float
    calibration: int = 16  # training passages the activation sensitivity is measured on
    prune: tuple[tuple[str, float], ...] = ()  # the composed model: (unit, target) L0 stages, then int8
    prune_steps: int = 0
    prune_batch: int = 4
    prune_length: int = 96


@dataclass(frozen=True)
class ClsSettings:
    classifier: ClassifierSettings = ClassifierSettings(relu=True, steps=60, lr=3e-4, max_length=48)
    layers: float = 0.5  # share of layers removed before the FFN pruning (0: none)
    layer_steps: int = 10
    targets: tuple[float, ...] = (0.5,)  # shares of FFN neurons removed
    steps: int = 40
    seeds: tuple[int, ...] = (0,)
    lr: float = 1e-4
    moefy: bool = False  # also: the FFN-pruned model with int8 attention and MoEfied FFNs
    n_test: int | None = 240
    repeats: int = 5


@dataclass(frozen=True)
class BMCookSettings:
    lm: LMSettings = field(default_factory=LMSettings)
    cls: ClsSettings = field(default_factory=ClsSettings)


QUICK = BMCookSettings(lm=LMSettings(n_eval=8, cloze=0, new_tokens=8, repeats=1, peers=False),
                       cls=ClsSettings(steps=20))
FULL = BMCookSettings(lm=LMSettings(n_eval=80, cloze=60, new_tokens=16, repeats=3, int4_groups=(32, 64), dynamic=True,
                                    prune=(("layers", 0.5), ("heads", 1 / 3), ("ffn", 0.25)), prune_steps=80),
                      cls=ClsSettings(classifier=ClassifierSettings(steps=150), layer_steps=50, targets=(0.5, 0.75),
                                      steps=100, seeds=(0, 1), moefy=True, n_test=None, repeats=9))


def stage_label(stage: dict[str, Any]) -> str:
    """A short name of one cook report row: ``layers -50%``, ``FFN -25%``, ``int8``, ``MoE 25%``."""
    kind = stage["stage"]
    if kind == "prune":
        p = stage["prune"]
        unit = {"ffn": "FFN", "heads": "heads", "layers": "layers"}[p["unit"]]
        return f"{unit} -{p['target']:.0%}"
    if kind == "quantize":
        return f"int{stage['bits']}" + ("" if stage.get("ffn", True) else " attn")
    if kind == "moefy":
        return "MoE"
    return kind


def _lm(ctx: RecipeContext, S: LMSettings) -> dict[str, Any]:
    model, tok = load_model("smollm2")
    corpus = text.english_corpus(max_chars=S.corpus_chars, seed=ctx.seed)
    train, held = corpus[0::2], corpus[1::2][: S.n_eval]
    facts = geonames.capital_facts(S.cloze, ctx.seed)

    def score(m: torch.nn.Module) -> dict[str, float]:
        out = {"ppl": perplexity(m, token_batches(tok, held, 8, 128))}
        if facts:
            out["capital_acc"] = next_token_accuracy(m, tok, *geonames.capital_cloze(facts))
        return out

    contenders: dict[str, torch.nn.Module] = {FP32: model}
    reports: dict[str, Any] = {}
    with ctx.phase("quantize"):
        m8 = copy.deepcopy(model)
        reports[INT8] = quantize(m8, QuantConfig(bits=8, kernel="auto"))
        contenders[INT8] = m8
        for g in S.int4_groups:
            name = INT4 if g == 32 else f"{INT4} g{g}"
            m4 = copy.deepcopy(model)
            reports[name] = quantize(m4, QuantConfig(bits=4, group_size=g, kernel="auto"))
            contenders[name] = m4
        sensitivity, float_roles = None, ()
        if S.dynamic:
            calib = list(token_batches(tok, train[: S.calibration], 8, 128))  # training texts, not the held-out ones
            sensitivity = activation_sensitivity(model, calib)
            float_roles = sensitive_roles(sensitivity)
            md = copy.deepcopy(model)
            reports[INT8_DYNAMIC] = quantize(md, QuantConfig(bits=8, kernel="auto", activations="dynamic",
                                                             float_inputs=float_roles))
            contenders[INT8_DYNAMIC] = md
        if S.peers:
            contenders[TORCH_DYNAMIC] = torch_dynamic_int8(model)
            ao = torchao_int8(model)
            if ao is not None:
                contenders[TORCHAO] = ao
    cooked = None
    if S.prune:
        stages = [StageConfig(kind="prune", steps=S.prune_steps, batch_size=S.prune_batch, max_length=S.prune_length,
                              lr=1e-4, seed=ctx.seed, l0={"unit": unit, "target": target, "lr": 0.1, "seed": ctx.seed})
                  for unit, target in S.prune]
        cfg = CookConfig(stages=stages + [StageConfig(kind="quantize", quant={"bits": 8, "kernel": "auto"})])
        with ctx.phase("cook SmolLM2 (prune + distil, int8)"):
            student = copy.deepcopy(model)
            cooked = cook(student, tok, cfg, texts=train, out_dir=ctx.out_dir / "smollm2-cooked", progress=None,
                          evaluate=score, score_input=False)
        pruned, _ = load_model(cooked["stages"][-2]["folder"])
        contenders["cooked: pruned"] = pruned
        contenders["cooked: pruned + int8"] = student
    with ctx.phase("score SmolLM2 contenders"):
        quality = {k: score(m) for k, m in contenders.items()}
    ids = tok("The history of the town begins", return_tensors="pt").input_ids
    prefill_ids = tok(" ".join(held), return_tensors="pt").input_ids[:, :256]
    with ctx.phase("time SmolLM2 contenders"):
        speed = compare_lm_speed(contenders, ids, prefill_ids, new_tokens=S.new_tokens, repeats=S.repeats)
        native = llama_cpp_rows(str(gguf_file("smollm2")), ids[0].tolist(), prefill_ids[0].tolist(),
                                new_tokens=S.new_tokens, repeats=S.repeats,
                                threads=torch.get_num_threads()) if S.peers else {}
    rows = []
    base = speed[FP32]
    for k, m in contenders.items():
        rows.append({"contender": k, **quality[k], **{s: v for s, v in speed[k].items() if s != "decode_runs_s"},
                     "bytes": weight_bytes(m)})
    rows += [{"contender": k, "decode_tok_s": v["decode_tok_s"], "prefill_tok_s": v["prefill_tok_s"],
              "bytes": v["bytes"]} for k, v in native.items()]
    for r in rows:
        r["decode_speedup"] = r["decode_tok_s"] / base["decode_tok_s"]
        r["prefill_speedup"] = r["prefill_tok_s"] / base["prefill_tok_s"]
        r["bytes_ratio"] = rows[0]["bytes"] / r["bytes"]
        if "ppl" in r:
            r["ppl_ratio"] = r["ppl"] / rows[0]["ppl"]
    return {"rows": rows, "kernels": {k: v.get("kernels", {}).get("chosen") for k, v in reports.items()},
            "sensitivity": sensitivity, "float_roles": list(float_roles), "cooked": cooked, "n_eval": len(held), "n_cloze": len(facts), "peers": peer_status()}


def _cls(ctx: RecipeContext, S: ClsSettings) -> dict[str, Any]:
    from ..plugins.variator import tasks

    split = TopicSplit(seed=ctx.seed)
    cs = replace(S.classifier, split=split)
    with ctx.phase("classifier (fine-tune or cache)"):
        model, tok, info = topic_classifier(cs, progress=ctx.progress)
    data = tasks.task_data("topics", max_length=cs.max_length, n_test=S.n_test, seed=split.seed)
    acc = lambda m, s="test": tasks.evaluate(m, tok, data, s)["accuracy"]  # noqa: E731
    evaluate = lambda m: {"test_acc": acc(m)}  # noqa: E731
    base: dict[str, float] = {}
    runs = []
    contenders: dict[str, torch.nn.Module] = {FP32: model}

    def train_stage(unit: str, target: float, steps: int, seed: int) -> StageConfig:
        return StageConfig(kind="prune", steps=steps, batch_size=16, max_length=cs.max_length, lr=S.lr, seed=seed,
                           l0={"unit": unit, "target": target, "lr": 0.1, "seed": seed})

    for target in S.targets:
        for seed in S.seeds:
            stages = [train_stage("layers", S.layers, S.layer_steps, seed)] if S.layers else []
            stages += [train_stage("ffn", target, S.steps, seed),
                       StageConfig(kind="quantize", quant={"bits": 8, "kernel": "auto"})]
            student = copy.deepcopy(model)
            folder = ctx.out_dir / f"minilm-{target}-s{seed}"
            with ctx.phase("cook MiniLM"):
                rep = cook(student, tok, CookConfig(stages=stages), texts=data.train, out_dir=folder,
                           evaluate=evaluate, progress=None, score_input=not base)
            base = base or {"test": rep["input"]["test_acc"]}  # the same fine-tuned model for every run
            chain = [rep["stages"]]
            if S.moefy and seed == S.seeds[0]:
                moe_model, _ = load_model(rep["stages"][-2]["folder"], task="sequence-classification")
                moe_cfg = CookConfig(stages=[
                    StageConfig(kind="quantize", quant={"bits": 8, "kernel": "auto", "ffn": False}),
                    StageConfig(kind="moefy", seed=seed, batch_size=16, max_length=cs.max_length,
                                moe={"experts": 16, "active": 0.25})])
                with ctx.phase("cook MiniLM (int8 attention + MoE)"):
                    moe_rep = cook(moe_model, tok, moe_cfg, texts=data.train, out_dir=folder / "moe", evaluate=evaluate,
                                   progress=None, score_input=False)
                chain.append(rep["stages"][:-1] + moe_rep["stages"])
            for stages_run in chain:
                name = ""
                for i, stage in enumerate(stages_run):
                    name = (name + " + " if name else "") + stage_label(stage)
                    if not any((r["target"], r["seed"], r["name"]) == (target, seed, name) for r in runs):
                        runs.append({"target": target, "seed": seed, "name": name, **stage})
                    if seed == S.seeds[0] and name not in contenders:
                        if i == len(stages_run) - 1:
                            contenders[name] = student if stages_run is chain[0] else moe_model
                        else:
                            contenders[name] = load_model(stage["folder"], task="sequence-classification")[0]
    batch = tasks.sample_batch(tok, data, 16)
    with ctx.phase("time MiniLM contenders"):
        speed = compare_prefill(contenders, batch, repeats=S.repeats)
    return {"plain": base, "runs": runs, "speed": {k: v / speed[FP32] for k, v in speed.items()},
            "texts_per_s": speed, "bytes": {k: weight_bytes(m) for k, m in contenders.items()},
            "n": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)},
            "cache": info}


def _cls_rows(cls: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (FFN target, cumulative stage name): accuracy over seeds, kept share, size, speed."""
    plain = cls["plain"]["test"]
    rows = []
    for key in dict.fromkeys((r["target"], r["name"]) for r in cls["runs"]):
        runs = [r for r in cls["runs"] if (r["target"], r["name"]) == key]
        accs = [r["test_acc"] for r in runs]
        rows.append({"name": key[1], "target": key[0], "acc": float(np.mean(accs)), "acc_sd": float(np.std(accs)),
                     "kept": float(np.mean(accs)) / plain, "params": runs[0]["params"],
                     "mb": runs[0]["bytes_on_disk"] / 1e6, "speedup": cls["speed"].get(key[1], float("nan")),
                     "seeds": len(accs)})
    return rows


def _plots(ctx: RecipeContext, lm: dict[str, Any], cls_rows: list[dict[str, Any]]) -> list[str]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for r in lm["rows"]:
        if "ppl" in r:
            axes[0].scatter(r["decode_speedup"], r["ppl"], s=40 + 10 * r["bytes_ratio"], label=r["contender"])
    axes[0].set(xlabel="batch-1 decode speed-up over fp32", ylabel="held-out perplexity", yscale="log",
                title="SmolLM2-135M (marker size: bytes saved)")
    axes[0].legend(fontsize=7)
    for r in cls_rows:
        axes[1].scatter(r["speedup"], r["acc"], s=40)
        axes[1].annotate(r["name"], (r["speedup"], r["acc"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    axes[1].set(xlabel="prefill throughput over fp32 (batch 16)", ylabel="test accuracy (mean over seeds)",
                title="MiniLM topic classifier, stage by stage")
    return [ctx.save_figure(fig, "bmcook.png")]


@recipe(
    "bmcook",
    "BMCook: pruning, distillation, quantization and MoEfication composed into real smaller, faster models",
    system="bmcook",
    paper_claim="T5-3B: pruning + distillation keep 98.8% of performance at 2x speed, + int8 98.6% at 8x, "
                "+ MoEfication 97.4% at 12x.",
    citation="Zhang et al., BMCook: A Task-agnostic Compression Toolkit for Big Models, EMNLP 2022 (demo)",
    budgets=Budgets(quick=QUICK, full=FULL),
)
def run(ctx: RecipeContext) -> dict[str, Any]:
    S: BMCookSettings = ctx.settings
    torch.manual_seed(ctx.seed)
    lm = _lm(ctx, S.lm)
    cls = _cls(ctx, S.cls)
    for folder in ctx.out_dir.glob("**/work"):
        shutil.rmtree(folder, ignore_errors=True)
    dash = lambda r, k, f: format(r[k], f) if k in r else "-"  # noqa: E731
    tables = [{
        "title": f"SmolLM2-135M on {cpu_description()}: perplexity on {lm['n_eval']} held-out passages"
                 + (f", capital cloze on {lm['n_cloze']} countries" if lm["n_cloze"] else "")
                 + "; speeds are medians of interleaved runs in this process (llama.cpp timed right after)",
        "columns": ["contender", "perplexity", "ppl ratio", "capital acc", "decode tok/s", "decode speed-up",
                    "prefill tok/s", "prefill speed-up", "weight MB", "bytes ratio"],
        "rows": [[r["contender"], dash(r, "ppl", ".2f"), dash(r, "ppl_ratio", ".3f"), dash(r, "capital_acc", ".3f"),
                  f"{r['decode_tok_s']:.1f}", f"{r['decode_speedup']:.2f}x", f"{r['prefill_tok_s']:.0f}",
                  f"{r['prefill_speedup']:.2f}x", f"{r['bytes'] / 1e6:.0f}", f"{r['bytes_ratio']:.2f}x"]
                 for r in lm["rows"]]}]
    if lm["sensitivity"]:
        sens = lm["sensitivity"]
        tables.append({
            "title": f"SmolLM2 int8 with the inputs of one role quantized too (per call, int8): perplexity on "
                     f"{S.lm.calibration} training passages; roles above +2% keep float inputs in "
                     f"'{INT8_DYNAMIC}': {', '.join(lm['float_roles']) or 'none'}",
            "columns": ["int8 inputs at", "perplexity", "ratio to weight-only"],
            "rows": [[k if k not in ("none", "all") else {"none": "nowhere (weight-only)", "all": "every layer"}[k],
                      f"{v:.2f}", f"{v / sens['none']:.3f}"] for k, v in sens.items()]})
    if lm["cooked"]:
        tables.append({
            "title": f"SmolLM2 composed stage by stage ({S.lm.prune_steps} distillation steps per pruning stage, "
                     f"batch {S.lm.prune_batch} x {S.lm.prune_length} tokens)",
            "columns": ["stage", "params", "MB on disk", "perplexity", "capital acc", "seconds"],
            "rows": [[stage_label(st), f"{st['params'] / 1e6:.1f}M", f"{st['bytes_on_disk'] / 1e6:.0f}",
                      f"{st['ppl']:.2f}", dash(st, "capital_acc", ".3f"), f"{st['seconds']:.0f}"]
                     for st in lm["cooked"]["stages"]]})
    plain = cls["plain"]["test"]
    cls_rows = _cls_rows(cls)
    tables.append({
        "title": f"MiniLM fine-tuned on fortune topics (train {cls['n']['train']}, test {cls['n']['test']}); fp32 "
                 f"test accuracy {plain:.3f}; L0 pruning distilled from the fine-tuned model ({S.cls.layer_steps} "
                 f"steps for layers, {S.cls.steps} for FFN neurons), then int8; prefill throughput batch 16 "
                 "against fp32, interleaved",
        "columns": ["model", "test accuracy", "kept", "params", "MB on disk", "prefill speed-up", "seeds"],
        "rows": [[r["name"], f"{r['acc']:.3f}" + (f" ± {r['acc_sd']:.3f}" if r["seeds"] > 1 else ""),
                  f"{r['kept']:.1%}", f"{r['params'] / 1e6:.1f}M", f"{r['mb']:.1f}", f"{r['speedup']:.2f}x",
                  r["seeds"]] for r in cls_rows]})
    measured: dict[str, float] = {}
    for r in lm["rows"]:
        key = r["contender"].replace(" ", "_")
        for m in ("ppl", "decode_speedup", "prefill_speedup", "bytes_ratio"):
            if m in r:
                measured[f"smollm2.{key}.{m}"] = r[m]
    measured["minilm.fp32_acc"] = plain
    for r in cls_rows:
        measured[f"minilm.{r['name'].replace(' ', '_')}.acc"] = r["acc"]
        measured[f"minilm.{r['name'].replace(' ', '_')}.prefill_speedup"] = r["speedup"]
    i8 = next(r for r in lm["rows"] if r["contender"] == INT8)
    composed = [r for r in cls_rows if r["name"].endswith("int8")][0]
    headline = {
        "metric": "SmolLM2 int8: decode speed-up / perplexity ratio; MiniLM composed (pruned + int8): accuracy "
                  "kept / prefill speed-up",
        "ours": f"{i8['decode_speedup']:.2f}x / {i8['ppl_ratio']:.3f}; {composed['kept']:.1%} / {composed['speedup']:.2f}x",
        "paper": "T5-3B: 98.6% kept at 8x (prune + distil + int8)",
        "peer": next((f"torch dynamic int8: {r['decode_speedup']:.2f}x / {r['ppl_ratio']:.3f}" for r in lm["rows"]
                      if r["contender"] == TORCH_DYNAMIC), "-"),
    }
    notes = [
        "The SmolLM2 asset was dequantized from a Q4_1 GGUF file (groups of 32 weights, a scale and a minimum "
        "each), so int4 with groups of 32 represents its weights exactly: its perplexity matches fp32 by "
        "construction, not by the quantizer's merit. int8 per channel and int4 with groups of 64 (full run) do "
        "lose information; MiniLM's weights are original fp32.",
        f"Kernels chosen by timing on this CPU: {lm['kernels']}.",
        f"Peers: {lm['peers']}.",
        "torch has no CPU kernel for 2:4 or unstructured sparse matmuls, so magnitude masks (the 'sparsify' stage) "
        "save neither bytes nor time here; the recipe therefore composes structured pruning and quantization.",
        "Cache: topic classifier " + ("hit" if cls["cache"].get("hit") else "built") + ".",
    ]
    if ctx.quick:
        notes.insert(0, f"Quick run: {S.lm.n_eval} passages, no peers, no SmolLM2 pruning; MiniLM: layers -"
                        f"{S.cls.layers:.0%} ({S.cls.layer_steps} steps), FFN -{S.cls.targets[0]:.0%} ({S.cls.steps} "
                        f"steps), 1 seed (the full run: {FULL.cls.steps} steps, 2 seeds, FFN -50% and -75%, "
                        "a MoEfied variant, SmolLM2 pruned in layers, heads and FFN).")
    return {"measured": measured, "headline": headline, "tables": tables, "plots": _plots(ctx, lm, cls_rows),
            "cache": {"minilm-topic-classifier": cls["cache"]}, "details": {"smollm2": lm, "minilm": cls},
            "notes": notes}
