"""``plmkit generate``: text from a model kept within a budget of resident weight bytes."""
from __future__ import annotations

import argparse
import time
from typing import Any

from ..eval.timing import peak_rss_bytes


def _cmd_generate(args: argparse.Namespace) -> None:
    import torch
    from transformers import AutoTokenizer

    from ..assets.models import MODEL_ASSETS, load_model, model_path
    from ..compress.quant import int8_info
    from .offload import offload, offload_stats

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    folder = str(model_path(args.model)) if args.model in MODEL_ASSETS else args.model
    if args.int8 and not int8_info(folder):  # float weights: quantize a loaded copy, then stream int8
        model, _ = load_model(args.model)
        model = offload(model, args.budget, source=args.source, int8=True, device=device)
    else:
        model = offload(folder, args.budget, device=device, task="causal-lm")
    tok = AutoTokenizer.from_pretrained(folder)
    prompt = args.prompt
    if args.chat and getattr(tok, "chat_template", None):
        prompt = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    batch = tok(prompt, return_tensors="pt").to(device)
    gen: dict[str, Any] = dict(max_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    if args.temperature > 0:
        gen.update(do_sample=True, temperature=args.temperature, top_p=args.top_p)
        torch.manual_seed(args.seed)
    else:
        gen.update(do_sample=False)
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**batch, **gen)
    dt = time.perf_counter() - t
    new = out[0, batch["input_ids"].shape[1]:]
    print(tok.decode(new, skip_special_tokens=True))
    s = offload_stats(model)
    print(f"# {len(new)} tokens in {dt:.2f} s ({len(new) / dt:.2f} tokens/s, prompt included); resident weights "
          f"{s.peak_resident_bytes / 1e6:.1f} MB of {s.full_bytes / 1e6:.1f} MB (budget {s.budget_bytes / 1e6:.1f} MB, "
          f"{len(s.streamed_blocks)} blocks streamed, head {s.head}, embedding {s.embedding}); "
          f"peak RSS {peak_rss_bytes() / 1e6:.0f} MB")


def add_parser(sub: Any) -> None:
    g = sub.add_parser("generate", help="generate text with a model whose weights stream within a memory budget "
                                        "(BMInf)", description="Keeps as many blocks resident as --budget allows "
                                        "and streams the rest from the model's safetensors files, loading ahead.")
    g.add_argument("prompt", help="the prompt text")
    g.add_argument("--model", default="smollm2", help="asset name or local HF folder (default smollm2); a folder "
                                                      "written by plmkit.compress.quant.save_quantized streams int8")
    g.add_argument("--budget", default="25%", help="resident weight bytes: a share of the model ('25%%') or a size "
                                                   "('60MB', '1.5GiB'); default 25%%")
    g.add_argument("--int8", action="store_true", help="stream int8 weights (quantizes a float model in memory "
                                                       "first; a quarter of the bytes per token)")
    g.add_argument("--source", choices=("memory", "disk"), default="disk",
                   help="with --int8 on a float model: where the streamed int8 weights wait (default disk)")
    g.add_argument("--max-new-tokens", type=int, default=40, help="tokens to generate (default 40)")
    g.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    g.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass when sampling (default 0.95)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    g.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    g.set_defaults(fn=_cmd_generate)
