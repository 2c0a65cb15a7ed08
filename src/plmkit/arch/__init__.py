"""Architecture layer: canonical roles -> each family's module paths, in exactly one place.

>>> from plmkit import arch
>>> for layer in arch.layers(model):           # doctest: +SKIP
...     w_in = layer.ffn_in_weight()          # (d_ff, d_model), whatever the family

Modules that methods put in place of the model's own are :class:`Wrapper` s holding the original as
``base_layer``; every lookup here resolves through them (and through peft's tuner layers and
``PeftModel``), and :func:`unwrap` restores the original model.
"""
from .describe import describe, format_spec
from .families import FAMILIES
from .layers import (
    Layer,
    ReplacedFFN,
    attention,
    base_model,
    dense_weight,
    embeddings,
    ffn_act,
    ffn_activation,
    ffn_apply,
    ffn_forward,
    ffn_module,
    ffn_kind,
    final_norm,
    get_module,
    head,
    hf_model,
    is_causal,
    layers,
    outside_ffn_out,
    register,
    registered_model_types,
    replace_ffn,
    resolve,
    restore_ffn,
    set_ffn_act,
    virtual_tokens,
)
from .insert import (AttendedStates, ExtraKV, InsertedAfter, PromptVectors, add_kv_vectors, attend_also,
                     insert_after_block, prepend_prompt, remove_kv_vectors, remove_prompt)
from .spec import FFN_KINDS, POSITIONS, AttentionGeometry, BlockSpec, ModelSpec, StackSpec
from .wrap import ActivationWrapper, Bypass, Wrapper, innermost, is_wrapper, unwrap, wrap, wrappers

__all__ = [
    "AttendedStates", "ExtraKV", "InsertedAfter", "attend_also", "PromptVectors", "add_kv_vectors", "insert_after_block", "prepend_prompt",
    "remove_kv_vectors", "remove_prompt",
    "FAMILIES", "FFN_KINDS", "POSITIONS", "ActivationWrapper", "AttentionGeometry", "BlockSpec", "Bypass", "Layer",
    "ModelSpec", "ReplacedFFN", "StackSpec", "Wrapper", "attention", "base_model", "dense_weight", "describe",
    "embeddings", "ffn_act", "ffn_activation", "ffn_apply", "ffn_forward", "ffn_module", "ffn_kind", "final_norm",
    "format_spec", "get_module", "head", "hf_model", "innermost", "is_causal", "is_wrapper", "layers",
    "outside_ffn_out", "register", "registered_model_types", "replace_ffn", "resolve", "restore_ffn", "set_ffn_act",
    "unwrap", "virtual_tokens", "wrap", "wrappers",
]
