"""English text assets as plain records: labelled reviews, novels, news, Wikipedia, fortunes."""
from __future__ import annotations

import bz2
import csv
import html
import io
import random
import re
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from ..assets import asset_path

Record = dict


def drug_reviews(split: str = "train") -> list[Record]:
    """drugs.com reviews: ``{"text", "label" (positive/negative/neutral), "drug", "condition"}``."""
    member = {"train": "drugsComTrain.tsv", "test": "drugsComTest.tsv"}[split]
    with zipfile.ZipFile(asset_path("drugreviews")) as z:
        rows = csv.DictReader(io.TextIOWrapper(z.open(member), encoding="utf-8"), delimiter="\t")
        return [
            {"text": html.unescape(r["review"]).strip().strip('"').strip(), "label": r["rating"],
             "drug": r["drugName"], "condition": r["condition"]}
            for r in rows
        ]


def pang_lee() -> list[Record]:
    """200 movie-review sentences: ``{"text", "label" (pos/neg)}``."""
    out = []
    for line in asset_path("pang-lee").read_text(encoding="cp1252", errors="replace").splitlines():
        label, _, text = line.partition(" ")
        if text.strip():
            out.append({"text": text.strip(), "label": label.removeprefix("__label__")})
    return out


def lee_news() -> list[str]:
    """300 news documents (Lee background corpus)."""
    return [ln.strip() for ln in asset_path("lee").read_text(encoding="latin-1").splitlines() if ln.strip()]


def _read_r_lazyload(rdb: Path) -> dict[str, object]:
    """Objects of an R lazy-load database (.rdx index + .rdb zlib blobs), parsed with ``rdata`` (no code runs)."""
    import warnings
    import zlib

    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = rdata.read_rds(str(rdb.with_suffix(".rdx")))
        blob = rdb.read_bytes()
        out = {}
        for name, (offset, length) in index["variables"].items():
            offset, length = int(offset), int(length)
            raw = zlib.decompress(blob[offset + 4: offset + length])  # 4-byte length header, then zlib
            out[str(name)] = rdata.conversion.convert(rdata.parser.parse_data(raw))
    return out


AUSTEN_BOOKS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")


@lru_cache(maxsize=1)
def austen() -> dict[str, str]:
    """Jane Austen's six novels: ``{book: text}`` (lines joined with newlines)."""
    objs = _read_r_lazyload(asset_path("austen"))
    return {b: "\n".join(str(x) for x in objs[b]) for b in AUSTEN_BOOKS if b in objs}


@lru_cache(maxsize=1)
def moby_dick() -> str:
    objs = _read_r_lazyload(asset_path("mobydick"))
    return str(objs["mobydick"][0]).replace("\r\n", "\n").lstrip("\ufeff")


_WIKI_MARKUP = [
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"<ref[^>]*/>|<ref.*?</ref>", re.S), ""),
    (re.compile(r"\{\{[^{}]*\}\}"), ""),
    (re.compile(r"\{\|.*?\|\}", re.S), ""),
    (re.compile(r"\[\[(?:File|Image|Category):[^\]]*\]\]"), ""),
    (re.compile(r"\[\[(?:[^|\]]*\|)?([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[https?://[^ \]]+ ?([^\]]*)\]"), r"\1"),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"^[=*#:;].*$", re.M), ""),
    (re.compile(r"\n{2,}"), "\n"),
]


@lru_cache(maxsize=1)
def wikipedia() -> list[Record]:
    """Articles of the shortened Wikipedia dump: ``{"title", "text"}`` with markup stripped."""
    import xml.etree.ElementTree as ET

    articles = []
    with bz2.open(asset_path("wikipedia")) as f:
        for _, elem in ET.iterparse(f):
            if not elem.tag.endswith("}page"):
                continue
            ns = elem.tag[: -len("page")]
            title = elem.findtext(f"{ns}title") or ""
            text = elem.findtext(f"{ns}revision/{ns}text") or ""
            elem.clear()
            if ":" in title or text.lower().startswith("#redirect"):
                continue
            for _ in range(2):  # nested templates
                text = _WIKI_MARKUP[2][0].sub("", text)
            for pattern, repl in _WIKI_MARKUP:
                text = pattern.sub(repl, text)
            text = html.unescape(text).strip()
            if len(text) > 200:
                articles.append({"title": title, "text": text})
    return articles


FORTUNES_DIR = Path("/usr/share/games/fortunes")


def fortunes(category: str | None = None) -> list[Record]:
    """Fortune quotes: ``{"text", "category"}``; ``category`` filters (e.g. ``science``)."""
    asset_path("fortunes")
    files = sorted(p for p in FORTUNES_DIR.iterdir() if p.is_file() and not p.suffix and not p.name.startswith("."))
    out = []
    for p in files:
        if category and p.name != category:
            continue
        for q in p.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            q = q.strip().strip("%").strip()
            if q:
                out.append({"text": q, "category": p.name})
    return out


def fortune_categories() -> list[str]:
    return sorted({r["category"] for r in fortunes()})


def english_corpus(max_chars: int | None = None, seed: int = 0) -> list[str]:
    """Paragraph-sized English passages from every text asset that is installed, shuffled with ``seed``."""
    from ..errors import MissingAssetError

    passages: list[str] = []
    sources = [
        lambda: [p for a in wikipedia() for p in a["text"].split("\n")],
        lambda: [p for book in austen().values() for p in _paragraphs(book)],
        lambda: _paragraphs(moby_dick()),
        lee_news,
    ]
    for src in sources:
        try:
            passages += [c for p in src() for c in _chunks(" ".join(p.split())) if len(c) > 80]
        except MissingAssetError:
            continue
    random.Random(seed).shuffle(passages)
    if max_chars is not None:
        out, total = [], 0
        for p in passages:
            if total >= max_chars:
                break
            out.append(p)
            total += len(p)
        passages = out
    return passages


ENGLISH_SOURCES = ("wikipedia", "austen", "moby_dick", "lee_news", "wordnet_glosses", "fortunes")


def english_documents(sources: tuple[str, ...] = ENGLISH_SOURCES[:5], section: int = 30) -> list[tuple[str, list[str]]]:
    """English documents as ``(doc_id, passages)``, for corpora that split by document (pretraining).

    A Wikipedia article, a Lee news story and a fortune are a document each; the novels come as sections
    of ``section`` consecutive paragraphs; WordNet glosses ("lemma: gloss") as groups of 200 within one
    lexicographer file. Passages are whitespace-normalised, at most ~800 characters, and each one is
    kept once (the first time it occurs). Sources that are not installed are skipped."""
    from ..errors import MissingAssetError

    def sections(name: str, paragraphs: list[str]) -> list[tuple[str, list[str]]]:
        return [(f"{name}/{i // section}", paragraphs[i:i + section]) for i in range(0, len(paragraphs), section)]

    def glosses() -> list[tuple[str, list[str]]]:
        from .wordnet import wordnet_graph

        by_file: dict[str, list[str]] = {}
        for sid in sorted(wordnet_graph().synsets):
            s = wordnet_graph().synsets[sid]
            by_file.setdefault(s.lexname, []).append(f"{s.lemmas[0].replace('_', ' ')}: {s.gloss}.")
        return [(f"wordnet/{f}/{i // 200}", [" ".join(g[i:i + 200])]) for f, g in sorted(by_file.items())
                for i in range(0, len(g), 200)]

    builders = {
        "wikipedia": lambda: [(f"wikipedia/{a['title']}", a["text"].split("\n")) for a in wikipedia()],
        "austen": lambda: [d for b, text in austen().items() for d in sections(f"austen/{b}", _paragraphs(text))],
        "moby_dick": lambda: sections("moby_dick", _paragraphs(moby_dick())),
        "lee_news": lambda: [(f"lee_news/{i}", [t]) for i, t in enumerate(lee_news())],
        "wordnet_glosses": glosses,
        "fortunes": lambda: [(f"fortunes/{r['category']}/{i}", [r["text"]]) for i, r in enumerate(fortunes())],
    }
    unknown = set(sources) - set(builders)
    if unknown:
        from ..errors import ConfigError

        raise ConfigError(f"unknown English sources {sorted(unknown)}; known: {', '.join(ENGLISH_SOURCES)}")
    seen: set[str] = set()
    docs = []
    for name in sources:
        try:
            raw = builders[name]()
        except MissingAssetError:
            continue
        for doc_id, paragraphs in raw:
            passages = []
            for c in (c for p in paragraphs for c in _chunks(" ".join(p.split()))):
                if len(c) > 40 and c not in seen:
                    seen.add(c)
                    passages.append(c)
            if passages:
                docs.append((doc_id, passages))
    return docs


def _chunks(text: str, max_chars: int = 800) -> list[str]:
    """Split a long paragraph at sentence ends into pieces of at most ``max_chars`` (roughly)."""
    out, cur = [], ""
    for s in iter_sentences(text):
        if cur and len(cur) + len(s) > max_chars:
            out.append(cur)
            cur = ""
        cur = f"{cur} {s}".strip()
    if cur:
        out.append(cur)
    return out


def _paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


def iter_sentences(text: str) -> Iterator[str]:
    for s in re.split(r"(?<=[.!?])\s+", text):
        if s.strip():
            yield s.strip()
