"""The ExCB loss, Eq. 7, with Algorithm 1's normalisation and the cross-entropy's minus sign.

    L = 1/2 * sum_{v in G} sum_{w in G+L, w != v} H(p_t(v), p_s^h(w)) / (G+L-1)
      + 1/2 * sum_{v in G} sum_{w in G+L}         H(p_t(v), p_s^g(w)) / (G+L)

with H(a, b) = -sum a log b averaged over the batch. Views are ordered globals first.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
import torch.nn.functional as F


def cross_entropy(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Batch mean of H(p, q) = -sum_k p_k log q_k."""
    return -(p * log_q).sum(dim=-1).mean()


def excb_loss(p_t: Sequence[torch.Tensor], z_h: Sequence[torch.Tensor], z_g: Sequence[torch.Tensor],
              student_temp: float = 0.1, pairs: str = "eq7") -> Tuple[torch.Tensor, Dict[str, float]]:
    """``p_t``: G teacher probability tensors; ``z_h``/``z_g``: G+L student similarities.

    ``pairs="eq7"`` (default) follows Eq. 7. ``pairs="official-code"`` follows the released code:
    each teacher view is matched with the projector output of the other global views only, and
    the predictor outputs of all views (the locals' projector outputs are unused).
    """
    G, V = len(p_t), len(z_h)
    log_h = [F.log_softmax(z.float() / student_temp, dim=-1) for z in z_h]
    log_g = [F.log_softmax(z.float() / student_temp, dim=-1) for z in z_g]
    loss_h = z_h[0].new_zeros((), dtype=torch.float32)
    loss_g = z_h[0].new_zeros((), dtype=torch.float32)
    h_targets = range(G) if pairs == "official-code" else range(V)
    n_h = 0
    for v in range(G):
        for w in h_targets:
            if w != v:
                loss_h = loss_h + cross_entropy(p_t[v], log_h[w])
                n_h += 1
        for w in range(V):
            loss_g = loss_g + cross_entropy(p_t[v], log_g[w])
    if pairs == "official-code":
        loss_h = loss_h / max(G - 1, 1)
    else:
        loss_h = loss_h / (V - 1)
    loss_g = loss_g / V
    loss = 0.5 * loss_h + 0.5 * loss_g
    return loss, {"loss_h": float(loss_h.detach()), "loss_g": float(loss_g.detach())}
