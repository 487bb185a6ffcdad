"""Multi-crop views: counts, sizes, channels, intended blur/solarize probabilities, determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from excb.augment import MultiCropTransform, eval_transform

CFG = {"global_size": 32, "local_size": 16, "n_local": 3, "global_scale": [0.35, 1.0], "local_scale": [0.1, 0.35]}


def _img(mode="RGB", size=(40, 30)):
    rng = np.random.default_rng(0)
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8), mode="L")
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, size[::-1], dtype=np.uint16))
    return Image.fromarray(rng.integers(0, 256, size[::-1] + (3,), dtype=np.uint8), mode="RGB")


@pytest.mark.parametrize("mode", ["RGB", "L", "I;16"])
def test_view_count_sizes_and_channels(mode):
    views = MultiCropTransform(CFG)(_img(mode))
    assert len(views) == 2 + 3
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in views)


def test_no_locals_and_demo_sized_gray_input():
    views = MultiCropTransform({**CFG, "n_local": 0})(_img("L", (28, 28)))
    assert len(views) == 2 and all(v.shape == (3, 32, 32) for v in views)


def test_same_seed_same_views_other_seed_differs():
    t = MultiCropTransform(CFG)
    img = _img()
    torch.manual_seed(5)
    a = t(img)
    torch.manual_seed(5)
    b = t(img)
    torch.manual_seed(6)
    c = t(img)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    # views of one image differ from each other
    assert not torch.equal(a[0], a[1])


def _ops(compose, cls):
    """Transforms of type ``cls`` inside a Compose, with the RandomApply probability wrapping them."""
    out = []
    for t in compose.transforms:
        if isinstance(t, T.RandomApply):
            out += [(t.p, x) for x in t.transforms if isinstance(x, cls)]
        elif isinstance(t, cls):
            out.append((getattr(t, "p", 1.0), t))
    return out


def test_intended_blur_and_solarize_probabilities():
    """DINO/BYOL: blur 1.0 / 0.1 on the globals and 0.5 on locals; solarize on global 2 only."""
    t = MultiCropTransform(CFG)
    blur = [[p for p, _ in _ops(c, T.GaussianBlur)] for c in (*t.global_t, t.local_t)]
    assert blur == [[1.0], [0.1], [0.5]]
    sol = [[p for p, _ in _ops(c, T.RandomSolarize)] for c in (*t.global_t, t.local_t)]
    assert sol == [[], [0.2], []]
    for c in (*t.global_t, t.local_t):
        assert [p for p, _ in _ops(c, T.ColorJitter)] == [0.8]
        assert [p for p, _ in _ops(c, T.RandomGrayscale)] == [0.2]
        assert len(_ops(c, T.RandomHorizontalFlip)) == 1
    crops = [_ops(c, T.RandomResizedCrop)[0][1] for c in (*t.global_t, t.local_t)]
    assert [tuple(c.scale) for c in crops] == [(0.35, 1.0), (0.35, 1.0), (0.1, 0.35)]


def test_first_global_view_is_always_blurred():
    """Statistical check that p=1.0 really applies (the official code's 1-p bug would give 0)."""
    flat = Image.new("RGB", (64, 64), (0, 0, 0))
    flat.paste((255, 255, 255), (0, 0, 32, 64))  # a sharp vertical edge
    cfg = {**CFG, "global_scale": [1.0, 1.0], "color_jitter_prob": 0.0, "grayscale_prob": 0.0,
           "blur_sigma": [1.5, 2.0], "n_local": 0}
    t = MultiCropTransform(cfg)
    sharp = 0
    for seed in range(10):
        torch.manual_seed(seed)
        v = t(flat)[0]
        # a blurred edge has intermediate values around the edge column
        mid = ((v[0] > v[0].min() + 0.3) & (v[0] < v[0].max() - 0.3)).float().mean()
        sharp += int(mid.item() == 0)
    assert sharp == 0


def test_eval_transform_gray_input():
    x = eval_transform(36, 32)(_img("L", (28, 28)))
    assert x.shape == (3, 32, 32)
