"""Per-step schedules (linear warm-up, then half-cosine), as arrays indexed by global step."""
from __future__ import annotations

import math

import numpy as np


def cosine_schedule(base: float, final: float, epochs: float, steps_per_epoch: int,
                    warmup_epochs: float = 0, warmup_start: float = 0.0) -> np.ndarray:
    """``warmup_epochs`` of linear ramp from ``warmup_start`` to ``base``, then cosine to ``final``.

    Fractional ``epochs`` / ``warmup_epochs`` are rounded to whole steps."""
    total = int(round(epochs * steps_per_epoch))
    warm = min(int(round(warmup_epochs * steps_per_epoch)), total)
    ramp = np.linspace(warmup_start, base, warm, endpoint=False) if warm else np.zeros(0)
    rest = total - warm
    t = np.arange(rest)
    cos = final + 0.5 * (base - final) * (1 + np.cos(math.pi * t / max(rest, 1)))
    return np.concatenate([ramp, cos]).astype(np.float64)
