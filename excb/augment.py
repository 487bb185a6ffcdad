"""Multi-crop views: G=2 global + L local crops with BYOL/DINO photometric augmentations.

Blur probabilities are the intended DINO ones — 1.0 on the first global view, 0.1 on the
second, 0.5 on locals — and solarization (p=0.2) on the second global view only (BYOL).
The authors' code applies blur with probability 1-p (SPEC section 8); that bug is not
reproduced. Any input mode works: images are converted to RGB first (1-channel data too).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

import torch
from PIL import Image
from torchvision import transforms as T

from excb import ExcbError
from excb.data import to_rgb

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
    "blur_probs": [1.0, 0.1, 0.5],   # global 1, global 2, locals
    "blur_sigma": [0.1, 2.0],
    "solarize_prob": 0.2,            # second global view only
    "eval_resize": 256,              # eval transform: Resize + CenterCrop (DINO's k-NN protocol)
    "eval_crop": 224,
    # "pil": MultiCropTransform (torchvision on PIL images, the paper-faithful default);
    # "fast": excb.fast_augment.FastMultiCropTransform (libjpeg-turbo decode of the file,
    # uint8 tensor crops, lean float ops; ~1.6x the images/s per worker, same crops and
    # probabilities, pixels differ at rounding level) — docs/performance.md section 4.
    "backend": "pil",
}


def _blur(size: int, p: float, sigma: Sequence[float]) -> T.RandomApply:
    k = max(3, int(0.1 * size) // 2 * 2 + 1)  # ~10 % of the crop side, odd (23 px at 224)
    return T.RandomApply([T.GaussianBlur(k, sigma=tuple(sigma))], p=p)


def _photometric(cfg: Dict[str, Any], size: int, blur_p: float, solarize_p: float) -> List[Any]:
    ops: List[Any] = [
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(*cfg["color_jitter"])], p=cfg["color_jitter_prob"]),
        T.RandomGrayscale(p=cfg["grayscale_prob"]),
    ]
    if blur_p > 0:
        ops.append(_blur(size, blur_p, cfg["blur_sigma"]))
    if solarize_p > 0:
        ops.append(T.RandomSolarize(128, p=solarize_p))
    return ops


def normalize() -> T.Compose:
    return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class MultiCropTransform:
    """PIL image -> list of G + L normalised tensors (globals first)."""

    def __init__(self, cfg: Dict[str, Any]):
        cfg = {**AUGMENT_DEFAULTS, **cfg}
        self.n_global, self.n_local = int(cfg["n_global"]), int(cfg["n_local"])
        bi = T.InterpolationMode.BICUBIC
        g, l = int(cfg["global_size"]), int(cfg["local_size"])
        blur = list(cfg["blur_probs"])
        self.global_t = []
        for i in range(self.n_global):
            self.global_t.append(T.Compose([
                T.RandomResizedCrop(g, scale=tuple(cfg["global_scale"]), interpolation=bi),
                *_photometric(cfg, g, blur[0] if i == 0 else blur[1], cfg["solarize_prob"] if i == 1 else 0.0),
                normalize(),
            ]))
        self.local_t = T.Compose([
            T.RandomResizedCrop(l, scale=tuple(cfg["local_scale"]), interpolation=bi),
            *_photometric(cfg, l, blur[2], 0.0),
            normalize(),
        ])

    def __call__(self, img: Image.Image) -> List[torch.Tensor]:
        img = to_rgb(img)
        return [t(img) for t in self.global_t] + [self.local_t(img) for _ in range(self.n_local)]


def _fast_multicrop(cfg: Dict[str, Any]) -> Callable:
    from excb.fast_augment import FastMultiCropTransform   # lazy: fast_augment imports this module

    return FastMultiCropTransform(cfg)


# augment.backend -> factory of the multi-crop transform
MULTICROP_BACKENDS: Dict[str, Callable[[Dict[str, Any]], Callable]] = {
    "pil": MultiCropTransform,
    "fast": _fast_multicrop,
}


def build_multicrop(cfg: Dict[str, Any]) -> Callable:
    """The multi-crop transform named by ``cfg["backend"]`` (an ``augment`` config section)."""
    backend = cfg.get("backend", AUGMENT_DEFAULTS["backend"])
    if backend not in MULTICROP_BACKENDS:
        raise ExcbError(f"augment.backend: unknown value {backend!r}; use one of {', '.join(map(repr, MULTICROP_BACKENDS))}")
    return MULTICROP_BACKENDS[backend](cfg)


def eval_transform(resize: int = 256, crop: int = 224) -> T.Compose:
    """Resize (bicubic) + CenterCrop + normalise: DINO's evaluation transform."""
    return T.Compose([T.Lambda(to_rgb), T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(crop), normalize()])
