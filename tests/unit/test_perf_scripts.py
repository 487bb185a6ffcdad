"""Perf scripts: each runs with --quick (not timed); the proposals and the fast augmentation
path are checked against the library's reference code (values, gradients, distributions)."""
from __future__ import annotations

import copy
import importlib
import io
import json

import pytest
import torch

SCRIPTS = ["bench_step", "bench_lightly", "bench_balancing", "bench_augment", "bench_knn", "bench_memory"]


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
        assert "RATIO" in text and "settings:" in text and "loadavg_1m" in text


def test_timing_interleaves_and_takes_medians():
    from benchmarks.perf._timing import interleaved, median, report

    calls = []
    t = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeat=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then alternating order
    assert len(t["a"]) == 3 and median([3.0, 1.0, 2.0]) == 2.0
    r = report("t", {}, {"x": [2.0, 2.0], "y": [1.0, 1.0]}, {"x/y": ("x", "y", 1.5, "<="), "info": ("y", "x", None, "<=")})
    assert r["ratios"]["x/y"]["value"] == 2.0 and r["ratios"]["x/y"]["met"] is False
    assert r["ratios"]["info"]["met"] is None


# ----------------------------------------------------------------------------- proposals == library
@pytest.mark.parametrize("pairs", ["eq7", "official-code"])
def test_fused_loss_equals_eq7_loss_and_gradients(pairs):
    from benchmarks.perf.proposals import excb_loss_fused
    from excb.loss import excb_loss

    torch.manual_seed(0)
    G, V, B, K = 2, 5, 3, 17
    P = torch.softmax(torch.randn(G * B, K), -1)
    zh = torch.randn(V, B, K, requires_grad=True)
    zg = torch.randn(V, B, K, requires_grad=True)
    l1, parts1 = excb_loss(P.chunk(G), list(zh.unbind(0)), list(zg.unbind(0)), 0.1, pairs)
    g1 = torch.autograd.grad(l1, (zh, zg))
    l2, parts2 = excb_loss_fused(P.chunk(G), zh, zg, 0.1, pairs)
    g2 = torch.autograd.grad(l2, (zh, zg))
    assert torch.allclose(l1, l2, rtol=1e-5)
    assert parts1["loss_h"] == pytest.approx(parts2["loss_h"], rel=1e-5)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-6)


def test_fused_student_forward_equals_model():
    from benchmarks.perf.proposals import student_forward_fused
    from excb.model import build_models

    torch.manual_seed(0)
    st, _ = build_models({"name": "resnet18"}, {"hidden_dim": 32, "out_dim": 8, "predictor_hidden_dim": 32}, 11)
    st2 = copy.deepcopy(st)
    views = [torch.randn(2, 3, 32, 32) for _ in range(2)] + [torch.randn(2, 3, 16, 16) for _ in range(2)]
    w = torch.randn(4, 2, 11)
    zh, zg = st(views, 2, True)
    (sum((z * w[i]).sum() for i, z in enumerate(zh)) + sum((z ** 2).sum() for z in zg)).backward()
    zh2, zg2 = student_forward_fused(st2, views, 2, True)
    ((zh2 * w).sum() + (zg2 ** 2).sum()).backward()
    assert torch.allclose(torch.stack(zh), zh2, atol=1e-6) and torch.allclose(torch.stack(zg), zg2, atol=1e-6)
    for (n, p), (_, p2) in zip(st.named_parameters(), st2.named_parameters()):
        if p.grad is not None:
            assert float((p.grad - p2.grad).abs().max()) <= 1e-4 * float(p.grad.abs().max()) + 1e-6, n


@pytest.mark.parametrize("variant", ["linear", "quadratic"])
def test_fused_balanced_logits_equal_eq10(variant):
    from benchmarks.perf.proposals import excb_teacher_probs_fused
    from excb.balancing import create_balancer

    K = 33
    bal = create_balancer("excb", K, variant=variant)
    torch.manual_seed(1)
    s = torch.softmax(torch.randn(K) * 2, 0)
    s[3] = 1.0 / K  # exactly an equal share: identity branch
    bal.s.copy_(s)
    z = torch.rand(9, K) * 2 - 1
    p1, a1 = bal.teacher_probs(z, 0.04)
    p2, a2 = excb_teacher_probs_fused(bal, z, 0.04)
    assert torch.allclose(p1, p2, atol=1e-6) and torch.equal(a1, a2)


# ----------------------------------------------------------------------------- fast augmentation
def test_fast_blur_and_hue_equal_torchvision():
    from torchvision.transforms.v2 import functional as F2

    from excb.fast_augment import adjust_hue, separable_blur

    torch.manual_seed(0)
    x = torch.rand(3, 24, 30)
    for h in (-0.5, -0.1, 0.0, 0.07, 0.5):
        assert torch.allclose(adjust_hue(x, h), F2.adjust_hue(x, h), atol=1e-5)
    for k, s in ((3, 0.5), (9, 2.0), (23, 1.3)):
        assert torch.allclose(separable_blur(x, k, s), F2.gaussian_blur(x, [k, k], [s, s]), atol=1e-5)


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
