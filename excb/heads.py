"""Projector h, predictor g and the centroid layer q (SPEC section 1).

The centroid layer returns cosine similarities ``q(v, c) = cos(v, c)`` between embeddings
and the K centroids; ``detach=True`` lets the caller read the centroids without moving
them (predictor path and local crops: centroids learn from global views only).
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

_ACTS = {"relu": nn.ReLU, "gelu": nn.GELU}


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, norm: str = "bn", act: str = "relu",
        norm_input: bool = False) -> nn.Sequential:
    """``layers`` linear layers; hidden ones followed by (BN) + activation; the last is plain."""
    if act not in _ACTS:
        raise ValueError(f"head.act: unknown activation '{act}'; use one of {sorted(_ACTS)}")
    mods: List[nn.Module] = [nn.BatchNorm1d(in_dim)] if norm_input else []
    dims = [in_dim] + [hidden_dim] * (layers - 1) + [out_dim]
    for i in range(layers):
        mods.append(nn.Linear(dims[i], dims[i + 1], bias=not (norm == "bn" and i < layers - 1)))
        if i < layers - 1:
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
        w = self.weight.detach() if detach else self.weight
        return F.normalize(v, dim=-1) @ F.normalize(w, dim=-1).t()


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
    v = F.normalize(v, dim=-1)
    if grad_rows is None or grad_rows >= v.shape[0] or not w_unit.requires_grad:
        return v @ w_unit.t()
    return _RowsGradMatmul.apply(v, w_unit, grad_rows)
