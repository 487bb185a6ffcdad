"""Perf scripts: each runs with --quick (not timed); the fast augmentation path is checked
against the library's reference code (values, distributions). The fused step is checked in
test_fused_step.py."""
from __future__ import annotations

import importlib
import io
import json

import pytest
import torch

SCRIPTS = ["bench_step", "bench_lightly", "bench_balancing", "bench_augment", "bench_knn", "bench_memory", "bench_ceiling"]


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "bench_memory" else n for n in SCRIPTS])
def test_script_runs_quick(name, tmp_path, capsys):
    mod = importlib.import_module(f"benchmarks.perf.{name}")
    out = tmp_path / "r.json"
    assert mod.main(["--quick", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    if name == "bench_lightly" and "skipped" in text:
        assert "pip install" in text  # lightly absent: a message, not a failure
        return
    rep = json.loads(out.read_text())
    if name == "bench_memory":
        assert len(rep["rows"]) == 2 and all(r["peak_bytes"] > 0 for r in rep["rows"])  # tiny sizes: no fit check
        assert "| batch | peak memory (MiB) |" in text
    else:
        assert rep["ratios"] and all(r["value"] > 0 for r in rep["ratios"].values())
        assert ("RATIO" in text or "ratio " in text) and "settings:" in text and "loadavg_1m" in text


def test_timing_interleaves_and_takes_medians():
    from benchmarks.perf._timing import interleaved, median, report

    calls = []
    t = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeat=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then alternating order
    assert len(t["a"]) == 3 and median([3.0, 1.0, 2.0]) == 2.0
    r = report("t", {}, {"x": [2.0, 2.0], "y": [1.0, 1.0]}, {"x/y": ("x", "y", 1.5, "<="), "info": ("y", "x", None, "<=")})
    assert r["ratios"]["x/y"]["value"] == 2.0 and r["ratios"]["x/y"]["met"] is False
    assert r["ratios"]["info"]["met"] is None


# ----------------------------------------------------------------------------- fast augmentation
def test_fast_blur_and_hue_equal_torchvision():
    from torchvision.transforms.v2 import functional as F2

    from excb.fast_augment import adjust_hue, separable_blur

    torch.manual_seed(0)
    x = torch.rand(3, 24, 30)
    q = (x * 255).round() / 255       # 8-bit values: exact ties between channels
    q[:, :3] = 0.5                     # grey pixels (chroma 0)
    q[0, 3:6] = q[1, 3:6]              # max shared by r and g
    q[1, 6:9] = q[2, 6:9]              # max shared by g and b
    for h in (-0.5, -0.1, 0.0, 0.07, 0.5):
        assert torch.allclose(adjust_hue(x, h), F2.adjust_hue(x, h), atol=1e-5)
        assert torch.allclose(adjust_hue(q, h), F2.adjust_hue(q, h), atol=1e-5)
    for k, s in ((3, 0.5), (9, 2.0), (23, 1.3)):
        assert torch.allclose(separable_blur(x, k, s), F2.gaussian_blur(x, [k, k], [s, s]), atol=1e-5)
    big = torch.rand(3, 130, 201)      # several column blocks of the banded products, H != W
    for k, s in ((9, 0.7), (23, 2.0)):
        assert torch.allclose(separable_blur(big, k, s), F2.gaussian_blur(big, [k, k], [s, s]), atol=1e-5)


def _jpeg_bytes(w=120, h=90):
    import numpy as np
    from PIL import Image

    g = np.random.default_rng(0)
    arr = (np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3)) * 0.7 + g.integers(0, 60, (h, w, 3))).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=95)
    return buf.getvalue(), Image.fromarray(arr)


def test_fast_multicrop_shapes_determinism_and_inputs(tmp_path):
    from PIL import Image

    from excb.fast_augment import FastMultiCropTransform, decode_image

    data, _ = _jpeg_bytes()
    p = tmp_path / "a.jpg"
    p.write_bytes(data)
    tf = FastMultiCropTransform({"global_size": 32, "local_size": 16, "n_local": 3})
    torch.manual_seed(5)
    v1 = tf(data)
    torch.manual_seed(5)
    v2 = tf(p)
    assert [tuple(v.shape) for v in v1] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert all(torch.equal(a, b) for a, b in zip(v1, v2))  # bytes and path decode alike; seeded
    # a PIL image (any mode) works too; decode agrees with PIL within JPEG decoder rounding
    pil = Image.open(io.BytesIO(data)).convert("RGB")
    assert (decode_image(pil).int() - decode_image(data).int()).abs().max() <= 2
    gray = pil.convert("L")
    assert decode_image(gray).shape == (3, 90, 120)
    assert tf(gray)[0].shape == (3, 32, 32)


def test_fast_multicrop_matches_pil_path_statistics():
    """Same kinds of views: per-view mean/std of normalised pixels agree with the PIL path on average."""
    from excb.augment import MultiCropTransform
    from excb.fast_augment import FastMultiCropTransform

    data, pil = _jpeg_bytes()
    cfg = {"global_size": 32, "local_size": 16, "n_local": 2}
    fast, ref = FastMultiCropTransform(cfg), MultiCropTransform(cfg)
    torch.manual_seed(0)
    a = torch.stack([torch.stack([v.mean() for v in fast(data)]) for _ in range(60)])
    b = torch.stack([torch.stack([v.mean() for v in ref(pil)]) for _ in range(60)])
    assert (a.mean(0) - b.mean(0)).abs().max() < 0.15
    assert (a.std(0) - b.std(0)).abs().max() < 0.15
