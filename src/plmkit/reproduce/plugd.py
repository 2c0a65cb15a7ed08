"""Recipe ``plugd``: document plugins on SmolLM2, against concatenation, a reused KV prefix and no document.

The map network is pretrained on English prose (next-sentence generation, recurring-span prediction) with the
backbone frozen; every geonames country document is then encoded once into the plugin store. Two tasks share
those plugins: question answering and fact verification, each with its own LoRA adapter (the backbone and the
map network frozen), test documents unseen in training. The concatenation baseline gets its own adapter per
task, trained for the same steps on the same examples with the document in the input; reusing the document's
KV prefix gives concatenation's outputs at a lower per-query cost (checked here) but must be stored per task,
because each task's adapter changes the values. Per-query FLOPs and wall-clock are measured side by side.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..plugins import plugd
from ..plugins.plugd import PlugDConfig, PluginStore, tasks
from ..plugins.plugd.evaluate import accuracy
from ..plugins.plugd.measure import METHODS, query_costs
from ..train import TrainConfig
from .registry import Budgets, RecipeContext, recipe

MODE_NAMES = {"concat": "concatenation", "plugd": "PlugD", "kv_prefix": "KV prefix reuse", "closed": "no document"}


@dataclass(frozen=True)
class PlugDSettings:
    pretrain_steps: int
    pretrain_examples: int
    adapter_steps: int
    n_test: int  # test documents (each gives one question or claim per fact)
    cost_queries: int  # queries timed per method
    repeats: int
    batch_size: int = 8
    pretrain_lr: float = 1e-3
    adapter_lr: float = 1e-3
    lora_rank: int = 8
    lora_targets: str = "all"  # every attention and FFN projection (the paper puts adapters after each FFN)
    n_validation: int = 30  # documents held out of training (no setting is chosen on them here)
    max_train_rows: int = 600  # per task
    max_doc_tokens: int = 128
    pretrain_max_length: int = 64
    init_examples: int = 16  # pretraining examples scored at initialisation


QUICK = PlugDSettings(pretrain_steps=6, pretrain_examples=48, adapter_steps=6, n_test=8, cost_queries=2, repeats=2,
                      batch_size=4, max_train_rows=24, init_examples=8)
FULL = PlugDSettings(pretrain_steps=300, pretrain_examples=2400, adapter_steps=150, n_test=60, cost_queries=12,
                     repeats=5)


def _train_config(ctx: RecipeContext, name: str, steps: int, batch: int, lr: float) -> TrainConfig:
    return TrainConfig(out_dir=str(ctx.out_dir / "_train" / name), max_steps=steps, batch_size=batch, lr=lr,
                       warmup_steps=max(1, steps // 10), resume=False, seed=ctx.seed, mixed_precision="auto",
                       progress=ctx.progress, log_every=max(1, steps // 10))


@recipe(
    "plugd",
    "PlugD: encode each document once into a plugin, reuse it for every query and task",
    system="plugd",
    paper_claim="Document plugins save 69% of the compute of encoding documents with every input, at comparable "
                "quality, across 8 KILT datasets (T5).",
    citation="Xiao et al., Plug-and-Play Document Modules for Pre-trained Models, ACL 2023",
    budgets=Budgets(quick=QUICK, full=FULL),
)
def run(ctx: RecipeContext) -> dict[str, Any]:
    from ..assets import load_model
    from ..data.text import english_corpus
    from ..device import cpu_info

    S: PlugDSettings = ctx.settings
    with ctx.phase("load SmolLM2"):
        model, tok = load_model("smollm2", task="causal-lm")
    ex = tasks.pretraining_examples(english_corpus(max_chars=S.pretrain_examples * 1200, seed=ctx.seed),
                                    S.pretrain_examples, seed=ctx.seed)
    with ctx.phase("loss at initialisation by document depth"):
        init = _init_losses(model, tok, ex[:S.init_examples], S)
    plugd.attach(model, PlugDConfig(max_doc_tokens=S.max_doc_tokens), seed=ctx.seed)
    with ctx.phase("pretrain the map network"):
        pre = plugd.pretrain_map_net(model, tok, ex, _train_config(ctx, "map", S.pretrain_steps, S.batch_size,
                                                                   S.pretrain_lr), max_length=S.pretrain_max_length)
    plugd.save(model, ctx.out_dir / "map_net", extra={"model": "smollm2"})

    docs = tasks.country_documents()
    split = tasks.split_documents(docs, S.n_validation, S.n_test, seed=ctx.seed)
    texts = {d["id"]: d["text"] for d in docs}
    rng = np.random.default_rng(ctx.seed)
    train_rows, test_rows = {}, {}
    for task in tasks.TASKS:
        rows = tasks.examples(task, split.train, seed=ctx.seed)
        train_rows[task] = [rows[i] for i in rng.permutation(len(rows))[:S.max_train_rows]]
        test_rows[task] = tasks.examples(task, split.test, seed=ctx.seed + 1)
    used = {r["doc"] for rows in (*train_rows.values(), *test_rows.values()) for r in rows}
    with ctx.phase("encode the documents into the store"):
        meta = {"model": "smollm2", "map_net": str(ctx.out_dir / "map_net")}
        store = PluginStore(ctx.out_dir / "store", plugd.identity(model), meta=meta)
        encoded = [d for d in docs if d["id"] in used]
        t0 = time.perf_counter()
        stored = [store.put(d["id"], d["text"], p) for d, p in
                  zip(encoded, plugd.encode(model, tok, [d["text"] for d in encoded]))]
        encode_s = time.perf_counter() - t0
    plugins = {d["id"]: store.get(d["id"]) for d in encoded}

    names = [f"{mode}-{task}" for task in tasks.TASKS for mode in ("plugd", "concat")]
    model = plugd.add_adapters(model, names, r=S.lora_rank, targets=S.lora_targets, seed=ctx.seed)
    results: dict[str, dict[str, Any]] = {}
    training: dict[str, Any] = {}
    for task in tasks.TASKS:
        for mode in ("plugd", "concat"):
            rows = [{"input": tasks.with_document(r, texts[r["doc"]]) if mode == "concat" else r["prompt"],
                     "target": r["target"], **({"plugin": plugins[r["doc"]]} if mode == "plugd" else {})}
                    for r in train_rows[task]]
            with ctx.phase(f"adapter {mode}-{task}"):
                res = plugd.train_adapter(model, tok, f"{mode}-{task}", rows,
                                          _train_config(ctx, f"{mode}-{task}", S.adapter_steps, S.batch_size,
                                                        S.adapter_lr))
            training[f"{mode}-{task}"] = {"loss_first": res.losses[0], "loss_last": res.losses[-1],
                                          "seconds": res.totals.get("seconds"), "rows": len(rows),
                                          "precision": res.mixed_precision}
        with ctx.phase(f"evaluate {task}"):
            out: dict[str, Any] = {}
            model.set_adapter(f"plugd-{task}")
            out["plugd"] = accuracy(model, tok, task, test_rows[task], texts, "plugd", plugins)
            out["closed"] = accuracy(model, tok, task, test_rows[task], texts, "closed")
            model.set_adapter(f"concat-{task}")
            out["concat"] = accuracy(model, tok, task, test_rows[task], texts, "concat")
            results[task] = out
    model.save_pretrained(str(ctx.out_dir / "adapters"))  # one folder per adapter (peft, safetensors)
    with ctx.phase("per-query cost"):
        model.set_adapter("concat-verify")
        cost_rows = test_rows["verify"][:S.cost_queries]
        costs = query_costs(model, tok, [texts[r["doc"]] for r in cost_rows], [r["prompt"] for r in cost_rows],
                            repeats=S.repeats)
        kv_gap = _kv_matches_concat(model, tok, texts[cost_rows[0]["doc"]], cost_rows[0]["prompt"])
    return _report(ctx, S, results, costs, training, pre, stored, encode_s, kv_gap, store, init, cpu_info())


@torch.no_grad()
def _init_losses(model, tok, examples: list[dict], S: PlugDSettings) -> dict[str, float]:
    """LM loss of pretraining examples with no plugin, and with a fresh (identity) map network's plugin taken from
    the depth where plugging starts (the default) or from the last layer (the paper's choice with T5)."""
    collate = tasks.lm_collate(tok, S.pretrain_max_length)
    batch = collate([{"input": e["prompt"], "target": e["target"]} for e in examples])
    out = {"no plugin": float(model(**batch).loss)}
    for name, layer in (("first plugged layer's input", None), ("last layer's output", -1)):
        plugd.attach(model, PlugDConfig(max_doc_tokens=S.max_doc_tokens, doc_layer=layer))
        plugins = plugd.encode(model, tok, [e["text"] for e in examples])
        with plugd.plugged(model, plugins):
            out[name] = float(model(**batch).loss)
        plugd.detach(model)
    return out


@torch.no_grad()
def _kv_matches_concat(model, tok, doc: str, prompt: str) -> float:
    """Largest difference between the next-token logits of concatenation and of the KV prefix + query."""
    from transformers import DynamicCache

    d = tok(f"{doc}\n", add_special_tokens=False, return_tensors="pt")["input_ids"]
    q = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    full = model(input_ids=torch.cat([d, q], 1)).logits[0, -1]
    cache = DynamicCache(config=model.config)
    model(input_ids=d, past_key_values=cache, use_cache=True)
    reused = model(input_ids=q, past_key_values=cache, use_cache=True).logits[0, -1]
    return float((full - reused).abs().max())


def _report(ctx, S, results, costs, training, pre, stored, encode_s, kv_gap, store, init, cpu) -> dict[str, Any]:
    acc = {t: {m: r[m]["accuracy"] for m in ("plugd", "concat", "closed")} for t, r in results.items()}
    drop = float(np.mean([acc[t]["concat"] - acc[t]["plugd"] for t in acc]))
    plug_bytes, kv_bytes = costs.bytes_per_doc["plugd"], costs.bytes_per_doc["kv_prefix"]
    n_tasks = len(tasks.TASKS)
    measured: dict[str, float] = {"compute_saved": costs.compute_saved, "accuracy_drop": drop,
                                  "bytes_vs_kv": plug_bytes / kv_bytes,
                                  "bytes_vs_kv_all_tasks": plug_bytes / (n_tasks * kv_bytes),
                                  "kv_prefix_max_logit_gap": kv_gap, "encode_s_per_doc": encode_s / len(stored)}
    for t, row in acc.items():
        for m, v in row.items():
            measured[f"{t}.{m}.accuracy"] = v
    for m in METHODS:
        measured[f"flops_query.{m}"] = costs.flops_query[m]
        measured[f"ms_query.{m}"] = costs.ms_query[m]
    kv_saved = 1.0 - costs.flops_query["kv_prefix"] / costs.flops_query["concat"]
    measured["kv_prefix_compute_saved"] = kv_saved
    headline = {"metric": "per-query compute saved vs concatenation / accuracy drop (points, mean of QA and "
                          "verification)",
                "ours": f"{costs.compute_saved:.0%} / {drop:.1f}",
                "paper": "69% / comparable (T5, 8 KILT datasets)",
                "peer": f"KV prefix reuse: {kv_saved:.0%} / 0.0, at {kv_bytes / plug_bytes:.0f}x the bytes per "
                        "document per task"}
    rows = []
    for t in acc:
        for m in ("concat", "plugd", "closed"):
            rows.append([t, MODE_NAMES[m], f"{acc[t][m]:.1f}", str(results[t][m]["n"])])
        rows.append([t, MODE_NAMES["kv_prefix"], f"{acc[t]['concat']:.1f} (= concatenation)",
                     str(results[t]["concat"]["n"])])
    acc_table = {"title": f"Test accuracy (%) on {S.n_test} held-out country documents (SmolLM2-135M; one LoRA "
                          f"adapter per task and method, {S.adapter_steps} steps of {S.batch_size})",
                 "columns": ["task", "document given by", "accuracy", "examples"], "rows": rows}
    cost_rows = []
    for m in METHODS:
        amort = [costs.amortised_flops[q][m] / 1e9 for q in costs.amortised_flops]
        cost_rows.append([MODE_NAMES[m], f"{costs.flops_query[m] / 1e9:.2f}", f"{costs.flops_encode[m] / 1e9:.2f}",
                          *(f"{a:.2f}" for a in amort), f"{costs.ms_query[m]:.1f}",
                          f"{costs.bytes_per_doc.get(m, 0) / 1e3:.0f}" if m in costs.bytes_per_doc else "-"])
    cost_table = {"title": f"Per-query cost, batch 1, one forward per query (mean doc {costs.doc_tokens:.0f} tokens, "
                           f"query {costs.query_tokens:.0f}; {costs.queries} queries, median of {S.repeats} "
                           f"interleaved runs; CPU: {cpu.get('cpu')}, {cpu.get('torch_threads')} threads)",
                  "columns": ["method", "GFLOPs/query", "GFLOPs encode/doc",
                              *(f"GFLOPs/query at {q} per doc" for q in costs.amortised_flops), "ms/query",
                              "kB stored/doc/task"],
                  "rows": cost_rows}
    measured.update({f"init_loss.{k}": v for k, v in init.items()})
    notes = [
        "Document depth: with a fresh (identity) map network, the LM loss of pretraining examples is "
        + ", ".join(f"{v:.2f} ({k})" for k, v in init.items()) + ": a decoder's last-layer states are out of "
        "distribution for its upper layers, so plmkit takes the states entering the first plugged layer "
        "(PlugDConfig.doc_layer; the paper takes T5's encoder output).",
        f"Map network pretrained {S.pretrain_steps} steps on {len(pre.losses) and S.pretrain_examples} English-prose "
        f"examples (loss {pre.losses[0]:.2f} -> {pre.losses[-1]:.2f}); the backbone never trains.",
        f"One plugin per document ({len(stored)} stored, {np.mean([s.bytes for s in stored]) / 1e3:.0f} kB each on "
        f"disk, {encode_s / len(stored) * 1000:.0f} ms to encode) serves both tasks' adapters: the backbone encodes "
        "documents with adapters off.",
        f"KV prefix reuse reproduces concatenation (largest next-token logit gap {kv_gap:.1e}) and is cheaper per "
        "query than PlugD (no projection of the plugin in every plugged layer), but its cache depends on the task "
        "adapter (LoRA on the key and value projections) and holds 2 x layers x kv_dim per token: "
        f"{kv_bytes / plug_bytes:.0f}x "
        f"a plugin's bytes, for each of the {n_tasks} tasks.",
        "Where PlugD wins: bytes per stored document and reuse across tasks; where the KV prefix wins: per-query "
        "compute and accuracy on the task it was cached for.",
        "Closed book: PlugD's adapter with no plugin (how much the answers come from the document).",
    ]
    if ctx.quick:
        notes.insert(0, f"Quick run: {S.pretrain_steps} pretraining and {S.adapter_steps} adapter steps, "
                        f"{S.n_test} test documents; accuracies at this budget say nothing about the method (the full "
                        f"run: {FULL.pretrain_steps} and {FULL.adapter_steps} steps, {FULL.n_test} test documents).")
    return {"measured": measured, "headline": headline, "tables": [acc_table, cost_table],
            "plots": _plots(ctx, acc, costs),
            "details": {"accuracy": results, "costs": costs.to_dict(), "training": training,
                        "pretrain_losses": pre.losses, "store_bytes": store.total_bytes(), "cpu": cpu},
            "notes": notes}


def _plots(ctx: RecipeContext, acc: dict, costs) -> list[str]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    modes = ("concat", "plugd", "closed")
    for i, t in enumerate(acc):
        axes[0].bar(np.arange(len(modes)) + 0.38 * i, [acc[t][m] for m in modes], width=0.35, label=t)
    axes[0].set(xticks=np.arange(len(modes)) + 0.19, xticklabels=[MODE_NAMES[m] for m in modes],
                ylabel="test accuracy (%)", title="One plugin per document, two tasks")
    axes[0].legend(fontsize=8)
    qs = [int(q) for q in costs.amortised_flops]
    for m in METHODS:
        axes[1].plot(qs, [costs.amortised_flops[str(q)][m] / 1e9 for q in qs], marker="o", label=MODE_NAMES[m])
    axes[1].set(xscale="log", xlabel="queries per document", ylabel="GFLOPs per query (encode amortised)",
                title="Per-query compute")
    axes[1].legend(fontsize=8)
    return [ctx.save_figure(fig, "plugd.png")]
