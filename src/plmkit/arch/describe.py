"""A printable summary of a model's resolved spec (``plmkit arch``)."""
from __future__ import annotations

from typing import Any

from torch import nn

from .layers import Override, base_model, ffn_kind, head, hf_model, layers, resolve


def describe(model: nn.Module, override: Override = None) -> dict[str, Any]:
    """Family, widths, FFN kind and module paths (block paths with ``{i}`` for the layer index)."""
    spec = resolve(model, override)
    config = model.config
    all_layers = layers(model, override)
    stacks = []
    for st in spec.stacks:
        ls = [layer for layer in all_layers if layer.stack == st.name]
        b = st.block
        roles = {
            "attn.q": b.attn_q, "attn.k": b.attn_k, "attn.v": b.attn_v, "attn.qkv": b.attn_qkv,
            "attn.o": b.attn_o, "ffn.in": b.ffn_in, "ffn.gate": b.ffn_gate, "ffn.out": b.ffn_out,
            "ffn.neurons": f"input of {b.ffn_out}",
            **{f"norm.{k}": v for k, v in b.norms.items()},
            **{f"cross_attn.{k}": v for k, v in b.cross_attn.items()},
        }
        prefix = ls[0].prefix.rsplit(".", 1)[0] + ".{i}" if ls else st.blocks + ".{i}"
        stacks.append(
            {
                "name": st.name,
                "n_layers": len(ls),
                "d_model": ls[0].d_model if ls else None,
                "d_ff": ls[0].d_ff if ls else None,
                "block": prefix,
                "roles": {k: v for k, v in roles.items() if v},
                "final_norm": st.final_norm,
            }
        )
    h = head(model, override)
    base = base_model(model)
    return {
        "family": spec.family,
        "model_type": getattr(config, "model_type", None),
        "class": type(model).__name__,
        "base_model": type(base).__name__,
        "n_params": sum(p.numel() for p in model.parameters()),
        "ffn_kind": ffn_kind(model, override),
        "activation": spec.activation_name(config),
        "embeddings": spec.embeddings,
        "head": next((p for p in spec.heads if h is not None and _has(model, p)), None),
        "weights_layout": "conv1d (in, out), exposed as (out, in)" if spec.conv1d else "linear (out, in)",
        "stacks": stacks,
        "wrapped": _wrapped(model),
    }


def _wrapped(model: nn.Module) -> dict[str, str]:
    """Module path -> "Wrapper(original)" for every module a method put in place of the model's own."""
    from .wrap import is_wrapper

    out = {}
    for name, m in model.named_modules():
        if name and is_wrapper(m) and not any(name.startswith(p + ".") for p in out):
            out[name] = f"{type(m).__name__}({type(m.base_layer).__name__})"
    return out


def _has(model: nn.Module, path: str) -> bool:
    try:
        hf_model(model)[0].get_submodule(path)
        return True
    except AttributeError:
        return False


def format_spec(info: dict[str, Any]) -> str:
    lines = [
        f"{info['class']}  (family {info['family']}, model_type {info['model_type']}, "
        f"{info['n_params'] / 1e6:.1f}M params)",
        f"FFN: {info['ffn_kind']} (activation {info['activation']}); weights {info['weights_layout']}",
        f"embeddings: {info['embeddings']}    head: {info['head'] or '(none: bare encoder)'}",
    ]
    for st in info["stacks"]:
        lines.append(
            f"stack '{st['name']}': {st['n_layers']} layers, d_model {st['d_model']}, d_ff {st['d_ff']}, "
            f"blocks at {st['block']}" + (f", final norm {st['final_norm']}" if st["final_norm"] else "")
        )
        width = max(len(k) for k in st["roles"])
        lines += [f"  {k:<{width}}  {v}" for k, v in st["roles"].items()]
    if info.get("wrapped"):
        lines.append(f"wrapped modules ({len(info['wrapped'])}; plmkit.arch.unwrap restores them):")
        lines += [f"  {k}  {v}" for k, v in list(info["wrapped"].items())[:12]]
        if len(info["wrapped"]) > 12:
            lines.append(f"  ... {len(info['wrapped']) - 12} more")
    return "\n".join(lines)
