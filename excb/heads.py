"""Projector h, predictor g and the centroid layer q (SPEC section 1).

The centroid layer returns cosine similarities ``q(v, c) = cos(v, c)`` between embeddings
and the K centroids; ``detach=True`` lets the caller read the centroids without moving
them (predictor path and local crops: centroids learn from global views only).
"""
from __future__ import annotations

import contextlib
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from excb import ExcbError

_ACTS = {"relu": nn.ReLU, "gelu": nn.GELU}


def _init_torch(module: nn.Linear) -> None:
    """torch's default Linear init (kaiming-uniform weight, uniform bias): nothing to do."""


def _init_trunc_normal(module: nn.Linear) -> None:
    """DINO's head init (vision_transformer.py ``DINOHead._init_weights``), also the ExCB
    release's (architectures/layers.py ``MLP._init_weights``): weight ~ trunc_normal(std 0.02) on
    [-2, 2], bias 0."""
    nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


# head.init -> initialiser of every Linear layer of the projector and predictor
HEAD_INITS = {"torch": _init_torch, "trunc_normal": _init_trunc_normal}


def mlp(in_dim: int, hidden_dim: int, out_dim: int, hidden_layers: int = 1, norm: str = "bn", act: str = "relu",
        norm_input: bool = False, init: str = "torch") -> nn.Sequential:
    """An MLP with ``hidden_layers`` hidden layers, i.e. ``hidden_layers + 1`` Linear layers.

    The paper counts hidden layers as DINO does: h, a "2-layer MLP", is 3 Linear layers
    (in -> hidden -> hidden -> out) and g, a "1-layer MLP", is 2. Every hidden Linear is followed
    by (BN) + activation; the last is plain. ``norm_input`` puts a BN on the input (the released
    code's predictor)."""
    if act not in _ACTS:
        raise ExcbError(f"head.act: unknown activation '{act}'; use one of {sorted(_ACTS)}")
    if norm not in ("bn", "none"):
        raise ExcbError(f"head.norm: unknown value '{norm}'; use 'bn' or 'none'")
    if init not in HEAD_INITS:
        raise ExcbError(f"head.init: unknown value '{init}'; use one of {sorted(HEAD_INITS)}")
    if hidden_layers < 0:
        raise ExcbError(f"head: hidden layer count must be >= 0, got {hidden_layers}")
    mods: List[nn.Module] = [nn.BatchNorm1d(in_dim)] if norm_input else []
    n_linear = hidden_layers + 1
    dims = [in_dim] + [hidden_dim] * hidden_layers + [out_dim]
    for i in range(n_linear):
        hidden = i < n_linear - 1
        lin = nn.Linear(dims[i], dims[i + 1], bias=not (norm == "bn" and hidden))   # BN follows: no bias
        HEAD_INITS[init](lin)
        mods.append(lin)
        if hidden:
            if norm == "bn":
                mods.append(nn.BatchNorm1d(dims[i + 1]))
            mods.append(_ACTS[act]())
    return nn.Sequential(*mods)


class _UnitRows(torch.autograd.Function):
    """x / max(||x||, eps) per row, with the closed-form backward (g - u (u·g)) / max(||x||, eps).

    Same values and gradients as ``F.normalize``, whose generic backward makes several passes
    and broadcast reductions over the (65,536, D) centroid matrix (~10x slower on CPU)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        n = x.norm(dim=-1, keepdim=True)
        clamped = n.clamp_min(eps)
        u = x / clamped
        ctx.save_for_backward(u, clamped, n >= eps)
        return u

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        u, n, on_sphere = ctx.saved_tensors
        # below eps the map is x / eps (linear): no projection term
        proj = (u * g).sum(-1, keepdim=True) * on_sphere
        return (g - u * proj) / n, None


def unit_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise L2 normalisation (``F.normalize(x, dim=-1)``) with a lean backward."""
    return _UnitRows.apply(x, eps)


class CentroidLayer(nn.Module):
    """K learnable centroids in R^D; forward gives cosine similarities in [-1, 1]."""

    def __init__(self, dim: int, num_clusters: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_clusters, dim))
        nn.init.normal_(self.weight, std=1.0 / dim ** 0.5)

    @property
    def num_clusters(self) -> int:
        return self.weight.shape[0]

    def normalized_weight(self) -> torch.Tensor:
        """Unit-norm centroids (K, D); normalise once per step and share among all views."""
        return unit_rows(self.weight)

    def forward(self, v: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """cos(v, c) in fp32 (``v`` may be bf16/fp16 from an autocast region; see ``centroid_precision``)."""
        w = self.weight.detach() if detach else self.weight
        v = v if v.dtype == torch.float64 else v.float()
        return F.normalize(v, dim=-1) @ F.normalize(w.to(v.dtype), dim=-1).t()


@contextlib.contextmanager
def centroid_precision():
    """Run the K-wide centroid products in fp32 even inside a bf16/fp16 autocast region.

    Under bf16 autocast a cosine near 1 has a spacing of 0.0039; divided by τ_t = 0.04 the teacher
    logits move in steps of up to 0.1, enough to shift p_t by ~1e-2 on a random network
    (issue 11). Autocast is switched off for this block only — the backbone and heads stay in
    bf16 — and the callers cast their inputs to fp32. On CUDA the fp32 products may use TF32
    (``torch.backends.cuda.matmul.allow_tf32``, set from ``centroids.tf32`` by the training loop)."""
    with contextlib.ExitStack() as stack:
        for dev in ("cpu", "cuda"):
            if torch.is_autocast_enabled(dev):
                stack.enter_context(torch.autocast(dev, enabled=False))
        yield


class _RowsGradMatmul(torch.autograd.Function):
    """``x @ w.T`` where only the first ``n`` rows of x send gradient to w.

    Equal to ``cat([x[:n] @ w.T, x[n:] @ w.detach().T])`` without splitting the product or
    copying the (rows, K) result: the centroid stop-gradient for local crops in one GEMM.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.n = n
        return x @ w.t()

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, w = ctx.saved_tensors
        gx = g @ w.to(g.dtype) if ctx.needs_input_grad[0] else None
        gw = g[: ctx.n].t() @ x[: ctx.n].to(g.dtype) if ctx.needs_input_grad[1] else None
        return gx, gw, None


def cosine_logits(v: torch.Tensor, w_unit: torch.Tensor, grad_rows: Optional[int] = None) -> torch.Tensor:
    """cos(v_i, c_k) for unit centroids ``w_unit``; only rows ``< grad_rows`` move the centroids
    (``None``: all rows do)."""
    v = F.normalize(v if v.dtype == torch.float64 else v.float(), dim=-1)
    if grad_rows is None or grad_rows >= v.shape[0] or not w_unit.requires_grad:
        return v @ w_unit.t()
    return _RowsGradMatmul.apply(v, w_unit, grad_rows)
