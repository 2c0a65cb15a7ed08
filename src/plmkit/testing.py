"""Tiny random models of every registered family, for tests and examples (no network)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

TINY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    # name: (model_type, config kwargs); widths are small and distinct so shape mix-ups fail
    "bert": ("bert", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)),
    "roberta": ("roberta", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                pad_token_id=1, bos_token_id=0, eos_token_id=2)),
    "electra": ("electra", dict(hidden_size=32, embedding_size=16, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=48)),
    "llama": ("llama", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            intermediate_size=48, tie_word_embeddings=True)),
    "gemma3": ("gemma3_text", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   head_dim=8, intermediate_size=48, sliding_window=16)),
    "gpt2": ("gpt2", dict(n_embd=32, n_layer=2, n_head=4, n_inner=48, bos_token_id=0, eos_token_id=0)),
    "t5": ("t5", dict(d_model=32, d_ff=48, d_kv=8, num_layers=2, num_decoder_layers=2, num_heads=4,
                      feed_forward_proj="relu")),
    "t5-gated": ("t5", dict(d_model=32, d_ff=48, d_kv=8, num_layers=2, num_decoder_layers=2, num_heads=4,
                            feed_forward_proj="gated-gelu")),
}
TINY_VOCAB = 97


def tiny_config(name: str, **overrides: Any) -> Any:
    from transformers import AutoConfig

    model_type, kwargs = TINY_CONFIGS[name]
    return AutoConfig.for_model(model_type, **{"vocab_size": TINY_VOCAB, **kwargs, **overrides})


def tiny_model(name: str, head: str = "lm", seed: int = 0, **overrides: Any) -> nn.Module:
    """A random model of family ``name``; ``head`` is ``lm`` (LM/MLM head) or ``base`` (bare).

    The weights depend on ``seed`` only; the global RNG is neither read nor advanced, so a test of
    another function's seeding cannot pass through a reseed done here."""
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSeq2SeqLM,
    )

    config = tiny_config(name, **overrides)
    if head == "base":
        cls = AutoModel
    elif config.model_type == "t5":
        cls = AutoModelForSeq2SeqLM
    elif config.model_type in ("bert", "roberta", "electra"):
        cls = AutoModelForMaskedLM
    else:
        cls = AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):  # seeded weights, and the caller's global RNG left untouched
        torch.manual_seed(seed)
        return cls.from_config(config).eval()


def tiny_inputs(model: nn.Module, batch: int = 2, length: int = 7, seed: int = 0, pad_last: int = 2) -> dict:
    """Random token ids with the last ``pad_last`` positions of the first sequence padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, TINY_VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    if pad_last:
        mask[0, -pad_last:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if model.config.model_type == "t5":
        out["decoder_input_ids"] = ids[:, :5]
    return out


TINY_CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                      "{% if add_generation_prompt %}<assistant>{% endif %}")


def tiny_tokenizer(chat: bool = True):
    """A character-level fast tokenizer within ``TINY_VOCAB`` (lower-cased text; pad 0, unk 1, eos 2, and a mask token),
    with a minimal chat template unless ``chat=False``. No files, no network."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    chars = "abcdefghijklmnopqrstuvwxyz0123456789 .,?!'\"-:;()<>/\n{}_=+*&%$#@[]|~^`\\"
    vocab = {"<pad>": 0, "<unk>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    vocab["<mask>"] = len(vocab)
    assert len(vocab) <= TINY_VOCAB
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="</s>",
                                  mask_token="<mask>")
    if chat:
        tok.chat_template = TINY_CHAT_TEMPLATE
    return tok
