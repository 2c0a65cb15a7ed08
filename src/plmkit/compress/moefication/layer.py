"""MoEFFN: an FFN stored as equal, contiguous experts; only the selected experts are computed.

Layout (built once by ``from_layer``): the neurons are permuted so that expert ``e`` owns rows
``[e*s, (e+1)*s)``. For a gated FFN the gate and up rows of an expert sit next to each other
(``[gate_e; up_e]``), so one matmul serves both. ``w_out`` is stored transposed, (d_ff, d_model),
so an expert's output weights are contiguous rows too. A run of adjacent selected experts is one
slice of each weight, computed with one matmul: no weight is copied or gathered.

Modes:
- ``sparse`` (default): batch of one token: the selected experts' runs only. More tokens: each
  selected expert on just the tokens that chose it (index_select, matmul, index_add).
- ``masked``: all experts computed, unselected ones zeroed. The correctness oracle for tests, never
  a speed path.
- ``dense``: all experts, no router: equals the original FFN up to float rounding.

Training (:func:`plmkit.compress.moefication.train_moe`): the expert weights and the router can be made
trainable. Gradients reach the experts through the sparse path itself. The router's discrete choice gets a
straight-through weight: each selected expert's output is multiplied by ``p / p.detach()`` (p the router's
softmax probability), which is exactly 1 in value, so outputs do not change, while the gradient pushes the
router towards the experts whose output lowers the loss. After training, :meth:`MoEFFN.write_back` copies the
experts into the original FFN, so the two stay one model.

A MoEFFN is a :class:`plmkit.arch.Wrapper`: the original FFN stays as ``base_layer`` (``arch.unwrap``
restores it). While a hook watches one of the original FFN's projections (``ffn.in``, ``ffn.gate``,
``ffn.out``, ``ffn.neurons``), the layer computes through those originals in the original neuron order,
with the unselected experts' neurons at zero, so analysis and interventions see (and change) what the
mixture of experts computes. Unobserved, it takes the sparse path above.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ... import arch
from ...arch.wrap import Wrapper, observed
from ...errors import ConfigError
from .router import select_experts

MODES = ("sparse", "masked", "dense")


def _functional(act: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The plain torch function behind a known activation module: one dispatch less per call."""
    name = type(act).__name__
    if name in ("SiLUActivation", "SiLU"):
        return F.silu
    if name == "ReLU":
        return F.relu
    if name == "GELU" and getattr(act, "approximate", "none") == "none":
        return F.gelu
    if name == "GELUActivation" and getattr(act, "act", None) is F.gelu:
        return F.gelu
    return act


def _runs(idx: list[int]) -> list[tuple[int, int]]:
    """Sorted expert indices -> [start, end) runs of adjacent experts."""
    runs: list[tuple[int, int]] = []
    start = prev = idx[0]
    for e in idx[1:]:
        if e != prev + 1:
            runs.append((start, prev + 1))
            start = e
        prev = e
    runs.append((start, prev + 1))
    return runs


class MoEFFN(Wrapper):
    runs_base = False

    def __init__(self, w_in: torch.Tensor, b_in: torch.Tensor | None, w_out_t: torch.Tensor,
                 b_out: torch.Tensor | None, act: Callable[[torch.Tensor], torch.Tensor], experts: int,
                 gated: bool, router: nn.Module, perm: torch.Tensor, k: int | None = None,
                 mass: float | None = None, name: str = "", base_layer: nn.Module | None = None,
                 originals: tuple[nn.Module, nn.Module | None, nn.Module] | None = None):
        super().__init__(base_layer if base_layer is not None else nn.Identity())
        # the original ffn_in, ffn_gate, ffn_out modules (registered under base_layer or a Bypass), for the
        # observed path; a plain attribute so that they are not registered twice
        object.__setattr__(self, "_originals", originals)
        d_ff = w_out_t.shape[0]
        _check_split(d_ff, experts, name)
        self.experts, self.gated, self.name = experts, gated, name
        self.size = d_ff // experts
        self.rows = self.size * (2 if gated else 1)  # rows of w_in per expert
        self.w_in = nn.Parameter(w_in.contiguous(), requires_grad=False)
        self.b_in = None if b_in is None else nn.Parameter(b_in.contiguous(), requires_grad=False)
        self.w_out = nn.Parameter(w_out_t.contiguous(), requires_grad=False)
        self.b_out = None if b_out is None else nn.Parameter(b_out.contiguous(), requires_grad=False)
        self.act = act
        self._act = _functional(act)
        self.router = router
        self.register_buffer("perm", perm.clone().to(w_in.device))
        self.mode = "sparse"
        self.conv1d = False  # the original FFN is GPT-2's Conv1D (weights stored transposed): set by from_layer
        self._view_cache: dict[tuple[int, int], tuple] = {}
        self._view_source: tuple = ()
        self.set_selection(k=k, mass=mass)

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_layer(cls, layer: arch.Layer, perm: torch.Tensor, experts: int, router: nn.Module,
                   k: int | None = None, mass: float | None = None) -> "MoEFFN":
        """Permute ``layer``'s FFN weights into the expert layout (copies; the original FFN is untouched)."""
        d_ff = layer.d_ff
        _check_split(d_ff, experts, layer.name)
        s = d_ff // experts
        perm = perm.to(layer.ffn_in_weight().device)
        with torch.no_grad():
            w_in = layer.ffn_in_weight()[perm]
            b_in = _bias(layer.ffn_in, perm)
            gated = layer.ffn_gate is not None
            if gated:
                w_g = layer.ffn_gate_weight()[perm]
                b_g = _bias(layer.ffn_gate, perm)
                w_in = torch.stack([w_g.view(experts, s, -1), w_in.view(experts, s, -1)], 1).reshape(2 * d_ff, -1)
                if b_in is not None or b_g is not None:
                    zi = w_in.new_zeros(d_ff) if b_in is None else b_in
                    zg = w_in.new_zeros(d_ff) if b_g is None else b_g
                    b_in = torch.stack([zg.view(experts, s), zi.view(experts, s)], 1).reshape(-1)
            w_out_t = layer.ffn_out_weight()[:, perm].t()
            b_out = getattr(layer.ffn_out, "bias", None)
            b_out = None if b_out is None else b_out.detach().clone()
        moe = cls(w_in.clone(), b_in, w_out_t.clone(), b_out, arch.ffn_act(layer), experts, gated, router, perm,
                  k=k, mass=mass, name=layer.name, base_layer=arch.ffn_module(layer),
                  originals=(layer.ffn_in, layer.ffn_gate, layer.ffn_out))
        moe.conv1d = layer.conv1d
        return moe

    def set_selection(self, k: int | None = None, mass: float | None = None) -> None:
        if (k is None) == (mass is None):
            raise ConfigError("set exactly one of k (experts per token) and mass (share threshold)")
        if k is not None and not 1 <= k <= self.experts:
            raise ConfigError(f"k must lie in [1, {self.experts}], got {k}")
        self.k, self.mass = k, mass

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got '{mode}'")
        self.mode = mode

    # -- computation ------------------------------------------------------------------------------
    def _views(self, e0: int, e1: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Weight views of experts ``[e0, e1)``: w_in transposed (d, rows), b_in, w_out (rows, d). Cached:
        at batch 1 the cost of an expert is a few tiny ops, so every saved slice counts."""
        if torch.is_grad_enabled() and self.w_in.requires_grad:  # training: fresh views, each in this graph
            r = slice(e0 * self.rows, e1 * self.rows)
            return (self.w_in[r].t(), None if self.b_in is None else self.b_in[r],
                    self.w_out[e0 * self.size:e1 * self.size])
        source = (self.w_in, self.b_in, self.w_out)
        if len(self._view_source) != 3 or any(a is not b for a, b in zip(source, self._view_source)):
            self._view_cache, self._view_source = {}, source  # load_state_dict(assign=True) replaced them
        views = self._view_cache.get((e0, e1))
        if views is None:
            r = slice(e0 * self.rows, e1 * self.rows)
            views = (self.w_in[r].t(), None if self.b_in is None else self.b_in[r],
                     self.w_out[e0 * self.size:e1 * self.size])
            self._view_cache[(e0, e1)] = views
        return views

    def _apply(self, fn, recurse: bool = True):  # .to()/.half() replace the tensors: drop stale views
        self._view_cache = {}
        return super()._apply(fn, recurse)

    def neurons(self, x: torch.Tensor, e0: int = 0, e1: int | None = None) -> torch.Tensor:
        """Activations of experts ``[e0, e1)`` for tokens ``x`` (n, d_model) -> (n, (e1-e0)*s)."""
        e1 = self.experts if e1 is None else e1
        w_t, b, _ = self._views(e0, e1)
        return self._neurons(x, w_t, b, e1 - e0)

    def _neurons(self, x: torch.Tensor, w_t: torch.Tensor, b: torch.Tensor | None, n_experts: int) -> torch.Tensor:
        h = torch.mm(x, w_t) if b is None else torch.addmm(b, x, w_t)
        if self.gated:  # each expert's rows are [gate; up]: one unbind splits every expert of the run
            gate, up = h.view(len(x), n_experts, 2, self.size).unbind(2)
            return torch.mul(self._act(gate), up).reshape(len(x), -1)
        return self._act(h)

    def _experts(self, x: torch.Tensor, e0: int, e1: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """The summed output of experts ``[e0, e1)``, added into ``out`` when given."""
        w_t, b, w_out = self._views(e0, e1)
        h = self._neurons(x, w_t, b, e1 - e0)
        return torch.mm(h, w_out) if out is None else out.addmm_(h, w_out)

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """(n, E) bool: the experts each token would use."""
        # forward(): skips nn.Module call overhead, once per layer per step
        return select_experts(self.router.forward(x), self.k, self.mass)

    def _observed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Through the original projections (hooks see the model's own shapes), neurons in the original
        order, unselected experts zeroed."""
        ffn_in, ffn_gate, ffn_out = self._originals
        h = ffn_in(x)
        neurons = self.act(ffn_gate(x)) * h if ffn_gate is not None else self.act(h)
        if self.mode != "dense":
            sel = self.select(x.reshape(-1, x.shape[-1])).to(neurons.dtype).repeat_interleave(self.size, dim=1)
            mask = torch.empty_like(sel)
            mask[:, self.perm] = sel
            neurons = neurons * mask.view(neurons.shape)
        return ffn_out(neurons)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self._originals is not None and observed(self._originals):
            return self._observed_forward(x)
        if self.mode == "sparse" and len(x2) == 1:  # decoding: the hot path, checked first
            out = self._one_token(x2)
        elif self.mode == "dense":
            out = self._experts(x2, 0, self.experts)
        elif self.mode == "masked":
            sel = self.select(x2).to(x2.dtype).repeat_interleave(self.size, dim=1)
            out = (self.neurons(x2) * sel) @ self.w_out
        else:
            gate = self._straight_through(x2)
            sel = self.select(x2) if gate is None else select_experts(gate[1], self.k, self.mass)
            out = x2.new_zeros(len(x2), shape[-1])
            for e in sel.any(0).nonzero().flatten().tolist():
                tok = sel[:, e].nonzero().flatten()
                y = self._experts(x2.index_select(0, tok), e, e + 1)
                y = y if gate is None else y * gate[0][tok, e:e + 1].to(y.dtype)
                out.index_add_(0, tok, y.to(out.dtype))  # under autocast the matmuls give bf16
        if self.b_out is not None:
            out = out + self.b_out
        return out.view(shape)

    def _one_token(self, x: torch.Tensor) -> torch.Tensor:
        """One token (1, d_model): each run of adjacent selected experts is one slice of each weight."""
        if self.k is not None:
            idx = sorted(self.router.forward(x)[0].topk(self.k).indices.tolist())
        else:
            idx = self.select(x)[0].nonzero().flatten().tolist()
        out = None
        for e0, e1 in _runs(idx):
            out = self._experts(x, e0, e1, out)
        return out

    def _straight_through(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """While the router trains: (per-token weights equal to 1 that carry the router's gradient, detached
        scores to select by); otherwise None."""
        if not torch.is_grad_enabled() or not any(p.requires_grad for p in self.router.parameters()):
            return None
        scores = self.router.forward(x)
        p = scores.float().softmax(-1)
        return p / p.detach(), scores.detach()

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the expert weights into the original FFN (inverse of :meth:`from_layer`'s permutation), so the
        original modules (the observed path, ``arch.unwrap``) compute what the experts compute."""
        if self._originals is None:
            raise ConfigError(f"{self.name}: this MoE layer keeps no original FFN to write into")
        from ...arch.layers import dense_weight

        ffn_in, ffn_gate, ffn_out = self._originals
        d_ff = self.size * self.experts

        def rows_of(module: nn.Module) -> torch.Tensor:  # (d_ff, d_model) view; GPT-2's Conv1D stores it transposed
            w = dense_weight(module, where=self.name)
            return w.t() if self.conv1d else w

        w = self.w_in.view(self.experts, 2 if self.gated else 1, self.size, -1)
        b = None if self.b_in is None else self.b_in.view(self.experts, 2 if self.gated else 1, self.size)
        for j, module in enumerate((ffn_gate, ffn_in) if self.gated else (ffn_in,)):
            rows_of(module)[self.perm] = w[:, j].reshape(d_ff, -1).to(rows_of(module).dtype)
            if getattr(module, "bias", None) is not None and b is not None:
                module.bias[self.perm] = b[:, j].reshape(-1).to(module.bias.dtype)
        out_w = dense_weight(ffn_out, where=self.name)
        if self.conv1d:  # (d_ff, d_model)
            out_w[self.perm] = self.w_out.to(out_w.dtype)
        else:
            out_w[:, self.perm] = self.w_out.t().to(out_w.dtype)
        if self.b_out is not None and getattr(ffn_out, "bias", None) is not None:
            ffn_out.bias.copy_(self.b_out)

    def extra_repr(self) -> str:
        sel = f"k={self.k}" if self.k is not None else f"mass={self.mass}"
        return f"{self.name}: experts={self.experts}x{self.size}, gated={self.gated}, {sel}, mode={self.mode}"


def _check_split(d_ff: int, experts: int, name: str) -> None:
    if d_ff % experts:
        raise ConfigError(f"{name}: cannot split d_ff={d_ff} into {experts} equal experts; "
                          f"choose a number of experts that divides {d_ff}")


def _bias(module: nn.Module, perm: torch.Tensor) -> torch.Tensor | None:
    b = getattr(module, "bias", None)
    return None if b is None else b.detach()[perm].clone()
