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


def teacher_temp_schedule(warmup_temp: float, temp: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """τ_t per epoch, DINO's ``DINOLoss.teacher_temp_schedule``: linear from ``warmup_temp`` to ``temp``
    over ``warmup_epochs`` (endpoint included), then constant."""
    warm = max(0, min(int(warmup_epochs), epochs))
    return np.concatenate([np.linspace(warmup_temp, temp, warm), np.full(epochs - warm, temp)]).astype(np.float64)


def _own(base: np.ndarray, own: np.ndarray, decay: np.ndarray) -> np.ndarray:
    return own


def _base(base: np.ndarray, own: np.ndarray, decay: np.ndarray) -> np.ndarray:
    return base.copy()


def _base_x10_to_x1(base: np.ndarray, own: np.ndarray, decay: np.ndarray) -> np.ndarray:
    # engine/optimizer.py ``centroid_adjustments == "wdx10c1"``: base wd x (1 + 9 c), c cosine 1 -> 0
    return base * (1.0 + 9.0 * decay)


# centroids.weight_decay_schedule -> the centroid layer's wd per step, from the base wd schedule (all
# other weights), the layer's own cosine (centroids.weight_decay -> weight_decay_end) and a cosine 1 -> 0
CENTROID_WD_SCHEDULES = {
    "own": _own,                    # ResNet-50 paper recipe: 1e-3 -> 1e-4 (Table 8)
    "base": _base,                  # ViT-S/16 paper recipe: DINO's 0.04 -> 0.4 for every weight
    "base_x10_to_x1": _base_x10_to_x1,   # the released code: 10x -> 1x the base, cosine
}
