"""Faster, numerically equivalent versions of three hot spots of the ExCB step — proposals
for ``excb/loss.py``, ``excb/model.py`` (+ ``excb/heads.py``) and ``excb/balancing.py``.

They live here so the benchmarks can measure them side by side with the library's code and
the unit tests can check them against it (values and gradients); the method files adopt them.

1. ``excb_loss_fused``: H(p, log_softmax(z/τ)) = Σp·lse(z/τ) − p·z/τ is linear in p, so the
   G×(G+L) cross-entropies of Eq. 7 collapse to one target per student view (the sum of the
   teacher views it is paired with) and one logsumexp per row: no log-softmax tensors, no
   per-pair products (the library's loop allocates ~4 (B, K) tensors per pair).
2. ``student_forward_fused``: the centroid matrix is L2-normalised once per step (not three
   times), and one matmul gives the projector similarities of all views; the centroid
   gradient comes from the global rows only (the local-crop stop-gradient) without a cat.
3. ``balanced_logits``: B(z; s) of Eq. 10 is, per cluster, an affine map z -> a_k z + b_k
   (under: a = sK, b = 1 − sK; over: a = 1/(sK), b = 1/(sK) − 1; equal: a = 1, b = 0),
   so B followed by /τ is one fused multiply-add over the (rows, K) matrix instead of ~8 passes.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

Views = Union[torch.Tensor, Sequence[torch.Tensor]]


def _stack(x: Views) -> torch.Tensor:
    """(V, B, K) from a list of per-view (B, K) tensors (no copy if already stacked)."""
    return x if isinstance(x, torch.Tensor) else torch.stack(list(x))


def excb_loss_fused(p_t: Views, z_h: Views, z_g: Views, student_temp: float = 0.1, pairs: str = "eq7"
                    ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Same value and gradient as ``excb.loss.excb_loss``; inputs may be (V, B, K) tensors."""
    P = _stack(p_t).float()                       # (G, B, K), no grad
    Zh, Zg = _stack(z_h).float(), _stack(z_g).float()
    G, V, B = P.shape[0], Zh.shape[0], Zh.shape[1]
    inv_t = 1.0 / student_temp
    P_sum = P.sum(0)                              # (B, K): sum of all teacher views
    mass = P.sum(-1)                              # (G, B): row sums of each teacher view (1 for softmax)
    # projector path: view w is paired with every teacher view except itself
    n_h = V if pairs != "official-code" else G
    T = P_sum.expand(n_h, B, P_sum.shape[1]).clone()
    T[:G] -= P
    T_mass = mass.sum(0).expand(n_h, B).clone()
    T_mass[:G] -= mass
    Zh_used = Zh[:n_h] if n_h < V else Zh
    lse_h = torch.logsumexp(Zh_used * inv_t, dim=-1)                  # (n_h, B)
    loss_h = ((lse_h * T_mass).sum() - (Zh_used * T).sum() * inv_t) / B
    # predictor path: view w is paired with every teacher view
    lse_g = torch.logsumexp(Zg * inv_t, dim=-1)                        # (V, B)
    loss_g = ((lse_g * mass.sum(0)).sum() - (Zg * P_sum).sum() * inv_t) / B
    loss_h = loss_h / (max(G - 1, 1) if pairs == "official-code" else (V - 1))
    loss_g = loss_g / V
    loss = 0.5 * loss_h + 0.5 * loss_g
    return loss, {"loss_h": float(loss_h.detach()), "loss_g": float(loss_g.detach())}


class _RowsGradMatmul(torch.autograd.Function):
    """z = x @ w.T where only the first ``n`` rows of x send gradient to w (stop-grad on the rest)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.n = n
        return x @ w.t()

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, w = ctx.saved_tensors
        gx = g @ w if ctx.needs_input_grad[0] else None
        gw = g[: ctx.n].t() @ x[: ctx.n] if ctx.needs_input_grad[1] else None
        return gx, gw, None


def student_forward_fused(student, views: Sequence[torch.Tensor], n_global: int, local_stop_grad: bool = True
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Drop-in for ``ExCBStudent.forward`` returning (V, B, K) tensors instead of per-view lists."""
    from excb.model import _forward_backbone

    b, V = views[0].shape[0], len(views)
    h = student.projector(_forward_backbone(student.backbone, views))
    w = F.normalize(student.centroids.weight, dim=-1)                 # once per step
    hn = F.normalize(h, dim=-1)
    n_grad = n_global * b if local_stop_grad else V * b
    z_h = _RowsGradMatmul.apply(hn, w, n_grad)
    z_g = F.normalize(student.predictor(h), dim=-1) @ w.detach().t()
    K = w.shape[0]
    return z_h.view(V, b, K), z_g.view(V, b, K)


def balanced_logits(z: torch.Tensor, s: torch.Tensor, tau: float, variant: str = "linear") -> torch.Tensor:
    """B(z; s) / τ (Eq. 10) as one fused multiply-add; argmax of it = argmax of B(z; s)."""
    sK = s.float() * s.numel()
    under = sK * sK if variant == "quadratic" else sK
    inv = 1.0 / sK.clamp_min(torch.finfo(torch.float32).tiny)
    a = torch.where(sK < 1, under, torch.where(sK > 1, inv, torch.ones_like(sK)))
    b = torch.where(sK < 1, 1.0 - under, torch.where(sK > 1, inv - 1.0, torch.zeros_like(sK)))
    return torch.addcmul(b / tau, z.float(), a / tau)


@torch.no_grad()
def excb_teacher_probs_fused(balancer, z_t: torch.Tensor, tau: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Drop-in for ``ClusterBalancer.teacher_probs`` (paper recipe: assign from balanced, update after)."""
    logits = balanced_logits(z_t, balancer.s, tau, balancer.variant)
    assign = logits.argmax(dim=-1)
    return torch.softmax(logits, dim=-1), assign


def patched(enable: bool = True):
    """Context manager: run ``excb.train.train_one_epoch`` with the three proposals swapped in."""
    import contextlib

    import excb.train as T
    from excb.balancing import ClusterBalancer
    from excb.model import ExCBStudent

    @contextlib.contextmanager
    def _ctx():
        if not enable:
            yield
            return
        saved = (T.excb_loss, ExCBStudent.forward, ClusterBalancer.teacher_probs)
        T.excb_loss = excb_loss_fused
        ExCBStudent.forward = student_forward_fused

        def tp(self, z_t, tau):
            if self.update_when == "after" and self.assign_from == "balanced" and not self.official_code:
                return excb_teacher_probs_fused(self, z_t, tau)
            return saved[2](self, z_t, tau)

        ClusterBalancer.teacher_probs = tp
        try:
            yield
        finally:
            T.excb_loss, ExCBStudent.forward, ClusterBalancer.teacher_probs = saved

    return _ctx()
