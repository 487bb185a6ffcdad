"""Balancers: turn the teacher's cluster similarities into target probabilities.

``excb`` is the paper's ClusterBalancer (Eq. 8-10); ``dino-centering``, ``sinkhorn``
(SwAV-style) and ``none`` share its interface so one training loop compares them:

    p_t, assign = balancer.teacher_probs(z_t, tau_t)   # z_t: (rows, K) cosine similarities
    balancer.update(z_t, assign)                        # state for the next step

``assign`` holds the hard cluster label of every row (used for statistics and for
ExCB's size estimate). All state updates all-reduce across ranks, so every rank holds
the same state.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from excb import ExcbError
from excb.distributed import all_reduce_max, all_reduce_sum

_BALANCERS: Dict[str, Callable[..., "Balancer"]] = {}


def register_balancer(name: str):
    def deco(cls):
        _BALANCERS[name] = cls
        cls.registry_name = name
        return cls

    return deco


def create_balancer(name: str, num_clusters: int, **kwargs) -> "Balancer":
    if name not in _BALANCERS:
        raise ExcbError(f"balancer.name: unknown balancer '{name}'; use one of {sorted(_BALANCERS)}")
    return _BALANCERS[name](num_clusters, **kwargs)


def list_balancers() -> list:
    return sorted(_BALANCERS)


# Rows of a (rows, K) matrix processed together, in elements: each block is mapped, arg-maxed
# and normalised while it is still in cache (CPU); a GPU wants one large kernel.
_BLOCK_ELEMS = {"cpu": 1 << 20, "cuda": 1 << 28}


def _row_step(z: torch.Tensor) -> int:
    return max(1, _BLOCK_ELEMS.get(z.device.type, 1 << 28) // max(z.shape[-1], 1))


def sharpen(z: torch.Tensor, a: torch.Tensor, b: torch.Tensor, assign_raw: bool = False
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """softmax(a ⊙ z + b) per row and its arg-max (of z itself when ``assign_raw``), for
    per-cluster scales ``a`` and offsets ``b`` (K,) — every balancer's target is of this form
    with 1/τ folded into a and b. One multiply-add, arg-max and softmax per cache-sized block."""
    rows, K = z.shape
    p = torch.empty(rows, K, dtype=torch.float32, device=z.device)
    assign = torch.empty(rows, dtype=torch.long, device=z.device)
    step = _row_step(z)
    for r0 in range(0, rows, step):
        blk, zb = p[r0:r0 + step], z[r0:r0 + step].float()
        torch.addcmul(b, zb, a, out=blk)
        assign[r0:r0 + step] = row_argmax(zb if assign_raw else blk)
        blk.copy_(torch.softmax(blk, dim=-1))
    return p, assign


class Balancer(nn.Module):
    """Base: plain softmax of the teacher similarities, no state."""

    registry_name = "base"

    def __init__(self, num_clusters: int, **_: object):
        super().__init__()
        self.num_clusters = num_clusters

    def teacher_probs(self, z_t: torch.Tensor, tau: float) -> Tuple[torch.Tensor, torch.Tensor]:
        K = z_t.shape[-1]
        return sharpen(z_t, torch.full((K,), 1.0 / tau, device=z_t.device), torch.zeros(K, device=z_t.device))

    @torch.no_grad()
    def update(self, z_t: torch.Tensor, assign: torch.Tensor) -> None:
        pass

    def stats(self) -> Dict[str, float]:
        return {}


@register_balancer("none")
class NoBalancer(Balancer):
    """No balancing at all: the collapse baseline."""


def balance_coefficients(s: torch.Tensor, variant: str = "linear", dtype: torch.dtype = torch.float32
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Eq. 10 is affine in z for each cluster: B(z; s)_k = a_k z + b_k. Returns (a, b) in ``dtype``.

    Undersized (sK < 1):  1 - (1 - z) sK      -> a = sK,     b = 1 - sK   (to 1 at s = 0)
      quadratic variant (Appendix B) uses (sK)^2 in place of sK
    Oversized (sK > 1):   (1 + z) / (sK) - 1  -> a = 1/(sK), b = 1/(sK) - 1 (to -1 at s = 1)
    sK = 1: the identity (a = 1, b = 0).
    """
    if variant not in ("linear", "quadratic"):
        raise ExcbError(f"balancer.variant: unknown value '{variant}'; use 'linear' or 'quadratic'")
    sK = s.to(dtype) * s.numel()
    under = sK * sK if variant == "quadratic" else sK
    inv = 1.0 / sK.clamp_min(torch.finfo(dtype).tiny)
    a = torch.where(sK < 1, under, torch.where(sK > 1, inv, torch.ones_like(sK)))
    b = torch.where(sK < 1, 1.0 - under, torch.where(sK > 1, inv - 1.0, torch.zeros_like(sK)))
    return a, b


def balance_operator(z: torch.Tensor, s: torch.Tensor, variant: str = "linear") -> torch.Tensor:
    """Eq. 10: B(z; s) for similarities z (rows, K) and relative cluster sizes s (sum 1, K = len(s))."""
    dtype = torch.promote_types(z.dtype, torch.float32)   # fp32 under AMP, fp64 stays fp64
    a, b = balance_coefficients(s, variant, dtype)
    return torch.addcmul(b, z.to(dtype), a)


def row_argmax(x: torch.Tensor, group: int = 128) -> torch.Tensor:
    """``x.argmax(dim=-1)`` for a 2-D tensor, same result (first maximum), faster on CPU.

    torch's CPU argmax is a scalar loop (~0.6 G elements/s per core); ``amax`` is vectorised.
    The row maximum lies in the group (of ``group`` columns) with the largest maximum, and the
    first such group holds the first maximal index, so: group maxima, best group, argmax inside it.
    """
    rows, K = x.shape
    if x.device.type != "cpu" or K % group or K < 8 * group:
        return x.argmax(dim=-1)
    g = x.view(rows, K // group, group)
    best = g.amax(dim=-1).argmax(dim=-1)                                     # (rows,)
    inner = g[torch.arange(rows, device=x.device), best].argmax(dim=-1)      # (rows,)
    return best * group + inner


@register_balancer("excb")
class ClusterBalancer(Balancer):
    """ExCB's explicit cluster balancing (Eq. 8-10).

    ``s`` starts uniform (1/K: no adjustment at step 0). Per step: balance z_t with the
    current s; hard labels = argmax of the *balanced* output (Eq. 8, and the authors'
    code); s_B = counts / rows with counts and rows summed over ranks; s <- m_s s + (1-m_s) s_B.

    Options: ``assign_from="raw"`` takes the argmax of the unbalanced z_t (Algorithm 1);
    ``update="before"`` updates s before balancing the current batch (Algorithm 1 order).
    The released code's tweaks (engine/criterion.py ``centering`` / ``centering_modifiers``),
    off in the paper recipe: ``winner_boost=0.01`` multiplies each row's winning balanced
    similarity by 1.01 and clamps z to [-1, 1]; ``zero_weight_noise=1e-3`` adds U(0, 1e-3) to a
    balancing weight that is exactly 0 (an empty cluster, s = 0: sK is its weight).
    """

    def __init__(self, num_clusters: int, momentum: float = 0.999, variant: str = "linear",
                 assign_from: str = "balanced", update: str = "after", winner_boost: float = 0.0,
                 zero_weight_noise: float = 0.0, **_: object):
        super().__init__(num_clusters)
        if assign_from not in ("balanced", "raw"):
            raise ExcbError(f"balancer.assign_from: unknown value '{assign_from}'; use 'balanced' or 'raw'")
        if update not in ("after", "before"):
            raise ExcbError(f"balancer.update: unknown value '{update}'; use 'after' or 'before'")
        if winner_boost < 0 or zero_weight_noise < 0:
            raise ExcbError(f"balancer.winner_boost / zero_weight_noise must be >= 0, got {winner_boost} / "
                            f"{zero_weight_noise} (the released code: 0.01 / 0.001)")
        self.momentum = momentum
        self.variant = variant
        self.assign_from = assign_from
        self.update_when = update
        self.winner_boost = float(winner_boost)
        self.zero_weight_noise = float(zero_weight_noise)
        # fp32 state even under AMP: 1/K at K=65,536 is below fp16's resolution near 1/K.
        self.register_buffer("s", torch.full((num_clusters,), 1.0 / num_clusters, dtype=torch.float32))

    def coefficients(self, dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
        """(a, b) of B(z; s) = a z + b (Eq. 10), with the released code's noise on zero weights."""
        a, b = balance_coefficients(self.s, self.variant, dtype)
        if self.zero_weight_noise > 0:
            # the undersized branch is 1 - (1 - z) w with w = a: a weight of exactly 0 (s = 0) maps
            # every z to 1; the code perturbs w to U(0, 1e-3) so such clusters keep an order
            eps = torch.rand_like(a) * self.zero_weight_noise * (a == 0)
            a, b = a + eps, b - eps
        return a, b

    def balanced(self, z_t: torch.Tensor, coeffs: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """B(z_t; s), plus the released code's winner boost and clamp when ``winner_boost`` > 0."""
        dtype = torch.promote_types(z_t.dtype, torch.float32)
        a, b = coeffs if coeffs is not None else self.coefficients(dtype)
        zb = torch.addcmul(b.to(dtype), z_t.to(dtype), a.to(dtype))
        if self.winner_boost > 0:
            win = zb.argmax(dim=-1, keepdim=True)
            zb = zb.scatter(1, win, zb.gather(1, win) * (1.0 + self.winner_boost)).clamp_(-1.0, 1.0)
        return zb

    @torch.no_grad()
    def balanced_argmax(self, z_t: torch.Tensor) -> torch.Tensor:
        """Hard labels argmax_k B(z_t; s)_k (Eq. 8) without materialising B(z_t): row blocks of
        one multiply-add each, reduced while in cache."""
        if self.winner_boost > 0:
            return self.balanced(z_t).argmax(dim=-1)   # a boosted negative winner can lose its place
        a, b = self.coefficients()
        rows, K = z_t.shape
        step = _row_step(z_t)
        buf = torch.empty(min(step, rows), K, dtype=torch.float32, device=z_t.device)
        out = torch.empty(rows, dtype=torch.long, device=z_t.device)
        for r0 in range(0, rows, step):
            blk = buf[: min(step, rows - r0)]
            torch.addcmul(b, z_t[r0:r0 + step].float(), a, out=blk)
            out[r0:r0 + step] = row_argmax(blk)
        return out

    @torch.no_grad()
    def teacher_probs(self, z_t: torch.Tensor, tau: float) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.update_when == "before":
            self._update_s(row_argmax(z_t.float()) if self.assign_from == "raw" else self.balanced_argmax(z_t))
        a, b = self.coefficients()
        if self.winner_boost > 0:
            zb = self.balanced(z_t, (a, b))
            p = F.softmax(zb / tau, dim=-1)
            assign = zb.argmax(dim=-1) if self.assign_from == "balanced" else z_t.argmax(dim=-1)
            return p, assign
        # softmax(B(z)/τ): B is a per-cluster multiply-add, 1/τ folds into its coefficients
        return sharpen(z_t, a / tau, b / tau, assign_raw=self.assign_from == "raw")

    @torch.no_grad()
    def update(self, z_t: torch.Tensor, assign: torch.Tensor) -> None:
        if self.update_when == "after":
            self._update_s(assign)

    @torch.no_grad()
    def _update_s(self, assign: torch.Tensor) -> None:
        K = self.num_clusters
        # counts and the row total travel in one all-reduce
        buf = torch.zeros(K + 1, dtype=torch.float32, device=self.s.device)
        buf[:K] = torch.bincount(assign.reshape(-1), minlength=K).float()
        buf[K] = assign.numel()
        buf = all_reduce_sum(buf)
        s_b = buf[:K] / buf[K].clamp_min(1)
        self.s.mul_(self.momentum).add_(s_b, alpha=1.0 - self.momentum)

    def stats(self) -> Dict[str, float]:
        sK = self.s * self.num_clusters
        return {"s_min_rel": float(sK.min()), "s_max_rel": float(sK.max())}


@register_balancer("dino-centering")
class CenteringBalancer(Balancer):
    """DINO: subtract an EMA centre of the teacher logits, then sharpen."""

    def __init__(self, num_clusters: int, center_momentum: float = 0.9, **_: object):
        super().__init__(num_clusters)
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(num_clusters, dtype=torch.float32))

    @torch.no_grad()
    def teacher_probs(self, z_t: torch.Tensor, tau: float) -> Tuple[torch.Tensor, torch.Tensor]:
        # softmax((z - c)/τ) = softmax(z/τ - c/τ)
        return sharpen(z_t, torch.full_like(self.center, 1.0 / tau), -self.center / tau)

    @torch.no_grad()
    def update(self, z_t: torch.Tensor, assign: torch.Tensor) -> None:
        buf = torch.cat([z_t.float().sum(0), z_t.new_tensor([z_t.shape[0]], dtype=torch.float32)])
        buf = all_reduce_sum(buf)
        mean = buf[:-1] / buf[-1]
        self.center.mul_(self.center_momentum).add_(mean, alpha=1 - self.center_momentum)


@register_balancer("sinkhorn")
class SinkhornBalancer(Balancer):
    """SwAV-style equipartition over the (global) batch with a few Sinkhorn-Knopp iterations."""

    def __init__(self, num_clusters: int, sinkhorn_iters: int = 3, sinkhorn_eps: float = 0.05, **_: object):
        super().__init__(num_clusters)
        self.iters = sinkhorn_iters
        self.eps = sinkhorn_eps

    @torch.no_grad()
    def teacher_probs(self, z_t: torch.Tensor, tau: float) -> Tuple[torch.Tensor, torch.Tensor]:
        z = z_t.float() / self.eps
        # K x B. The shift must be the max over *all* ranks: a per-rank shift scales each rank's
        # columns differently, which the (unconverged) row normalisations do not cancel.
        Q = torch.exp(z - all_reduce_max(z.max().reshape(1))).t()
        B = all_reduce_sum(torch.tensor([float(Q.shape[1])], device=Q.device))
        K = Q.shape[0]
        Q = Q / all_reduce_sum(Q.sum().reshape(1)).clamp_min(1e-30)
        for _ in range(self.iters):
            rows = all_reduce_sum(Q.sum(dim=1, keepdim=True))
            Q = Q / rows.clamp_min(1e-30) / K
            Q = Q / Q.sum(dim=0, keepdim=True).clamp_min(1e-30) / B
        p = (Q * B).t()
        return p, p.argmax(dim=-1)
