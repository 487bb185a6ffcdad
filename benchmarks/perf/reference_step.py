"""The ExCB step written literally, for side-by-side timing and equality tests.

The library's step (``excb.train.train_one_epoch``) uses three rewrites of the K-wide work
that are equal in value and gradient to the paper's formulas:

* ``excb.loss.excb_loss``: Eq. 7 with the teacher views summed first and a blocked
  soft-cross-entropy with a hand-written backward (vs ``excb_loss_reference``: G(G+L)
  log-softmax products);
* ``excb.model.ExCBStudent.forward``: centroids normalised once, one product per head, the
  local-crop stop-gradient inside the product (vs one normalisation per call and a ``cat``);
* ``excb.balancing.ClusterBalancer.teacher_probs``: Eq. 10 as a per-cluster multiply-add with
  1/τ folded in, processed in cache-sized row blocks (vs ``where`` branches over the matrix).

This module holds the literal versions: ``patched()`` swaps them into the library so a
benchmark can time "literal" against "library" on the same batch, and the unit tests check
that both give the same numbers.
"""
from __future__ import annotations

import contextlib
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F


def student_forward_literal(student, views: Sequence[torch.Tensor], n_global: int, local_stop_grad: bool = True
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """z_h = q(h(f(x))) (centroids detached for locals), z_g = q̄(g(h(f(x)))), one centroid call each."""
    from excb.heads import centroid_precision
    from excb.model import _forward_backbone

    b, V = views[0].shape[0], len(views)
    h = student.projector(_forward_backbone(student.backbone, views))
    hg, hl = h[: n_global * b], h[n_global * b:]
    g = None if student.predictor is None else student.predictor(h)
    with centroid_precision():   # the centroid products are fp32 under autocast too
        z_h = [student.centroids(hg, detach=False)]
        if hl.numel():
            z_h.append(student.centroids(hl, detach=local_stop_grad))
        z_h = torch.cat(z_h)
        if g is None:
            return z_h.view(V, b, -1), None
        z_g = student.centroids(g, detach=True)
    return z_h.view(V, b, -1), z_g.view(V, b, -1)


@torch.no_grad()
def teacher_probs_literal(balancer, z_t: torch.Tensor, tau: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """softmax(B(z; s)/τ) with B of Eq. 10 evaluated branch by branch; labels from the balanced output."""
    sK = balancer.s.float() * balancer.num_clusters
    z = z_t.float()
    scale = sK * sK if balancer.variant == "quadratic" else sK
    under = 1.0 - (1.0 - z) * scale
    over = (1.0 + z) / sK.clamp_min(torch.finfo(torch.float32).tiny) - 1.0
    zb = torch.where(sK < 1, under, torch.where(sK > 1, over, z))
    return F.softmax(zb / tau, dim=-1), zb.argmax(dim=-1)


def patched(enable: bool = True):
    """Context manager: run ``excb.train.train_one_epoch`` with the literal implementations."""
    import excb.train as T
    from excb.balancing import ClusterBalancer
    from excb.loss import excb_loss_reference
    from excb.model import ExCBStudent

    @contextlib.contextmanager
    def _ctx():
        if not enable:
            yield
            return
        saved = (T.excb_loss, ExCBStudent.forward, ClusterBalancer.teacher_probs)

        def loss(p_t, z_h, z_g, tau, pairs="eq7", normalization="algorithm1"):
            return excb_loss_reference(list(p_t), list(z_h), None if z_g is None else list(z_g), tau, pairs,
                                       normalization)

        def tp(self, z_t, tau):
            if (self.update_when == "after" and self.assign_from == "balanced" and not self.winner_boost
                    and not self.zero_weight_noise):
                return teacher_probs_literal(self, z_t, tau)
            return saved[2](self, z_t, tau)

        T.excb_loss, ExCBStudent.forward, ClusterBalancer.teacher_probs = loss, student_forward_literal, tp
        try:
            yield
        finally:
            T.excb_loss, ExCBStudent.forward, ClusterBalancer.teacher_probs = saved

    return _ctx()
