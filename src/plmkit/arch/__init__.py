"""Architecture layer: canonical roles -> each family's module paths, in exactly one place.

>>> from plmkit import arch
>>> for layer in arch.layers(model):           # doctest: +SKIP
...     w_in = layer.ffn_in_weight()          # (d_ff, d_model), whatever the family
"""
from .describe import describe, format_spec
from .families import FAMILIES
from .layers import (
    Layer,
    base_model,
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
    layers,
    register,
    registered_model_types,
    replace_ffn,
    resolve,
    set_ffn_act,
)
from .spec import FFN_KINDS, BlockSpec, ModelSpec, StackSpec

__all__ = [
    "FAMILIES", "FFN_KINDS", "BlockSpec", "Layer", "ModelSpec", "StackSpec", "base_model", "describe",
    "embeddings", "ffn_act", "ffn_activation", "ffn_apply", "ffn_forward", "ffn_module", "ffn_kind", "final_norm", "format_spec", "get_module",
    "head", "layers", "register", "registered_model_types", "replace_ffn", "resolve", "set_ffn_act",
]
