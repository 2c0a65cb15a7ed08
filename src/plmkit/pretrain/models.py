"""Models pretrained from scratch: named sizes per family, and one tokenizer shared by every model of a study.

``scratch_model("bert", "s", tokenizer)`` is a BERT-style encoder with an MLM head, ``scratch_model("llama",
"m", tokenizer)`` a LLaMA-style decoder, both built from ``AutoConfig.for_model`` with random weights drawn
from the seed. :func:`study_tokenizer` trains a WordPiece (bert) or byte-level BPE (llama) vocabulary on
the corpus with ``tokenizers``, or reuses MiniLM's / SmolLM2's; it is saved beside the models so a teacher
and its students read text the same way (knowledge inheritance refuses two vocabularies).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from ..errors import ConfigError

FAMILIES = ("bert", "llama")


@dataclass(frozen=True)
class Size:
    layers: int
    hidden: int
    heads: int
    ffn: int


# Named sizes; each step up roughly triples the non-embedding parameters.
SIZES: dict[str, Size] = {
    "xxs": Size(1, 64, 2, 256),
    "xs": Size(2, 128, 2, 512),
    "s": Size(4, 192, 3, 768),
    "m": Size(4, 256, 4, 1024),
    "l": Size(6, 384, 6, 1536),
    "base": Size(12, 768, 12, 3072),
}


def size(name: str) -> Size:
    if name not in SIZES:
        raise ConfigError(f"unknown size {name!r}; known: {', '.join(SIZES)}")
    return SIZES[name]


def scratch_config(family: str, size_name: str, tokenizer, max_length: int = 128):
    """The transformers config of a ``family`` model of size ``size_name`` for ``tokenizer``'s vocabulary."""
    from transformers import AutoConfig

    s = size(size_name)
    ids = {k: getattr(tokenizer, f"{k}_token_id") for k in ("pad", "bos", "eos")}
    if family == "bert":
        return AutoConfig.for_model("bert", vocab_size=len(tokenizer), hidden_size=s.hidden,
                                    num_hidden_layers=s.layers, num_attention_heads=s.heads, intermediate_size=s.ffn,
                                    max_position_embeddings=max(128, max_length), pad_token_id=ids["pad"] or 0)
    if family == "llama":
        return AutoConfig.for_model("llama", vocab_size=len(tokenizer), hidden_size=s.hidden,
                                    num_hidden_layers=s.layers, num_attention_heads=s.heads,
                                    num_key_value_heads=s.heads, intermediate_size=s.ffn,
                                    max_position_embeddings=max(128, max_length), tie_word_embeddings=True,
                                    pad_token_id=ids["pad"], bos_token_id=ids["bos"], eos_token_id=ids["eos"])
    raise ConfigError(f"unknown family {family!r}; pretraining supports {', '.join(FAMILIES)}")


def scratch_model(family: str, size_name: str, tokenizer, *, max_length: int = 128, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised masked LM (bert) or causal LM (llama); the initial weights depend only on ``seed``."""
    from ..assets.models import build_from_config

    config = scratch_config(family, size_name, tokenizer, max_length)
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        torch.manual_seed(seed)
        return build_from_config(config, task="masked-lm" if family == "bert" else "causal-lm")


def family_of(model: torch.nn.Module) -> str:
    """``bert`` for a masked LM, ``llama`` (or the causal family) for a causal LM."""
    from ..eval.lm import is_causal_lm

    return "llama" if is_causal_lm(model) else "bert"


def study_tokenizer(family: str, texts: Iterable[str] | None = None, *, source: str = "train",
                    vocab_size: int = 8192, out_dir: str | Path | None = None):
    """The tokenizer a study's models share.

    ``source="train"``: a WordPiece (bert, lower-cased, BERT's special tokens) or byte-level BPE (llama,
    ``<s>``/``</s>``/``<pad>``) vocabulary of ``vocab_size`` trained on ``texts``. ``"minilm"`` / ``"smollm2"``:
    that asset's tokenizer. A folder path: a tokenizer saved before (by this function's ``out_dir``).
    """
    from transformers import AutoTokenizer

    if source in ("minilm", "smollm2"):
        from ..assets import model_path

        tok = AutoTokenizer.from_pretrained(str(model_path(source)))
    elif source == "train":
        if texts is None:
            raise ConfigError("training a tokenizer needs the corpus texts")
        tok = _train_wordpiece(texts, vocab_size) if family == "bert" else _train_bpe(texts, vocab_size)
    elif Path(source).is_dir():
        tok = AutoTokenizer.from_pretrained(str(source))
    else:
        raise ConfigError(f"tokenizer source {source!r}: use 'train', 'minilm', 'smollm2' or a saved tokenizer folder")
    if family == "llama" and tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def _train_wordpiece(texts: Iterable[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    tk.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                            show_progress=False))
    cls, sep = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                      special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def _train_bpe(texts: Iterable[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    bos = tk.token_to_id("<s>")
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                      special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
