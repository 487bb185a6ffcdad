"""Faster multi-crop views on uint8 tensors: same crops, sizes and probabilities as
:class:`excb.augment.MultiCropTransform`, less CPU per image.

Where the time goes in a PIL pipeline (2x224 + 6x96 views of an ImageNet-sized JPEG): the
bicubic RandomResizedCrop, the hue jitter (an HSV round trip) and the Gaussian blur
(torchvision's 23x23 kernel costs ~13 ms per 224 px view). This path

* decodes JPEG bytes with libjpeg-turbo (``torchvision.io.decode_jpeg``) straight into a uint8
  tensor (other formats and PIL images are converted once);
* crops before converting: each view is cut and resized (bicubic, antialiased) from the uint8
  image by torch's vectorised uint8 kernels, so the photometric work runs at output size;
* runs the photometric ops in float32 on the small view with lean kernels: brightness,
  contrast, saturation and hue in ColorJitter's random order (an exact HSV hue rotation in a
  handful of tensor ops), a *separable* Gaussian blur (the same kernel as torchvision's
  ``GaussianBlur``: 2 x k taps instead of k^2), grayscale and solarization;
* normalises with one fused multiply-add.

Randomness comes from torch's generator only, so ``MultiCropDataset``'s per-item seeding
keeps views reproducible. Differences from the PIL path are at the level of rounding:
ColorJitter ops are applied in float without re-quantising to 8 bits between ops, and hue
uses exact float HSV instead of PIL's 8-bit HSV.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from excb.views import AUGMENT_DEFAULTS, IMAGENET_MEAN, IMAGENET_STD, blur_kernel_size, crop_scales
from excb.data import open_image, to_rgb

ImageLike = Union[Image.Image, torch.Tensor, bytes, bytearray, str, Path]
_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL's "L" conversion and torchvision


_JPEG_MAGIC = b"\xff\xd8"


def _decode_jpeg(data: Union[bytes, bytearray]) -> Optional[torch.Tensor]:
    """JPEG bytes -> uint8 RGB (3, H, W) via libjpeg-turbo, or None if it refuses them (truncated,
    not really a JPEG, unusual colour spaces): the caller then goes through PIL."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision >= 0.29 flags its image codecs as deprecated on every call; the codec itself is fine
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            buf = data if isinstance(data, bytearray) else bytearray(data)   # frombuffer needs a writable buffer
            return decode_jpeg(torch.frombuffer(buf, dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:
            return None


def _pil_to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(to_rgb(img))).permute(2, 0, 1)   # a writable copy: no torch warning


def decode_file(path: Union[str, Path]) -> torch.Tensor:
    """Image file -> uint8 RGB tensor. JPEGs are decoded by libjpeg-turbo; everything else, and any
    file it refuses, by :func:`excb.data.open_image` — so a bad file raises the same one-line
    :class:`~excb.ExcbError` naming it as the PIL backend does."""
    data = None
    try:
        with open(path, "rb") as f:
            if f.read(2) == _JPEG_MAGIC:
                data = bytearray(_JPEG_MAGIC + f.read())
    except OSError:
        pass                                        # missing/unreadable: open_image words the error
    t = _decode_jpeg(data) if data is not None else None
    return t if t is not None else _pil_to_tensor(open_image(path))


def decode_image(src: ImageLike) -> torch.Tensor:
    """Anything image-like -> uint8 RGB tensor (3, H, W). JPEG bytes/files go through libjpeg-turbo."""
    if isinstance(src, torch.Tensor):
        t = src if src.dtype == torch.uint8 else (src.clamp(0, 1) * 255).round().to(torch.uint8)
        return t.expand(3, -1, -1) if t.shape[0] == 1 else t
    if isinstance(src, (str, Path)):
        return decode_file(src)
    if isinstance(src, (bytes, bytearray)):
        t = _decode_jpeg(src) if src[:2] == _JPEG_MAGIC else None
        if t is not None:
            return t
        import io

        with Image.open(io.BytesIO(src)) as im:
            im.load()
            return _pil_to_tensor(im)
    return _pil_to_tensor(src)


def _gaussian_kernel1d(k: int, sigma: float) -> torch.Tensor:
    """torchvision's ``_get_gaussian_kernel1d``: the 2-D kernel it uses is this outer product."""
    half = (k - 1) * 0.5
    x = torch.linspace(-half, half, steps=k)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    return pdf / pdf.sum()


def _blur_matrix(n: int, k: int, sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, n) banded matrix M with M @ x = 1-D Gaussian blur of x along its first axis, reflect padding."""
    w = _gaussian_kernel1d(k, sigma).to(dtype)
    p = k // 2
    idx = (torch.arange(n).unsqueeze(1) + torch.arange(-p, p + 1).unsqueeze(0)).abs()   # reflect at 0
    idx = torch.where(idx > n - 1, 2 * (n - 1) - idx, idx)                              # reflect at n-1
    return torch.zeros(n, n, dtype=dtype).scatter_add_(1, idx, w.expand(n, k).contiguous())


def _banded_matmul_cols(x: torch.Tensor, mt: torch.Tensor, half: int, block: int) -> torch.Tensor:
    """x @ mt for a banded (n, n) ``mt`` (half-width ``half``), one column block at a time:
    output columns [o, o+block) only read input columns [o-half, o+block+half)."""
    n = x.shape[-1]
    out = torch.empty_like(x)
    for o in range(0, n, block):
        lo, hi = max(0, o - half), min(n, o + block + half)
        torch.matmul(x[..., lo:hi], mt[lo:hi, o:o + block], out=out[..., o:o + block])
    return out


def separable_blur(x: torch.Tensor, k: int, sigma: float) -> torch.Tensor:
    """Gaussian blur of a float (C, H, W) image with reflect padding (torchvision's GaussianBlur).

    The two 1-D passes are products with banded blur matrices (a depthwise 23-tap convolution
    is 2-3x slower on CPU), taken in column blocks of ~56 so the zeros outside the band are
    mostly skipped (1.5x over one dense product at 224 px)."""
    _, H, W = x.shape
    mw = _blur_matrix(W, k, sigma, x.dtype)
    mh = mw if H == W else _blur_matrix(H, k, sigma, x.dtype)
    half = k // 2
    y = _banded_matmul_cols(x, mw.t(), half, max(half + 1, 56))                    # along W
    return _banded_matmul_cols(y.transpose(1, 2), mh.t(), half, max(half + 1, 56)).transpose(1, 2).contiguous()


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma as torchvision's rgb_to_grayscale, (1, H, W): one (1, 3) x (3, H*W) product."""
    w = torch.tensor(_GRAY, dtype=x.dtype).view(1, 3)
    return torch.mm(w, x.reshape(3, -1)).view(1, *x.shape[1:])


_HUE_CHANNEL_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(3, 1, 1)


def adjust_hue(x: torch.Tensor, h: float) -> torch.Tensor:
    """Exact HSV hue rotation by ``h`` (fraction of a turn, in [-0.5, 0.5]) of a float RGB image in [0, 1].

    V (max) and chroma C = max - min are unchanged by a hue rotation, so only the hue is
    computed: in sixths of a turn, the sector of the max channel (r: 0, g: 2, b: 4, ties in
    that order as torchvision's rgb_to_hsv) plus the signed position inside it. Channel n of
    the result is V - C * clamp(min(k, 4 - k), 0, 1) with k = (n + hue6) mod 6 (n = 5, 3, 1
    for r, g, b). Grey pixels (C = 0) come out as V whatever their hue, so they need no mask.
    """
    r, g, b = x[0], x[1], x[2]
    v = x.amax(dim=0)
    c = v - x.amin(dim=0)
    is_r = v == r
    is_g = (v == g) & ~is_r
    num = torch.where(is_r, g - b, torch.where(is_g, b - r, r - g))
    sector = 4.0 - 4.0 * is_r.to(x.dtype) - 2.0 * is_g.to(x.dtype)
    hue6 = num.div_(c.clamp_min(torch.finfo(x.dtype).tiny)).add_(sector).add_(6.0 * h)
    kk = torch.remainder(_HUE_CHANNEL_OFFSETS.to(x.dtype) + hue6.unsqueeze(0), 6.0)
    t = torch.minimum(kk, 4.0 - kk).clamp_(0.0, 1.0)
    return v.unsqueeze(0) - c.unsqueeze(0) * t


def color_jitter(x: torch.Tensor, strength: Sequence[float]) -> torch.Tensor:
    """torchvision ColorJitter(b, c, s, h) semantics: factors drawn uniformly, ops in random order, clamped."""
    b, c, s, h = (float(v) for v in strength)
    order = torch.randperm(4).tolist()
    fb = float(torch.empty(1).uniform_(max(0.0, 1 - b), 1 + b)) if b > 0 else None
    fc = float(torch.empty(1).uniform_(max(0.0, 1 - c), 1 + c)) if c > 0 else None
    fs = float(torch.empty(1).uniform_(max(0.0, 1 - s), 1 + s)) if s > 0 else None
    fh = float(torch.empty(1).uniform_(-h, h)) if h > 0 else None
    for op in order:
        if op == 0 and fb is not None:
            x = (x * fb).clamp_(0.0, 1.0)
        elif op == 1 and fc is not None:
            m = float(_gray(x).mean())
            x = (x * fc + (1.0 - fc) * m).clamp_(0.0, 1.0)
        elif op == 2 and fs is not None:
            x = (x * fs + (1.0 - fs) * _gray(x)).clamp_(0.0, 1.0)
        elif op == 3 and fh is not None:
            x = adjust_hue(x, fh)
    return x


def _p(prob: float) -> bool:
    return prob > 0 and float(torch.rand(1)) < prob


class FastMultiCropTransform:
    """Image (PIL, uint8 tensor, JPEG bytes or path) -> list of G + L normalised tensors (globals first)."""

    accepts_path = True   # MultiCropDataset hands it the file path: JPEGs skip PIL decoding

    def __init__(self, cfg: Dict[str, Any], epochs: int = 1):
        cfg = {**AUGMENT_DEFAULTS, **cfg}
        self.cfg, self.epochs = cfg, int(epochs)
        self.global_scale, self.local_scale = crop_scales(cfg, 0, self.epochs)
        self.n_global, self.n_local = int(cfg["n_global"]), int(cfg["n_local"])
        self.g, self.l = int(cfg["global_size"]), int(cfg["local_size"])
        blur = list(cfg["blur_probs"])
        self.blur_p = [blur[0] if i == 0 else blur[1] for i in range(self.n_global)]
        self.blur_local = blur[2]
        self.sol_p = [cfg["solarize_prob"] if i == 1 else 0.0 for i in range(self.n_global)]
        # (x - mean) / std as one multiply-add on [0, 1] floats
        self.scale = (1.0 / torch.tensor(IMAGENET_STD)).view(3, 1, 1)
        self.shift = (-torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)).view(3, 1, 1)

    def set_epoch(self, epoch: int) -> None:
        """Crop scales of ``epoch`` (see :func:`excb.augment.crop_scales`)."""
        self.global_scale, self.local_scale = crop_scales(self.cfg, epoch, self.epochs)

    def _view(self, img: torch.Tensor, size: int, scale: Sequence[float], blur_p: float, sol_p: float) -> torch.Tensor:
        cfg = self.cfg
        top, left, h, w = RandomResizedCrop.get_params(img, list(scale), [3.0 / 4.0, 4.0 / 3.0])
        v = TF.resized_crop(img, top, left, h, w, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        x = v.float().div_(255.0)
        if _p(0.5):
            x = x.flip(-1)
        if _p(cfg["color_jitter_prob"]):
            x = color_jitter(x, cfg["color_jitter"])
        if _p(cfg["grayscale_prob"]):
            x = _gray(x).expand(3, -1, -1)
        if _p(blur_p):
            k = blur_kernel_size(size, cfg.get("blur_kernel", 0))   # as excb.augment._blur
            sig = float(torch.empty(1).uniform_(float(cfg["blur_sigma"][0]), float(cfg["blur_sigma"][1])))
            x = separable_blur(x.contiguous(), k, sig)
        if _p(sol_p):
            x = torch.where(x >= 128.0 / 255.0, 1.0 - x, x)
        return x.mul_(self.scale).add_(self.shift) if x.is_contiguous() else torch.addcmul(self.shift, x, self.scale)

    def __call__(self, src: ImageLike) -> List[torch.Tensor]:
        img = decode_image(src)
        cfg = self.cfg
        out = [self._view(img, self.g, self.global_scale, self.blur_p[i], self.sol_p[i]) for i in range(self.n_global)]
        out += [self._view(img, self.l, self.local_scale, self.blur_local, 0.0) for _ in range(self.n_local)]
        return out
