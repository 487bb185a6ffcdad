"""What the multi-crop views are, independent of how they are made: crop sizes and scale ranges
(with the released code's per-epoch schedule), blur kernel size, normalisation, and the defaults of
the ``augment`` config section. Both backends (``excb.augment`` on PIL images and
``excb.fast_augment`` on uint8 tensors) build their views from these, so neither imports the other.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Tuple

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

AUGMENT_DEFAULTS: Dict[str, Any] = {
    "global_size": 224,
    "global_scale": [0.2, 1.0],   # 0.14-1.0 without multi-crop (SPEC section 4)
    "local_size": 96,
    "local_scale": [0.05, 0.2],
    "n_global": 2,
    "n_local": 6,
    "color_jitter": [0.4, 0.4, 0.2, 0.1],
    "color_jitter_prob": 0.8,
    "grayscale_prob": 0.2,
    "blur_probs": [1.0, 0.1, 0.5],   # global 1, global 2, locals (released code, in effect: 0, 0.9, 0)
    "blur_sigma": [0.1, 2.0],
    "blur_kernel": 0,                # 0: ~10 % of the crop side, odd (23 px at 224); released code: 9 at every size
    # [start, end]: the globals' lower scale bound follows a per-epoch cosine from start to end (released
    # code: [0.26, 0.14]); []: fixed global_scale
    "global_min_scale_schedule": [],
    "local_scale_follows_global": False,   # True: locals' upper bound = the globals' current lower bound
    "solarize_prob": 0.2,            # second global view only
    "eval_resize": 256,              # eval transform: Resize + CenterCrop (DINO's k-NN protocol)
    "eval_crop": 224,
    # "pil": MultiCropTransform (torchvision on PIL images, the paper-faithful default);
    # "fast": excb.fast_augment.FastMultiCropTransform (libjpeg-turbo decode of the file,
    # uint8 tensor crops, lean float ops; ~1.6x the images/s per worker, same crops and
    # probabilities, pixels differ at rounding level) — docs/performance.md section 4.
    "backend": "pil",
}


def blur_kernel_size(size: int, kernel: int = 0) -> int:
    """``kernel`` px if > 0 (the released code: 9), else ~10 % of the crop side, odd (23 px at 224)."""
    return int(kernel) if kernel > 0 else max(3, int(0.1 * size) // 2 * 2 + 1)


def crop_scales(cfg: Dict[str, Any], epoch: int, epochs: int) -> Tuple[Tuple[float, float], Tuple[float, float]]:
    """(global scale, local scale) of RandomResizedCrop for ``epoch`` (0-based).

    With ``global_min_scale_schedule: [a, b]`` the globals' lower bound is the released code's
    ``scheduling(a, b, epoch, epochs)`` (engine/trainer.py): b + (a - b)(1 + cos(π epoch/epochs))/2,
    set once per epoch; with ``local_scale_follows_global`` the locals' upper bound is that same value
    (data/transforms.py: ``scale=(mini_crop_min_scale, crop_min_scale)``)."""
    g_lo, g_hi = (float(v) for v in cfg["global_scale"])
    l_lo, l_hi = (float(v) for v in cfg["local_scale"])
    sched = list(cfg.get("global_min_scale_schedule") or [])
    if sched:
        a, b = float(sched[0]), float(sched[1])
        e = min(max(int(epoch), 0), max(int(epochs), 1))
        g_lo = b + 0.5 * (a - b) * (1.0 + math.cos(math.pi * e / max(int(epochs), 1)))
    if cfg.get("local_scale_follows_global"):
        l_hi = g_lo
    return (g_lo, g_hi), (l_lo, l_hi)
