"""``plmkit link`` (entity mentions in a text) and ``plmkit kge train`` (TransE / RotatE vectors of a graph)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ...errors import ConfigError


def _cmd_link(args: argparse.Namespace) -> None:
    from .linker import kb_linker

    if not 0.0 <= args.threshold <= 1.0:
        raise ConfigError(f"--threshold is a prior share in [0, 1], got {args.threshold}")
    linker = kb_linker(args.kb, threshold=args.threshold, min_population=args.min_population)
    texts = [" ".join(args.text)] if args.join else args.text
    for text, mentions in zip(texts, linker.link(texts)):
        rows = [{"start": m.start, "end": m.end, "text": m.text, "entity": m.entity, "name": linker.name(m.entity),
                 "score": round(m.score, 4)} for m in mentions]
        if args.json:
            print(json.dumps({"text": text, "mentions": rows}, ensure_ascii=False))
            continue
        print(text)
        for r in rows:
            print(f"  {r['start']:>4}-{r['end']:<4} {r['text']!r:<24} {r['entity']:<22} {r['score']:.3f}  {r['name']}")
        if not rows:
            print("  (no mentions)")


def _read_entities(path: str | None) -> set[str] | None:
    if path is None:
        return None
    from ...errors import read_text_utf8

    if not Path(path).is_file():
        raise ConfigError(f"--entities {path}: no such file; pass a text file with one entity id a line")
    ids = {line.strip() for line in read_text_utf8(path, "entity list").splitlines() if line.strip()}
    if not ids:
        raise ConfigError(f"--entities {path} lists no entity ids; write one id a line")
    return ids


def _cmd_kge(args: argparse.Namespace) -> None:
    from .kge import train_kge

    out = Path(args.out)
    if out.exists() and not (out / "embeddings.safetensors").is_file() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and holds no embeddings; pass a new folder (or one written by "
                          "`plmkit kge train`, which is replaced)")
    emb = train_kge(args.kg, args.model, dim=args.dim, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    negatives=args.negatives, loss=args.loss, heldout=args.heldout, seed=args.seed,
                    entities=_read_entities(args.entities), progress=not args.no_progress)
    emb.save(out)
    metrics = emb.meta.get("heldout_metrics") or emb.meta.get("fit_metrics") or {}
    what = "held-out" if "heldout_metrics" in emb.meta else "training-sample"
    print(f"{emb.meta['model']} on {args.kg}: {len(emb)} entities x {emb.dim} floats, {emb.meta['triples']} triples, "
          f"{emb.meta['train_seconds']} s; {what} MRR {metrics.get('MRR')}, Hits@10 {metrics.get('Hits@10')}")
    print(f"wrote {out}")


def add_parser(sub: Any) -> None:
    """Register ``plmkit link`` and ``plmkit kge`` on the main parser's subcommands."""
    from .kge import KGS, MODELS
    from .linker import KBS

    ln = sub.add_parser("link", help="link the entity mentions of texts to WordNet synsets and/or geonames places",
                        description="Prints each mention's span, text, entity id, prior score and entity name.")
    ln.add_argument("text", nargs="+", help="one or more texts (quote each; see --join)")
    ln.add_argument("--kb", choices=KBS, default="wordnet",
                    help="knowledge base: wordnet (noun synsets), geonames (countries, cities, continents, "
                         "currencies) or both (default wordnet)")
    ln.add_argument("--threshold", type=float, default=0.0,
                    help="drop mentions whose entity has a prior share below this, in [0, 1] (default 0)")
    ln.add_argument("--min-population", type=int, default=100_000,
                    help="geonames: smallest city linked, in people (capitals always; default 100000)")
    ln.add_argument("--join", action="store_true", help="join the words given into one text (unquoted input)")
    ln.add_argument("--json", action="store_true", help="print one JSON object per text instead of a table")
    ln.set_defaults(fn=_cmd_link)

    k = sub.add_parser("kge", help="knowledge-graph embeddings (TransE, RotatE via PyKEEN) of WordNet or geonames")
    ksub = k.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions", help="train")
    t = ksub.add_parser("train", help="train on every triple of a graph and save the entity and relation vectors")
    t.add_argument("--kg", choices=KGS, required=True, help="the graph: wordnet (synsets) or geonames (places)")
    t.add_argument("--model", choices=tuple(MODELS), default="transe", help="transe or rotate (default transe)")
    t.add_argument("--out", required=True, help="folder for embeddings.safetensors, entity_to_id.json, "
                                                "relation_to_id.json and meta.json (replaced if it holds embeddings)")
    t.add_argument("--dim", type=int, default=100, help="embedding dimension; RotatE's is complex (default 100)")
    t.add_argument("--epochs", type=int, default=20, help="passes over the triples (default 20)")
    t.add_argument("--batch-size", type=int, default=1024, help="triples per step (default 1024)")
    t.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default 0.01)")
    t.add_argument("--negatives", type=int, default=16, help="corrupted triples per true one (default 16)")
    t.add_argument("--loss", choices=("nssa", "margin"), default="nssa",
                   help="self-adversarial negative sampling (nssa) or margin ranking loss (default nssa)")
    t.add_argument("--heldout", type=int, default=0,
                   help="keep this many triples out of training and report their filtered MRR (default 0: train "
                        "on all)")
    t.add_argument("--entities", default=None,
                   help="text file of entity ids (one a line): train on their 1-hop neighbourhood only")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    k.set_defaults(fn=_cmd_kge)
