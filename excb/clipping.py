"""Gradient clipping, one registry entry per rule (``optim.clip_mode``).

* ``per-param`` — DINO's ``utils.clip_gradients`` (facebookresearch/dino@7c446df, utils.py): every
  parameter's gradient is scaled down to norm ``max_norm`` on its own, coefficient
  ``max_norm / (||g|| + 1e-6)`` when below 1. What DINO's ViT recipe (and the ExCB release,
  engine/optimizer.py) uses.
* ``global`` — ``torch.nn.utils.clip_grad_norm_``: one coefficient from the norm of all gradients.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable

import torch
from torch import nn


@torch.no_grad()
def clip_per_parameter(params: Iterable[torch.Tensor], max_norm: float) -> None:
    """Scale each gradient g to ``g * min(1, max_norm / (||g||_2 + 1e-6))``; no host sync."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads, 2.0)
    coefs = [(max_norm / (n.float() + 1e-6)).clamp_(max=1.0).to(g.dtype) for n, g in zip(norms, grads)]
    torch._foreach_mul_(grads, coefs)


def clip_global_norm(params: Iterable[torch.Tensor], max_norm: float) -> None:
    nn.utils.clip_grad_norm_(list(params), max_norm)


CLIP_MODES: Dict[str, Callable[[Iterable[torch.Tensor], float], None]] = {
    "per-param": clip_per_parameter,
    "global": clip_global_norm,
}
