"""Multi-crop views: G=2 global + L local crops with BYOL/DINO photometric augmentations.

Blur probabilities are the intended DINO ones — 1.0 on the first global view, 0.1 on the
second, 0.5 on locals — and solarization (p=0.2) on the second global view only (BYOL).
The authors' code applies blur with probability 1-p (SPEC section 8); the paper recipe does not
reproduce that bug, ``recipe: official-code`` does (``blur_probs: [0, 0.9, 0]``, 9 px kernel), as
it produced the published numbers. Any input mode works: images are converted to RGB first (1-channel data too).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

import torch
from PIL import Image
from torchvision import transforms as T

from excb import ExcbError
from excb.data import to_rgb
from excb.fast_augment import FastMultiCropTransform
from excb.views import AUGMENT_DEFAULTS, IMAGENET_MEAN, IMAGENET_STD, blur_kernel_size, crop_scales  # noqa: F401  (re-exported)

def _blur(size: int, p: float, sigma: Sequence[float], kernel: int = 0) -> T.RandomApply:
    return T.RandomApply([T.GaussianBlur(blur_kernel_size(size, kernel), sigma=tuple(sigma))], p=p)


def _photometric(cfg: Dict[str, Any], size: int, blur_p: float, solarize_p: float) -> List[Any]:
    ops: List[Any] = [
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(*cfg["color_jitter"])], p=cfg["color_jitter_prob"]),
        T.RandomGrayscale(p=cfg["grayscale_prob"]),
    ]
    if blur_p > 0:
        ops.append(_blur(size, blur_p, cfg["blur_sigma"], cfg.get("blur_kernel", 0)))
    if solarize_p > 0:
        ops.append(T.RandomSolarize(128, p=solarize_p))
    return ops


def normalize() -> T.Compose:
    return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class MultiCropTransform:
    """PIL image -> list of G + L normalised tensors (globals first).

    ``set_epoch(e)`` moves the crop scales along the schedule of :func:`crop_scales` (the data set
    calls it with each item's epoch, so persistent loader workers follow too)."""

    def __init__(self, cfg: Dict[str, Any], epochs: int = 1):
        cfg = {**AUGMENT_DEFAULTS, **cfg}
        self.cfg, self.epochs, self.epoch = cfg, int(epochs), None
        self.n_global, self.n_local = int(cfg["n_global"]), int(cfg["n_local"])
        bi = T.InterpolationMode.BICUBIC
        g, l = int(cfg["global_size"]), int(cfg["local_size"])
        blur = list(cfg["blur_probs"])
        gs, ls = crop_scales(cfg, 0, self.epochs)
        self.global_crops = [T.RandomResizedCrop(g, scale=gs, interpolation=bi) for _ in range(self.n_global)]
        self.local_crop = T.RandomResizedCrop(l, scale=ls, interpolation=bi)
        self.global_t = []
        for i in range(self.n_global):
            self.global_t.append(T.Compose([
                self.global_crops[i],
                *_photometric(cfg, g, blur[0] if i == 0 else blur[1], cfg["solarize_prob"] if i == 1 else 0.0),
                normalize(),
            ]))
        self.local_t = T.Compose([self.local_crop, *_photometric(cfg, l, blur[2], 0.0), normalize()])

    def set_epoch(self, epoch: int) -> None:
        if epoch == self.epoch:
            return
        self.epoch = epoch
        gs, ls = crop_scales(self.cfg, epoch, self.epochs)
        for c in self.global_crops:
            c.scale = gs
        self.local_crop.scale = ls

    def __call__(self, img: Image.Image) -> List[torch.Tensor]:
        img = to_rgb(img)
        return [t(img) for t in self.global_t] + [self.local_t(img) for _ in range(self.n_local)]


# augment.backend -> factory of the multi-crop transform
MULTICROP_BACKENDS: Dict[str, Callable[..., Callable]] = {
    "pil": MultiCropTransform,
    "fast": FastMultiCropTransform,
}


def build_multicrop(cfg: Dict[str, Any], epochs: int = 1) -> Callable:
    """The multi-crop transform named by ``cfg["backend"]`` (an ``augment`` config section); ``epochs``
    is the length of the crop-scale schedule, if any."""
    backend = cfg.get("backend", AUGMENT_DEFAULTS["backend"])
    if backend not in MULTICROP_BACKENDS:
        raise ExcbError(f"augment.backend: unknown value {backend!r}; use one of {', '.join(map(repr, MULTICROP_BACKENDS))}")
    sched = list(cfg.get("global_min_scale_schedule") or [])
    if sched and len(sched) != 2:
        raise ExcbError(f"augment.global_min_scale_schedule: expected [] or [start, end], got {sched!r}")
    if len(list(cfg.get("blur_probs", AUGMENT_DEFAULTS["blur_probs"]))) != 3:
        raise ExcbError(f"augment.blur_probs: expected [global 1, global 2, locals], got {cfg.get('blur_probs')!r}")
    return MULTICROP_BACKENDS[backend](cfg, epochs)


def eval_transform(resize: int = 256, crop: int = 224) -> T.Compose:
    """Resize (bicubic) + CenterCrop + normalise: DINO's evaluation transform."""
    return T.Compose([T.Lambda(to_rgb), T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
                      T.CenterCrop(crop), normalize()])
