"""``plmkit plugd``: encode documents into a plugin store, ask questions against a stored plugin."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ...errors import PlmkitError


def _read_docs(path: str) -> list[tuple[str, str]]:
    p = Path(path)
    if not p.is_file():
        raise PlmkitError(f"no documents file at {path}: give a .jsonl file ({{\"id\": ..., \"text\": ...}} per line) "
                          "or a text file with one document per line")
    lines = [line for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if p.suffix == ".jsonl":
        docs = []
        for n, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                docs.append((str(row["id"]), str(row["text"])))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise PlmkitError(f"{path}:{n}: each line must be a JSON object with 'id' and 'text'") from None
        return docs
    return [(str(i), line) for i, line in enumerate(lines)]


def _model(name: str, map_path: str | None, max_doc_tokens: int | None = None) -> tuple[Any, Any]:
    from ...assets import load_model
    from . import PlugDConfig, attach, load

    model, tok = load_model(name, task="auto")
    if map_path:
        load(model, map_path)
    else:
        attach(model, PlugDConfig(**({"max_doc_tokens": max_doc_tokens} if max_doc_tokens else {})))
    return model, tok


def _cmd_encode(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    from . import PluginStore, config_of, encode, identity

    docs = _read_docs(args.docs)
    model, tok = _model(args.model, args.map, args.max_doc_tokens)
    if not args.map:
        print("# no --map given: a fresh (identity) map network; pretrain one for useful plugins "
              "(plmkit.plugins.plugd.pretrain_map_net, or the `plugd` recipe's map_net/ folder)")
    store = PluginStore(args.store, identity(model), max_bytes=args.max_bytes,
                        meta={"model": args.model, "map_net": str(Path(args.map).resolve()) if args.map else None,
                              "config": config_of(model).to_dict()})
    t0, stored, skipped = time.perf_counter(), [], 0
    for i in tqdm(range(0, len(docs), args.batch_size), desc="encode", disable=args.no_progress):
        chunk = [(d, t) for d, t in docs[i:i + args.batch_size] if store.get(text=t) is None]
        skipped += min(args.batch_size, len(docs) - i) - len(chunk)
        for (doc_id, text), plugin in zip(chunk, encode(model, tok, [t for _, t in chunk])):
            stored.append(store.put(doc_id, text, plugin))
    dt = time.perf_counter() - t0
    size = sum(s.bytes for s in stored)
    print(f"{len(stored)} plugins stored ({skipped} already there) in {dt:.1f} s; "
          f"{size / max(1, len(stored)) / 1e3:.1f} kB per plugin; store {store.total_bytes() / 1e6:.2f} MB in "
          f"{len(store)} plugins at {args.store}")


def _cmd_ask(args: argparse.Namespace) -> None:
    import torch

    from . import PluginStore, identity, plugged

    store = PluginStore.open(args.store)
    meta = store.meta()
    model, tok = _model(meta["model"], meta.get("map_net"), (meta.get("config") or {}).get("max_doc_tokens"))
    if identity(model) != store.identity:
        raise PlmkitError(f"{args.store} was written with other weights or another map network than "
                          f"{meta['model']} + {meta.get('map_net')}: encode the documents again")
    if args.adapter:
        import peft

        model = peft.PeftModel.from_pretrained(model, args.adapter)
    plugin = store.get(args.doc)
    if plugin is None:
        raise PlmkitError(f"document '{args.doc}' is not in {args.store} (never encoded, or evicted): run "
                          "`plmkit plugd encode` on it")
    prompt = args.format.format(question=args.question)
    batch = tok(prompt, return_tensors="pt", add_special_tokens=False)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad(), plugged(model, [plugin]):
        out = model.generate(**batch, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=pad)
    print(tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).split("\n")[0].strip())


def add_parser(sub: Any) -> None:
    p = sub.add_parser("plugd", help="PlugD document plugins: encode documents into a store, ask against one",
                       description="Each document is encoded once by the frozen model into a plugin kept on disk "
                                   "(safetensors, keyed by content hash); questions then attend to it.")
    psub = p.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions", help="encode or ask")
    e = psub.add_parser("encode", help="encode documents into plugins and store them (skips ones already stored)")
    e.add_argument("--model", default="smollm2", help="asset name, local HF folder or hub id (default smollm2)")
    e.add_argument("--map", default=None, help="folder with a pretrained map network (plugd.safetensors/.json, "
                                               "written by plmkit.plugins.plugd.save); default: a fresh one")
    e.add_argument("--docs", required=True, help=".jsonl with {\"id\", \"text\"} per line, or a text file with one "
                                                 "document per line (ids 0, 1, ...)")
    e.add_argument("--store", required=True, help="plugin store folder (created if missing)")
    e.add_argument("--max-bytes", type=int, default=None, help="size cap of the store; least recently used plugins "
                                                               "are evicted beyond it (default: no cap)")
    e.add_argument("--max-doc-tokens", type=int, default=None,
                   help="cut documents to this many tokens (default 256; with --map, the saved config's)")
    e.add_argument("--batch-size", type=int, default=8, help="documents per forward pass (default 8)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(fn=_cmd_encode)
    a = psub.add_parser("ask", help="answer a question with one stored document's plugin plugged in")
    a.add_argument("question", help="the question text")
    a.add_argument("--store", required=True, help="plugin store written by `plmkit plugd encode`")
    a.add_argument("--doc", required=True, help="id of the document to plug in")
    a.add_argument("--adapter", default=None, help="peft adapter folder trained with plugins (e.g. the recipe's "
                                                   "adapters/plugd-qa); default: none")
    a.add_argument("--format", default="Question: {question}\nAnswer:",
                   help="prompt template with {question} (default: the recipe's QA format)")
    a.add_argument("--max-new-tokens", type=int, default=16, help="answer length limit in tokens (default 16)")
    a.set_defaults(fn=_cmd_ask)
