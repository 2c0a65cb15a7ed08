"""``plmkit cook``: compression stages from one config (or the shortcuts), each stage saved in its own folder."""
from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError, read_text_utf8


def _texts(path: str | None, max_chars: int, seed: int) -> tuple[list[str], list[str]]:
    """Training and evaluation texts: a file's lines split 9:1, or the English corpus split in halves."""
    if path:
        lines = [line.strip() for line in read_text_utf8(path).splitlines() if line.strip()]
        if len(lines) < 2:
            raise ConfigError(f"{path}: give at least two non-empty lines (one text per line)")
        cut = max(1, len(lines) // 10)
        return lines[cut:], lines[:cut]
    from ..data import text

    corpus = text.english_corpus(max_chars=max_chars, seed=seed)
    return corpus[0::2], corpus[1::2]


def _cmd_cook(args: argparse.Namespace) -> None:
    from ..assets.models import load_model
    from .cook import CookConfig, cook, shortcut_config

    shortcuts = dict(quantize_bits={"int8": 8, "int4": 4}.get(args.quantize) if args.quantize else None,
                     prune_ffn=args.prune_ffn, prune_heads=args.prune_heads, prune_layers=args.prune_layers,
                     sparsify=args.sparsify)
    given = any(v is not None for v in shortcuts.values()) or args.moefy
    if args.config and given:
        raise ConfigError("cook: give --config or the shortcuts (--quantize/--prune-*/--sparsify/--moefy), not both")
    if args.config:
        cfg = CookConfig.from_json(args.config)
    elif given:
        cfg = shortcut_config(**shortcuts, moefy=args.moefy, steps=args.steps, lr=args.lr)
    else:
        raise ConfigError("cook: nothing to do; give --config cook.json or a shortcut such as --quantize int8")
    model, tok = load_model(args.model, task=args.task)
    train, held = _texts(args.texts, args.max_chars, args.seed)
    report = cook(model, tok, cfg, texts=train, eval_texts=held[: args.eval_texts], out_dir=args.out)
    for row in [{"stage": "input", **report["input"]}] + report["stages"]:
        extras = " ".join(f"{k}={row[k]:.3f}" for k in ("ppl",) if k in row)
        size = f" {row['bytes_on_disk'] / 1e6:.1f} MB" if "bytes_on_disk" in row else ""
        print(f"{row['stage']}: {row['params'] / 1e6:.2f}M params{size} {extras}".rstrip())
    print(f"report: {args.out}/report.json; load a stage with plmkit.load_model('<its folder>')")


def add_parser(sub: Any) -> None:
    c = sub.add_parser("cook", help="compress a model in stages (prune, sparsify, distill, quantize, moefy); every "
                                    "stage is saved in its own loadable folder (BMCook)",
                       description="Runs the stages of --config (JSON: {\"stages\": [{\"kind\": \"prune\", ...}, "
                                   "...]}) or of the shortcuts, in the order prune layers, heads, FFN, sparsify, "
                                   "quantize, moefy. Training stages distil from the model as it was loaded.")
    c.add_argument("--model", default="smollm2", help="asset name or local HF folder (default smollm2)")
    c.add_argument("--task", default="auto", help="head to load the model with (default auto)")
    c.add_argument("--config", default=None, help="cook config JSON (see plmkit.compress.cook.CookConfig)")
    c.add_argument("--quantize", choices=("int8", "int4"), default=None, help="shortcut: weight-only quantization "
                                                                              "(kernels chosen by timing)")
    c.add_argument("--prune-ffn", type=float, default=None, help="shortcut: fraction of FFN neurons to remove "
                                                                 "(L0 gates trained with distillation)")
    c.add_argument("--prune-heads", type=float, default=None, help="shortcut: fraction of attention heads to "
                   "remove, in whole key/value groups (L0 gates; needs a config with head_dim, e.g. LLaMA-style)")
    c.add_argument("--prune-layers", type=float, default=None, help="shortcut: fraction of whole layers to remove "
                                                                    "(L0 gates trained with distillation)")
    c.add_argument("--moefy", action="store_true", help="shortcut: MoEfy the FFNs last (with --quantize, the FFNs "
                                                        "stay float and attention is quantized)")
    c.add_argument("--sparsify", choices=("2:4", "unstructured"), default=None,
                   help="shortcut: magnitude masks held while distilling (unstructured: 50%% of weights)")
    c.add_argument("--steps", type=int, default=100, help="training steps of each shortcut training stage (default 100)")
    c.add_argument("--lr", type=float, default=1e-4, help="learning rate of the shortcut training stages (default 1e-4)")
    c.add_argument("--texts", default=None, help="training text file, one text per line (a tenth is held out for "
                                                 "perplexity); default: plmkit's English corpus")
    c.add_argument("--max-chars", type=int, default=200_000, help="characters of the default corpus (default 200000)")
    c.add_argument("--eval-texts", type=int, default=40, help="held-out texts scored per stage (default 40)")
    c.add_argument("--seed", type=int, default=0, help="corpus shuffle seed (default 0)")
    c.add_argument("--out", required=True, help="folder for the stage folders and report.json")
    c.set_defaults(fn=_cmd_cook)
