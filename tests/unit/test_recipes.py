"""Recipes as published (issue 11): head depth of every pretraining YAML, the loss normalisations.

Expected values are written here from the paper (SPEC sections 1, 3), DINO's head and the
authors' released code (engine/criterion.py, architectures/layers.py at commit 7750bd5), not
computed with the project's functions.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from excb import ExcbError
from excb.config import resolve_config
from excb.loss import excb_loss
from excb.model import ExCBStudent
from excb.train import PRETRAIN_DEFAULTS, validate_config

ROOT = Path(__file__).resolve().parents[2]
ALL_PRETRAIN_YAMLS = sorted((ROOT / "configs" / "pretrain").rglob("*.yaml"))

# pooled feature width of each backbone (torchvision ResNet, timm ViT-S/16 CLS token)
FEATURE_DIM = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "vit_small_patch16_224": 384}


def _resolve(path: Path):
    return resolve_config(PRETRAIN_DEFAULTS, path)


def _linear_shapes(seq: nn.Module):
    return [(m.in_features, m.out_features) for m in seq.modules() if isinstance(m, nn.Linear)]


def test_every_pretrain_yaml_is_found_recursively():
    names = {p.relative_to(ROOT / "configs" / "pretrain").as_posix() for p in ALL_PRETRAIN_YAMLS}
    assert {"r50_mc_400ep.yaml", "vit_s16_800ep.yaml", "demo.yaml", "r50_official_code.yaml"} <= names


@pytest.mark.parametrize("path", ALL_PRETRAIN_YAMLS, ids=[p.stem for p in ALL_PRETRAIN_YAMLS])
def test_projector_and_predictor_depth(path):
    """h: 3 Linear (in -> hidden -> hidden -> out), g: 2 Linear (out -> hidden -> out) in every recipe;
    BN + ReLU between for ResNet, GELU and no BN for ViT (DINO's head)."""
    cfg = _resolve(path)
    validate_config(cfg, str(path))
    head, name = cfg["head"], cfg["backbone"]["name"]
    d_in = FEATURE_DIM[name]
    hid, out, phid = head["hidden_dim"], head["out_dim"], head["predictor_hidden_dim"]
    st = ExCBStudent(nn.Identity(), d_in, 8, head)   # K does not matter for the heads
    assert _linear_shapes(st.projector) == [(d_in, hid), (hid, hid), (hid, out)], path.name
    n_bn = sum(isinstance(m, nn.BatchNorm1d) for m in st.projector)
    if name.startswith("resnet"):
        assert n_bn == 2 and sum(isinstance(m, nn.ReLU) for m in st.projector) == 2, path.name
    else:
        assert n_bn == 0 and sum(isinstance(m, nn.GELU) for m in st.projector) == 2, path.name
    if head["predictor"]:
        assert _linear_shapes(st.predictor) == [(out, phid), (phid, out)], path.name
    else:
        assert st.predictor is None and "predictor" in path.stem, path.name


def test_paper_widths_of_the_full_recipes():
    for stem, d_in in (("r50_mc_400ep", 2048), ("r50_nomc_100ep", 2048), ("vit_s16_800ep", 384)):
        cfg = _resolve(ROOT / "configs" / "pretrain" / f"{stem}.yaml")
        st = ExCBStudent(nn.Identity(), d_in, 8, cfg["head"])
        assert _linear_shapes(st.projector) == [(d_in, 2048), (2048, 2048), (2048, 256)]
        assert _linear_shapes(st.predictor) == [(256, 2048), (2048, 256)]
        # 2048x2048 weights: the layer the old `layers: 2` dropped (4.2 M parameters)
        assert sum(p.numel() for p in st.projector.parameters()) > 4.2e6 + d_in * 2048


def test_trunc_normal_head_init():
    torch.manual_seed(0)
    st = ExCBStudent(nn.Identity(), 64, 8, {"hidden_dim": 512, "out_dim": 256, "predictor_hidden_dim": 512,
                                            "init": "trunc_normal", "norm": "none", "act": "gelu"})
    for m in list(st.projector) + list(st.predictor):
        if isinstance(m, nn.Linear):
            # DINO's trunc_normal_(std=.02) cuts at ±2 (absolute, i.e. ±100 σ): a plain N(0, 0.02²);
            # torch's default here would be uniform with std 1/sqrt(3 fan_in) = 0.072 for the first layer
            assert float(m.weight.detach().std()) == pytest.approx(0.02, rel=0.05)
            assert float(m.weight.detach().abs().max()) <= 2.0 and float(m.bias.detach().abs().max()) == 0.0


# ----------------------------------------------------------------------------- loss normalisation
TAU = 0.1


def _H(p, z):
    """Batch mean of -sum_k p_k log softmax(z/τ)_k."""
    return -(p * F.log_softmax(z / TAU, dim=-1)).sum(-1).mean()


def _released_pair_mean(p_t, z_h, z_g):
    """The released code's loss (engine/criterion.py + Trainer.unroll_batch matches): teacher view v is
    matched with the projector output of every *other global* view and the predictor output of every
    view; total = sum over matched pairs / number of pairs."""
    G, V = len(p_t), len(z_h)
    terms = []
    for v in range(G):
        terms += [_H(p_t[v], z_h[w]) for w in range(G) if w != v]
        terms += [_H(p_t[v], z_g[w]) for w in range(V)]
    return sum(terms) / len(terms), len(terms)


def _inputs(L, seed=0, B=3, K=11):
    g = torch.Generator().manual_seed(seed)
    p_t = torch.softmax(torch.randn(2, B, K, generator=g, dtype=torch.float64) * 3, -1)
    z_h = (torch.rand(2 + L, B, K, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    z_g = (torch.rand(2 + L, B, K, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    return p_t, z_h, z_g


@pytest.mark.parametrize("L,n_pairs", [(0, 6), (6, 18)])
def test_official_code_loss_is_the_released_pair_mean(L, n_pairs):
    p_t, z_h, z_g = _inputs(L)
    ref, count = _released_pair_mean(p_t.unbind(0), z_h.unbind(0), z_g.unbind(0))
    assert count == n_pairs                         # 18 with multi-crop (2 x (1 + 8)), 6 without
    g_ref = torch.autograd.grad(ref, (z_h, z_g))
    loss, _ = excb_loss(p_t, z_h, z_g, TAU, pairs="official-code", normalization="pair-mean")
    g = torch.autograd.grad(loss, (z_h, z_g))
    assert float(loss) == pytest.approx(float(ref), rel=1e-10)
    torch.testing.assert_close(g[0], g_ref[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g[1], g_ref[1], rtol=1e-9, atol=1e-12)
    assert float(g[0][2:].abs().sum()) == 0.0       # the locals' projector outputs are unused


@pytest.mark.parametrize("L", [0, 6])
def test_pair_weights_sum_to_two_vs_one(L):
    """A uniform student makes every H equal to log K, so the loss is (sum of pair weights) x log K:
    Algorithm 1 -> 2 log K (G = 2), the released code's pair mean -> log K."""
    K = 11
    p_t, _, _ = _inputs(L, K=K)
    z = torch.zeros(2 + L, 3, K, dtype=torch.float64)
    for pairs in ("eq7", "official-code"):
        a1, _ = excb_loss(p_t, z, z, TAU, pairs=pairs, normalization="algorithm1")
        pm, _ = excb_loss(p_t, z, z, TAU, pairs=pairs, normalization="pair-mean")
        assert float(a1) == pytest.approx(2 * math.log(K), rel=1e-12), pairs
        assert float(pm) == pytest.approx(math.log(K), rel=1e-12), pairs


def test_eq7_pair_mean_and_no_predictor_by_hand():
    L = 2
    p_t, z_h, z_g = _inputs(L, seed=3)
    P, Zh, Zg = p_t.unbind(0), z_h.unbind(0), z_g.unbind(0)
    V = 2 + L
    h_pairs = [_H(P[v], Zh[w]) for v in range(2) for w in range(V) if w != v]   # G(V-1) = 6
    g_pairs = [_H(P[v], Zg[w]) for v in range(2) for w in range(V)]             # G V = 8
    pm, _ = excb_loss(p_t, z_h, z_g, TAU, normalization="pair-mean")
    assert float(pm) == pytest.approx(float(sum(h_pairs + g_pairs)) / 14, rel=1e-10)
    a1, _ = excb_loss(p_t, z_h, z_g, TAU, normalization="algorithm1")
    assert float(a1) == pytest.approx(0.5 * float(sum(h_pairs)) / (V - 1) + 0.5 * float(sum(g_pairs)) / V, rel=1e-10)
    # predictor off (Table 8, first row): the projector term alone, Algorithm 1's per-view average
    no_g, parts = excb_loss(p_t, z_h, None, TAU)
    assert float(no_g) == pytest.approx(float(sum(h_pairs)) / (V - 1), rel=1e-10) and "loss_g" not in parts
    no_g_pm, _ = excb_loss(p_t, z_h, None, TAU, normalization="pair-mean")
    assert float(no_g_pm) == pytest.approx(float(sum(h_pairs)) / 6, rel=1e-10)


def test_unknown_normalization_is_a_one_line_error():
    cfg = resolve_config(PRETRAIN_DEFAULTS, None, ["loss.normalization=pairmean"])
    with pytest.raises(ExcbError, match="loss.normalization.*pairmean.*algorithm1"):
        validate_config(cfg)


def test_recipes_state_their_normalization():
    """Every full paper recipe uses Algorithm 1, the official-code ones the released pair mean, and
    each YAML says what that means for the lr."""
    for path in ALL_PRETRAIN_YAMLS:
        cfg = _resolve(path)
        want = "pair-mean" if cfg["recipe"] == "official-code" else "algorithm1"
        assert cfg["loss"]["normalization"] == want, path.name
        if cfg["recipe"] == "official-code":
            assert cfg["loss"]["pairs"] == "official-code", path.name
    for stem in ("r50_mc_100ep", "vit_s16_800ep", "r50_official_code"):
        text = (ROOT / "configs" / "pretrain" / f"{stem}.yaml").read_text()
        assert "lr" in text and ("sum to 2" in text or "sum to 1" in text), stem


# ----------------------------------------------------------------------------- precision under autocast
def test_teacher_probs_under_bf16_autocast_match_fp32_products():
    """Backbone and heads run in bf16 under autocast; the K-wide centroid products must not: p_t
    from the teacher under bf16 autocast is within 1e-4 of softmax(cos(h, c)/τ_t) computed in fp64
    from the same (bf16) projector outputs. bf16 products would be off by up to ~1e-2."""
    from excb.balancing import create_balancer
    from excb.model import ExCBTeacher

    torch.manual_seed(0)
    K, D = 4096, 256
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 64))
    st = ExCBStudent(backbone, 64, K, {"hidden_dim": 128, "out_dim": D, "predictor_hidden_dim": 128})
    te = ExCBTeacher(st)
    views = [torch.randn(16, 3, 8, 8) for _ in range(2)]
    captured = {}
    te.projector.register_forward_hook(lambda m, i, o: captured.__setitem__("h", o))
    bal = create_balancer("excb", K)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_t = te(views).flatten(0, 1)
        p_t, _ = bal.teacher_probs(z_t, 0.04)
        z_h, z_g = st(views, 2)
    h = captured["h"]
    assert h.dtype == torch.bfloat16                     # the heads did run in bf16
    assert z_t.dtype == z_h.dtype == z_g.dtype == torch.float32
    cos = F.normalize(h.double(), dim=-1) @ F.normalize(te.centroids.weight.double(), dim=-1).t()
    p_ref = torch.softmax(cos / 0.04, dim=-1)            # s uniform: B is the identity
    assert float((p_t.double() - p_ref).abs().max()) < 1e-4
    # the same products rounded to bf16 move p_t by far more (what the fix prevents)
    p_bf16 = torch.softmax(cos.bfloat16().double() / 0.04, dim=-1)
    assert float((p_bf16 - p_ref).abs().max()) > 1e-3


# ----------------------------------------------------------------------------- ablation configs
# Tables 6-9 of the paper (seeds/000_8805f07edfbd6b77.txt; SPEC section 7): file -> (table, published
# linear top-1, the settings that define the row)
ABLATIONS = {
    "table6_batch256": (6, 70.5, {"batch_size": 256, "augment.n_local": 0}),
    "table6_batch512": (6, 70.6, {"batch_size": 512, "augment.n_local": 0}),
    "table6_batch1024": (6, 70.7, {"batch_size": 1024, "augment.n_local": 0}),
    "table7_k32768": (7, 70.3, {"centroids.K": 32768, "augment.n_local": 0}),
    "table7_k49152": (7, 70.5, {"centroids.K": 49152, "augment.n_local": 0}),
    "table7_k65536": (7, 70.7, {"centroids.K": 65536, "augment.n_local": 0}),
    "table7_k98304": (7, 70.6, {"centroids.K": 98304, "augment.n_local": 0}),
    "table8_row1_no_predictor": (8, 73.8, {"head.predictor": False, "centroids.local_stop_grad": False,
                                           "centroids.weight_decay": 1e-4, "centroids.weight_decay_end": 1e-4}),
    "table8_row2_predictor": (8, 74.0, {"head.predictor": True, "centroids.local_stop_grad": False,
                                        "centroids.weight_decay": 1e-4, "centroids.weight_decay_end": 1e-4}),
    "table8_row3_predictor_stopgrad": (8, 74.3, {"head.predictor": True, "centroids.local_stop_grad": True,
                                                 "centroids.weight_decay": 1e-4, "centroids.weight_decay_end": 1e-4}),
    "table8_row4_full": (8, 74.5, {"head.predictor": True, "centroids.local_stop_grad": True,
                                   "centroids.weight_decay": 1e-3, "centroids.weight_decay_end": 1e-4}),
    "table9_quadratic": (9, 74.3, {"balancer.variant": "quadratic"}),
    "table9_linear": (9, 74.5, {"balancer.variant": "linear"}),
}


def test_one_ablation_yaml_per_table_row():
    from excb.config import get_dotted

    found = {p.stem for p in (ROOT / "configs" / "pretrain" / "ablations").glob("*.yaml")}
    assert found == set(ABLATIONS)
    for stem, (table, acc, settings) in ABLATIONS.items():
        path = ROOT / "configs" / "pretrain" / "ablations" / f"{stem}.yaml"
        first = path.read_text().splitlines()[0]
        assert first.startswith(f"# Table {table}") and f"{acc} %" in first and "row" in first, stem
        cfg = _resolve(path)
        validate_config(cfg, str(path))
        assert cfg["epochs"] == 100 and cfg["backbone"]["name"] == "resnet50" and cfg["recipe"] == "paper", stem
        # Tables 6-7 without multi-crop (2 x 224 at 0.14-1), Tables 8-9 with it (2 x 224 + 6 x 96)
        assert cfg["augment"]["n_local"] == (0 if table in (6, 7) else 6), stem
        assert cfg["augment"]["global_scale"] == ([0.14, 1.0] if table in (6, 7) else [0.2, 1.0]), stem
        for key, value in settings.items():
            assert get_dotted(cfg, key) == value, (stem, key)
        if table != 6:
            assert cfg["batch_size"] == 1024, stem
        if table != 7:
            assert cfg["centroids"]["K"] == 65536, stem
