"""The ExCB loss, Eq. 7, with Algorithm 1's normalisation (default) and the cross-entropy's minus sign.

    L = 1/2 * sum_{v in G} sum_{w in G+L, w != v} H(p_t(v), p_s^h(w)) / (G+L-1)
      + 1/2 * sum_{v in G} sum_{w in G+L}         H(p_t(v), p_s^g(w)) / (G+L)

with H(a, b) = -sum a log b averaged over the batch. Views are ordered globals first.

``excb_loss_reference`` computes Eq. 7 literally, pair by pair. ``excb_loss`` (used for
training) gives the same value and gradient with far less memory traffic: since

    H(p, softmax(z/τ)) = (Σ_k p_k) · logsumexp(z/τ) − p·z/τ

is linear in p, the teacher views paired with one student view can be summed first — one
target per student view (all teacher views, minus its own for a global view on the projector
path) and one logsumexp per row instead of G(G+L) log-softmax products. The K-wide work runs
in row blocks small enough to stay in cache, with a hand-written backward
(∂/∂z = (m·softmax(z/τ) − t)/τ), so each (rows, K) tensor is read about once per direction.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

Views = Union[torch.Tensor, Sequence[torch.Tensor]]

# K-wide temporaries per block, in elements: ~4 MiB of fp32 stays in a CPU core's cache
# hierarchy; a GPU wants few, large kernels.
_BLOCK_ELEMS = {"cpu": 1 << 20, "cuda": 1 << 26}


def cross_entropy(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Batch mean of H(p, q) = -sum_k p_k log q_k."""
    return -(p * log_q).sum(dim=-1).mean()


def _as_views(x: Views) -> torch.Tensor:
    """(V, B, K) view of per-view tensors; no copy when given a (V, B, K) tensor already."""
    return x if isinstance(x, torch.Tensor) else torch.stack(list(x))


def _row_blocks(rows: int, K: int, device: torch.device):
    step = max(1, _BLOCK_ELEMS.get(device.type, 1 << 26) // max(K, 1))
    return [(r, min(r + step, rows)) for r in range(0, rows, step)]


class _MultiTargetSoftCE(torch.autograd.Function):
    """Σ_{w,i} m_wi·lse(z_wi/τ) − t_wi·z_wi/τ for student rows z (V, B, K) against the targets

        t_w = P_sum − P_w   (w < G and ``exclude_self``: a view is not its own target)
        t_w = P_sum          otherwise,

    where P (G, B, K) are the teacher distributions and P_sum their sum; m_wi = Σ_k t_wik.
    Gradient only for z. Runs in row blocks; saves z and the row logsumexps for backward.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, P: torch.Tensor, P_sum: torch.Tensor, inv_t: float, exclude_self: bool):
        V, B, K = z.shape
        G = P.shape[0]
        cdt = P.dtype                      # compute dtype: fp32, or fp64 when given fp64
        lse = torch.empty(V, B, dtype=cdt, device=z.device)
        total = torch.zeros((), dtype=cdt, device=z.device)
        blocks = _row_blocks(B, K, z.device)
        for w in range(V):
            own = exclude_self and w < G
            for r0, r1 in blocks:
                x = z[w, r0:r1].to(cdt) * inv_t
                t = P_sum[r0:r1] - P[w, r0:r1] if own else P_sum[r0:r1]
                lse[w, r0:r1] = l = torch.logsumexp(x, dim=-1)
                total += (t.sum(-1) * l).sum() - (x * t).sum()
        ctx.save_for_backward(z, P, P_sum, lse)
        ctx.inv_t, ctx.exclude_self = inv_t, exclude_self
        return total

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        z, P, P_sum, lse = ctx.saved_tensors
        V, B, K = z.shape
        G = P.shape[0]
        inv_t = ctx.inv_t
        grad = torch.empty_like(z)
        scale = g.to(P.dtype) * inv_t
        for w in range(V):
            own = ctx.exclude_self and w < G
            for r0, r1 in _row_blocks(B, K, z.device):
                t = P_sum[r0:r1] - P[w, r0:r1] if own else P_sum[r0:r1]
                sm = (z[w, r0:r1].to(P.dtype) * inv_t).sub_(lse[w, r0:r1, None]).exp_()   # softmax(z/τ)
                grad[w, r0:r1] = sm.mul_(t.sum(-1, keepdim=True)).sub_(t).mul_(scale)
        return grad, None, None, None, None


def _algorithm1(sum_h, n_h_per_view, sum_g, V, n_pairs):
    """Algorithm 1: 1/2 (projector pairs, averaged per teacher view) + 1/2 (predictor pairs, same).
    With G = 2 the pair weights sum to 2; without a predictor the projector term alone (weight 1)."""
    loss_h = sum_h / n_h_per_view
    return loss_h if sum_g is None else 0.5 * loss_h + 0.5 * (sum_g / V)


def _pair_mean(sum_h, n_h_per_view, sum_g, V, n_pairs):
    """The released code (engine/criterion.py): sum over all matched pairs / number of pairs, weights sum to 1."""
    return (sum_h if sum_g is None else sum_h + sum_g) / n_pairs


# loss.normalization -> how the summed pair cross-entropies become the loss
LOSS_NORMALIZATIONS = {"algorithm1": _algorithm1, "pair-mean": _pair_mean}
LOSS_PAIRS = ("eq7", "official-code")


def check_loss_options(pairs: str, normalization: str) -> None:
    from excb import ExcbError

    if pairs not in LOSS_PAIRS:
        raise ExcbError(f"loss.pairs: unknown value {pairs!r}; use one of {', '.join(map(repr, LOSS_PAIRS))}")
    if normalization not in LOSS_NORMALIZATIONS:
        raise ExcbError(f"loss.normalization: unknown value {normalization!r}; use one of "
                        f"{', '.join(map(repr, LOSS_NORMALIZATIONS))}")


def _pair_counts(G: int, V: int, pairs: str, predictor: bool) -> Tuple[int, int]:
    """(projector pairs per teacher view, total pairs)."""
    n_h = max(G - 1, 1) if pairs == "official-code" else V - 1
    return n_h, G * n_h + (G * V if predictor else 0)


def excb_loss(p_t: Views, z_h: Views, z_g: Optional[Views], student_temp: float = 0.1, pairs: str = "eq7",
              normalization: str = "algorithm1") -> Tuple[torch.Tensor, Dict[str, float]]:
    """Eq. 7. ``p_t``: G teacher distributions; ``z_h``/``z_g``: G+L student similarities
    (``z_g`` None: no predictor, the projector term alone).

    Each argument is a list of (B, K) tensors or one (V, B, K) tensor (globals first).
    ``pairs="eq7"`` (default) follows Eq. 7. ``pairs="official-code"`` follows the released
    code: each teacher view is matched with the projector output of the other global views
    only, and the predictor outputs of all views (the locals' projector outputs are unused).
    ``normalization="algorithm1"`` (default) weighs the two terms 1/2 each and averages each
    teacher view's pairs (pair weights sum to G = 2); ``"pair-mean"`` is the released code's
    equal-weight mean over all matched pairs (weights sum to 1: half the gradient at the same lr).
    """
    check_loss_options(pairs, normalization)
    Zh = _as_views(z_h)
    Zg = None if z_g is None else _as_views(z_g)
    P = _as_views(p_t).detach().to(torch.promote_types(Zh.dtype, torch.float32))   # fp32 under AMP
    G, V, B = P.shape[0], Zh.shape[0], Zh.shape[1]
    P_sum = P.sum(0)
    inv_t = 1.0 / student_temp
    n_h, n_pairs = _pair_counts(G, V, pairs, Zg is not None)
    rows_h = Zh[:G] if pairs == "official-code" else Zh
    sum_h = _MultiTargetSoftCE.apply(rows_h, P, P_sum, inv_t, True) / B
    sum_g = None if Zg is None else _MultiTargetSoftCE.apply(Zg, P, P_sum, inv_t, False) / B
    loss = LOSS_NORMALIZATIONS[normalization](sum_h, n_h, sum_g, V, n_pairs)
    parts = {"loss_h": float(sum_h.detach()) / n_h}
    if sum_g is not None:
        parts["loss_g"] = float(sum_g.detach()) / V
    return loss, parts


def excb_loss_reference(p_t: Views, z_h: Views, z_g: Optional[Views], student_temp: float = 0.1, pairs: str = "eq7",
                        normalization: str = "algorithm1") -> Tuple[torch.Tensor, Dict[str, float]]:
    """Eq. 7 written out pair by pair (slow; the definition ``excb_loss`` is tested against)."""
    check_loss_options(pairs, normalization)
    p_t, z_h = list(p_t), list(z_h)
    z_g = None if z_g is None else list(z_g)
    G, V = len(p_t), len(z_h)
    log_h = [F.log_softmax(z.float() / student_temp, dim=-1) for z in z_h]
    log_g = None if z_g is None else [F.log_softmax(z.float() / student_temp, dim=-1) for z in z_g]
    sum_h = z_h[0].new_zeros((), dtype=torch.float32)
    sum_g = None if z_g is None else z_h[0].new_zeros((), dtype=torch.float32)
    h_targets = range(G) if pairs == "official-code" else range(V)
    for v in range(G):
        for w in h_targets:
            if w != v:
                sum_h = sum_h + cross_entropy(p_t[v], log_h[w])
        if log_g is not None:
            for w in range(V):
                sum_g = sum_g + cross_entropy(p_t[v], log_g[w])
    n_h, n_pairs = _pair_counts(G, V, pairs, z_g is not None)
    loss = LOSS_NORMALIZATIONS[normalization](sum_h, n_h, sum_g, V, n_pairs)
    parts = {"loss_h": float(sum_h.detach()) / n_h}
    if sum_g is not None:
        parts["loss_g"] = float(sum_g.detach()) / V
    return loss, parts
