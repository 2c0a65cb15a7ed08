"""Insertion points shared by the methods that add parameters to a model, for every registered family.

- :func:`add_kv_vectors`: extra trainable key/value vectors in one layer's self-attention, attended by
  every query (PlugD's document plugins, prefix tuning). They go in through transformers' attention
  interface (an attention function registered as ``plmkit``, computing with SDPA), so every family whose
  attention uses that interface (all registered ones) takes them unchanged; keys enter as they are
  (no position is applied to them).
- :func:`attend_also`: per-example vectors (B, n, d) in hidden space that chosen layers' self-attention
  also attends to, projected by each layer's own key/value weights (PlugD's plugins at query time).
- :func:`insert_after_block`: a module applied to block i's output (ERNIE's aggregators), its
  parameters registered on the model; the block is wrapped, so arch and hooks still see it.
- :func:`prepend_prompt`: trainable vectors before the input embeddings (prompt tuning), with the
  attention mask and LM labels extended; ``arch.virtual_tokens`` and pooling in hooks account for them.

Each has its undo (:func:`remove_kv_vectors`, ``arch.unwrap``, :func:`remove_prompt`).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .layers import Layer, attention, hf_model, layers
from .wrap import Wrapper

ATTENTION = "plmkit"


class ExtraKV(nn.Module):
    """``n`` key and value vectors per key/value head: (n_kv_heads, n, head_dim) each."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor):
        super().__init__()
        if key.shape != value.shape or key.dim() != 3:
            raise ConfigError(f"extra keys and values must share a (kv_heads, n, head_dim) shape, got "
                              f"{tuple(key.shape)} and {tuple(value.shape)}")
        self.key, self.value = nn.Parameter(key), nn.Parameter(value)

    @property
    def n(self) -> int:
        return self.key.shape[1]


def _extend_mask(mask: torch.Tensor | None, front: torch.Tensor | None, n: int, q: torch.Tensor, k: torch.Tensor,
                 causal: bool) -> Any:
    """The attention mask with ``n`` columns in front of the keys: visible where ``front`` (B, n) is true, or
    always when ``front`` is None."""
    b, _, tq, _ = q.shape
    tk = k.shape[2]
    if mask is None:
        if front is None and (not causal or tq == 1):
            return None
        mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device)
        mask = (mask.tril(tk - tq) if causal else mask)[None, None].expand(b, 1, tq, tk)
    mask = mask[..., -tk:]
    if mask.shape[0] != b:
        mask = mask.expand(b, *mask.shape[1:])
    shape = (b, mask.shape[1], mask.shape[2], n)
    if front is None:
        cols = torch.ones(shape, dtype=torch.bool, device=mask.device)
    else:
        cols = front.to(device=mask.device, dtype=torch.bool)[:, None, None, :].expand(shape)
    if mask.dtype != torch.bool:
        cols = torch.zeros(shape, dtype=mask.dtype, device=mask.device).masked_fill(~cols, torch.finfo(mask.dtype).min)
    return torch.cat([cols, mask], -1)


class AttendedStates:
    """Vectors one layer's self-attention also attends to during a forward pass: ``hidden`` (B, n, d) with
    ``mask`` (B, n) true where a vector is real, projected at call time by ``layer``'s own key/value weights
    (so adapters on those projections apply to them too)."""

    def __init__(self, layer: Layer, hidden: torch.Tensor, mask: torch.Tensor | None, n_kv_heads: int,
                 head_dim: int, norm: nn.Module | None = None):
        self.layer, self.hidden, self.n_kv_heads, self.head_dim, self.norm = layer, hidden, n_kv_heads, head_dim, norm
        self.mask = mask if mask is not None else torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        self._cached: tuple[torch.dtype, tuple[torch.Tensor, torch.Tensor]] | None = None

    def key_value(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n_kv_heads, n, head_dim) keys and values. Without gradients they are projected once and reused
        by every later forward inside the same block (each step of ``generate``)."""
        if self._cached is not None and self._cached[0] == dtype:
            return self._cached[1]
        kv = self._project(dtype)
        if not torch.is_grad_enabled():
            self._cached = (dtype, kv)
        return kv

    def _project(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        layer, attn = self.layer, self.layer.attn
        x = self.hidden.to(dtype)
        if self.norm is not None:
            x = self.norm(x)
        if layer.attn_qkv is not None:  # fused q/k/v (GPT-2): keys and values are the last two thirds
            _, k, v = layer.attn_qkv(x).split(x.shape[-1], -1)
        else:
            k, v = layer.attn_k(x), layer.attn_v(x)
        b, n = x.shape[:2]
        k = k.view(b, n, self.n_kv_heads, self.head_dim)
        v = v.view(b, n, self.n_kv_heads, self.head_dim)
        k_norm = getattr(attn, "k_norm", None)  # per-head key norm (Gemma 3, Qwen 3)
        if isinstance(k_norm, nn.Module):
            k = k_norm(k)
        return k.transpose(1, 2), v.transpose(1, 2)


def _attention_with_extra_kv(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    extra: ExtraKV | None = getattr(module, "plmkit_kv", None)
    states: AttendedStates | None = getattr(module, "plmkit_states", None)
    if extra is None and states is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    b = key.shape[0]
    keys, values, fronts = [], [], []
    if extra is not None:
        keys.append(extra.key.to(key.dtype).unsqueeze(0).expand(b, -1, -1, -1))
        values.append(extra.value.to(value.dtype).unsqueeze(0).expand(b, -1, -1, -1))
        fronts.append(torch.ones(b, extra.n, dtype=torch.bool, device=key.device))
    if states is not None:
        if states.hidden.shape[0] != b:
            raise ConfigError(f"attended states hold {states.hidden.shape[0]} sequences but the batch has {b}")
        sk, sv = states.key_value(key.dtype)
        keys.append(sk)
        values.append(sv)
        fronts.append(states.mask.to(key.device))
    n = sum(k.shape[2] for k in keys)
    front = None if states is None else torch.cat(fronts, 1)
    causal = bool(kwargs.pop("is_causal", None) or getattr(module, "is_causal", False))
    mask = _extend_mask(attention_mask, front, n, query, key, causal)
    bias = kwargs.get("position_bias")
    if isinstance(bias, torch.Tensor):  # T5's relative positions: none for the extra keys
        bias = bias[..., -key.shape[2]:]
        kwargs["position_bias"] = torch.cat([bias.new_zeros(*bias.shape[:-1], n), bias], -1)
    return sdpa_attention_forward(module, query, torch.cat([*keys, key], 2), torch.cat([*values, value], 2), mask,
                                  is_causal=False, **kwargs)


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, _attention_with_extra_kv)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def _layer(model: nn.Module, index: int, stack: str | None) -> Layer:
    found = layers(model, stack=stack)
    if not 0 <= index < len(found):
        raise ConfigError(f"layer {index} does not exist: the model has {len(found)} layers"
                          + (f" in stack '{stack}'" if stack else ""))
    return found[index]


def _pre_norm(model: nn.Module, stack: str) -> bool:
    from .layers import resolve

    return any(st.name == stack and st.final_norm for st in resolve(model).stacks)


def _use_plmkit_attention(model: nn.Module) -> None:
    """Switch the model to the ``plmkit`` attention function (remembering the previous one)."""
    inner, _ = hf_model(model)
    impl = getattr(inner.config, "_attn_implementation", None)
    if impl != ATTENTION:
        if impl not in (None, "sdpa", "eager"):
            raise ConfigError(f"extra key/value vectors run on SDPA; this model uses '{impl}' attention")
        _register_attention()
        inner._plmkit_previous_attention = impl or "sdpa"
        inner.set_attn_implementation(ATTENTION)


def _restore_attention(model: nn.Module) -> None:
    """Back to the attention function used before plmkit's, once no layer holds extra keys or states."""
    if any(layer.attn is not None and (hasattr(layer.attn, "plmkit_kv") or hasattr(layer.attn, "plmkit_states"))
           for layer in layers(model)):
        return
    inner, _ = hf_model(model)
    previous = getattr(inner, "_plmkit_previous_attention", None)
    if previous is not None:
        inner.set_attn_implementation(previous)
        del inner._plmkit_previous_attention


def add_kv_vectors(model: nn.Module, index: int, n: int, *, stack: str | None = None, init_std: float = 0.02,
                   seed: int = 0, key: torch.Tensor | None = None, value: torch.Tensor | None = None) -> ExtraKV:
    """Give layer ``index``'s self-attention ``n`` extra trainable key/value vectors (per kv head).

    They start from N(0, ``init_std``) drawn from ``seed``, or from ``key``/``value`` given as
    (n_kv_heads, n, head_dim). The model switches to the ``plmkit`` attention function (SDPA plus the
    extra vectors); :func:`remove_kv_vectors` takes them out and restores the previous attention.
    """
    layer = _layer(model, index, stack)
    attn = layer.attn
    if attn is None:
        raise ConfigError(f"family '{type(model).__name__}' names no self-attention module in its spec ('attn'): "
                          "extra key/value vectors need one")
    geo = attention(model)
    p = next(attn.parameters())
    shape = (geo.n_kv_heads, n, geo.head_dim)
    g = torch.Generator().manual_seed(seed)
    key = torch.randn(shape, generator=g) * init_std if key is None else key
    value = torch.randn(shape, generator=g) * init_std if value is None else value
    extra = ExtraKV(key.to(device=p.device, dtype=p.dtype), value.to(device=p.device, dtype=p.dtype))
    _use_plmkit_attention(model)
    attn.plmkit_kv = extra
    return extra


def remove_kv_vectors(model: nn.Module) -> int:
    """Take out every :func:`add_kv_vectors` and restore the attention function; returns how many."""
    removed = 0
    for layer in layers(model):
        if layer.attn is not None and hasattr(layer.attn, "plmkit_kv"):
            del layer.attn.plmkit_kv
            removed += 1
    _restore_attention(model)
    return removed


@contextlib.contextmanager
def attend_also(model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor | None = None, *,
                indices: Sequence[int], stack: str | None = None, normalize: bool = False) -> Iterator[None]:
    """Inside the block, the self-attention of layers ``indices`` also attends to ``hidden`` (B, n, d_model),
    one row of vectors per sequence of the batch, where ``mask`` (B, n) is true; each layer projects them with
    its own key/value weights (and key norm), GQA included, no position applied. With ``normalize``, a pre-norm
    layer (its stack ends in a final norm) first applies the norm it puts on its own input before attention, so
    the vectors enter at the scale its projections expect. An empty ``hidden`` (n = 0) leaves the model's
    outputs unchanged."""
    chosen = [_layer(model, i, stack) for i in indices]
    for layer in chosen:
        if layer.attn is None:
            raise ConfigError(f"family '{type(model).__name__}' names no self-attention module in its spec ('attn')")
        if hasattr(layer.attn, "plmkit_states"):
            raise ConfigError(f"layer {layer.name} already attends to other states (nested attend_also)")
    geo = attention(model)
    pre_norm = normalize and _pre_norm(model, stack or chosen[0].stack)
    _use_plmkit_attention(model)
    try:
        for layer in chosen:
            norm = layer.norms.get("attn") if pre_norm else None
            layer.attn.plmkit_states = AttendedStates(layer, hidden, mask, geo.n_kv_heads, geo.head_dim, norm)
        yield
    finally:
        for layer in chosen:
            if hasattr(layer.attn, "plmkit_states"):
                del layer.attn.plmkit_states
        _restore_attention(model)


class InsertedAfter(Wrapper):
    """Block ``base_layer`` followed by ``module`` on its hidden states (extra outputs pass through)."""

    def __init__(self, base_layer: nn.Module, module: nn.Module):
        super().__init__(base_layer)
        self.inserted = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.base_layer(*args, **kwargs)
        if isinstance(out, tuple):
            return (self.inserted(out[0]),) + out[1:]
        return self.inserted(out)

    def __getattr__(self, name: str) -> Any:  # attributes the model reads off its blocks (attention_type, ...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["base_layer"], name)


def insert_after_block(model: nn.Module, index: int, module: nn.Module, *, stack: str | None = None) -> InsertedAfter:
    """Apply ``module`` (hidden states -> hidden states) to block ``index``'s output; its parameters become
    the model's. Undo with ``plmkit.arch.unwrap(model, InsertedAfter)``."""
    layer = _layer(model, index, stack)
    p = next(layer.block.parameters())
    module.to(device=p.device)
    wrapper = InsertedAfter(layer.block, module)
    model.get_submodule(layer.prefix.rpartition(".")[0])[layer.index] = wrapper
    return wrapper


class PromptVectors(nn.Module):
    """``n`` trainable vectors put before every sequence's input embeddings."""

    def __init__(self, vectors: torch.Tensor):
        super().__init__()
        self.vectors = nn.Parameter(vectors)

    @property
    def n(self) -> int:
        return self.vectors.shape[0]


def input_embeddings(model: nn.Module, args: tuple, kwargs: dict, what: str) -> tuple[dict, torch.Tensor]:
    """For a forward pre-hook that edits the inputs: the call's keyword arguments without ``input_ids`` /
    ``inputs_embeds`` (a positional ``input_ids`` folded in), and the input embeddings."""
    if args:
        kwargs = {"input_ids": args[0], **kwargs}
    ids = kwargs.pop("input_ids", None)
    embeds = kwargs.pop("inputs_embeds", None)
    if embeds is None:
        if ids is None:
            raise ConfigError(f"{what} needs input_ids or inputs_embeds")
        embeds = model.get_input_embeddings()(ids)
    return kwargs, embeds


def _prompt_pre_hook(model: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    prompt: PromptVectors = model.plmkit_prompt
    kwargs, embeds = input_embeddings(model, args, kwargs, "prompt tuning")
    args = ()
    b = embeds.shape[0]
    vec = prompt.vectors.to(embeds.dtype).unsqueeze(0).expand(b, -1, -1)
    kwargs["inputs_embeds"] = torch.cat([vec, embeds], 1)
    n = prompt.n
    mask = kwargs.get("attention_mask")
    if mask is not None:
        kwargs["attention_mask"] = torch.cat([mask.new_ones(b, n), mask], 1)
    for key, fill in (("token_type_ids", 0), ("labels", -100)):
        value = kwargs.get(key)
        encoder_decoder = key == "labels" and getattr(model.config, "is_encoder_decoder", False)
        if isinstance(value, torch.Tensor) and value.dim() == 2 and not encoder_decoder:
            kwargs[key] = torch.cat([value.new_full((b, n), fill), value], 1)
    return args, kwargs


def prepend_prompt(model: nn.Module, n: int, *, init: torch.Tensor | str = "vocab", seed: int = 0) -> PromptVectors:
    """Put ``n`` trainable vectors before the input embeddings of every forward call (prompt tuning).

    ``init``: ``"vocab"`` (embeddings of ``n`` token ids drawn from ``seed``), ``"normal"`` (N(0, 0.02)), or
    an (n, d_model) tensor. The attention mask, token type ids and (causal or masked) LM labels are
    extended. :func:`remove_prompt` undoes it.
    """
    inner, _ = hf_model(model)
    if hasattr(inner, "plmkit_prompt"):
        raise ConfigError("this model already has a prompt; call plmkit.arch.remove_prompt(model) first")
    emb = inner.get_input_embeddings()
    g = torch.Generator().manual_seed(seed)
    if isinstance(init, torch.Tensor):
        vectors = init.detach().clone()
    elif init == "vocab":
        vectors = emb.weight.detach()[torch.randint(0, emb.weight.shape[0], (n,), generator=g).to(emb.weight.device)]
    elif init == "normal":
        vectors = torch.randn(n, emb.weight.shape[1], generator=g) * 0.02
    else:
        raise ConfigError(f"init must be 'vocab', 'normal' or a tensor, got {init!r}")
    if vectors.shape != (n, emb.weight.shape[1]):
        raise ConfigError(f"prompt vectors must be ({n}, {emb.weight.shape[1]}), got {tuple(vectors.shape)}")
    prompt = PromptVectors(vectors.to(device=emb.weight.device, dtype=emb.weight.dtype).clone())
    inner.plmkit_prompt = prompt
    inner._plmkit_virtual_tokens = n
    inner._plmkit_prompt_hook = inner.register_forward_pre_hook(_prompt_pre_hook, with_kwargs=True)
    return prompt


def remove_prompt(model: nn.Module) -> None:
    """Undo :func:`prepend_prompt`."""
    inner, _ = hf_model(model)
    if not hasattr(inner, "plmkit_prompt"):
        raise ConfigError("this model has no prompt from plmkit.arch.prepend_prompt")
    inner._plmkit_prompt_hook.remove()
    del inner.plmkit_prompt, inner._plmkit_prompt_hook, inner._plmkit_virtual_tokens
