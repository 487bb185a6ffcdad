"""Recipe switches of issue 11 — ViT wd/clipping (DINO), the released code's schedules, crops, blur,
k-means init and the ``recipe: official-code`` preset — against values written here from DINO
(facebookresearch/dino@7c446df), the released code (ManiadisG/ExCB@7750bd5) and the paper."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from excb import ExcbError
from excb.config import get_dotted, resolve_config
from excb.train import PRETRAIN_DEFAULTS, build_schedules, validate_config
from tiny_helpers import make_tiny_config

ROOT = Path(__file__).resolve().parents[2]
PRE = ROOT / "configs" / "pretrain"


def _cfg(name, *over):
    return resolve_config(PRETRAIN_DEFAULTS, PRE / name, list(over))


def _applied(cfg):
    from excb.recipes import apply_recipe

    return apply_recipe(cfg, PRETRAIN_DEFAULTS)[0]


def _cos(a, b, t, T):
    """value of a cosine from a (t = 0) to b (t = T)"""
    return b + 0.5 * (a - b) * (1 + math.cos(math.pi * t / T))


# ----------------------------------------------------------------------------- weight decay, lr
def test_vit_centroid_weight_decay_is_dinos_every_weight_schedule():
    cfg = _cfg("vit_s16_800ep.yaml", "epochs=10")
    spe = 7
    sch = build_schedules(cfg, spe)
    wd_c, wd = sch["wd_centroids"], sch["wd"]
    T = 10 * spe
    assert wd_c[0] == pytest.approx(0.04) and wd_c[T // 2] == pytest.approx(0.22)   # midpoint of 0.04 -> 0.4
    assert wd_c[T - 1] == pytest.approx(_cos(0.04, 0.4, T - 1, T)) and 0.399 < wd_c[T - 1] < 0.4
    assert list(wd_c) == list(wd)
    # the ResNet recipe keeps the centroid layer's own 1e-3 -> 1e-4
    r50 = build_schedules(_cfg("r50_mc_100ep.yaml", "epochs=10"), spe)
    assert r50["wd_centroids"][0] == pytest.approx(1e-3) and r50["wd_centroids"][T // 2] == pytest.approx(5.5e-4)


def test_released_centroid_wd_is_ten_to_one_times_the_base():
    """engine/optimizer.py wdx10c1: base wd x (1 + 9 c), c cosine 1 -> 0."""
    spe, T = 5, 50
    vit = build_schedules(_cfg("vit_s16_official_code.yaml", "epochs=10"), spe)["wd_centroids"]
    assert vit[0] == pytest.approx(0.4) and vit[T // 2] == pytest.approx(0.22 * 5.5) and vit[T - 1] == pytest.approx(
        _cos(0.04, 0.4, T - 1, T) * (1 + 9 * _cos(1, 0, T - 1, T)))
    r50 = build_schedules(_cfg("r50_official_code.yaml", "epochs=10"), spe)["wd_centroids"]
    assert r50[0] == pytest.approx(1e-3) and r50[T // 2] == pytest.approx(5.5e-4)


def test_lr_floor_factor_and_vit_lr():
    spe, T, W = 4, 40, 8   # 10 epochs, 2 warm-up epochs
    cfg = _cfg("r50_official_code.yaml", "epochs=10", "optim.warmup_epochs=2")
    lr = build_schedules(cfg, spe)["lr"]
    peak, floor = 0.6, 0.6e-4
    assert lr[W] == pytest.approx(peak) and lr[T - 1] == pytest.approx(_cos(peak, floor, T - 1 - W, T - W))
    assert lr[T - 1] > floor
    vit = build_schedules(_cfg("vit_s16_800ep.yaml", "epochs=20"), spe)["lr"]
    assert vit[10 * spe] == pytest.approx(0.0005 * 1024 / 256) and vit[-1] == pytest.approx(
        _cos(0.002, 1e-5, 10 * spe - 1, 10 * spe))


def test_teacher_temperature_warmup_like_dino():
    """DINOLoss.teacher_temp_schedule: linspace(0.04, 0.07, 30) then 0.07 (a per-epoch value)."""
    cfg = _cfg("vit_s16_800ep.yaml", "epochs=100", "loss.teacher_temp=0.07", "loss.warmup_teacher_temp_epochs=30")
    tt = build_schedules(cfg, 3)["teacher_temp"]
    assert tt[0] == pytest.approx(0.04) and tt[3 * 1] == pytest.approx(0.04 + 0.03 / 29)
    assert tt[3 * 29] == pytest.approx(0.07) and tt[3 * 99 + 2] == pytest.approx(0.07) and tt[3 * 1 + 2] == tt[3]
    paper = build_schedules(_cfg("vit_s16_800ep.yaml", "epochs=10"), 3)["teacher_temp"]
    assert set(paper.tolist()) == {0.04}


# ----------------------------------------------------------------------------- clipping
def _params_with_grads():
    ps = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, 2))]
    grads = [torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4]), torch.tensor([[6.0, 8.0], [0.0, 0.0]])]
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    return ps


def test_per_parameter_clipping_on_a_hand_made_gradient():
    """DINO utils.clip_gradients: each gradient on its own, coefficient clip / (||g|| + 1e-6) if < 1."""
    from excb.clipping import CLIP_MODES

    ps = _params_with_grads()                     # norms 5, 0.5, 10
    CLIP_MODES["per-param"](ps, 1.0)
    torch.testing.assert_close(ps[0].grad, torch.tensor([3.0, 4.0]) / (5 + 1e-6))
    torch.testing.assert_close(ps[1].grad, torch.tensor([0.3, 0.4]))               # below the clip: untouched
    torch.testing.assert_close(ps[2].grad, torch.tensor([[6.0, 8.0], [0.0, 0.0]]) / (10 + 1e-6))
    # a global-norm clip would scale all three by 1 / ||(g1, g2, g3)|| = 1 / sqrt(125.25)
    gs = _params_with_grads()
    CLIP_MODES["global"](gs, 1.0)
    assert float(gs[1].grad.norm()) == pytest.approx(0.5 / math.sqrt(125.25), rel=1e-4)
    assert _cfg("vit_s16_800ep.yaml")["optim"]["clip_mode"] == "per-param"
    assert _cfg("vit_s16_800ep.yaml")["optim"]["clip_grad"] == 3.0


def test_unknown_switch_values_are_one_line_errors():
    for over, key in (("optim.clip_mode=norm", "optim.clip_mode"), ("centroids.init=kmean", "centroids.init"),
                      ("centroids.weight_decay_schedule=dino", "centroids.weight_decay_schedule"),
                      ("head.init=xavier", "head.init")):
        with pytest.raises(ExcbError, match=re.escape(key)):
            validate_config(resolve_config(PRETRAIN_DEFAULTS, None, [over]))


# ----------------------------------------------------------------------------- crops and blur
def test_crop_scale_schedule_of_the_released_code():
    """engine/trainer.py: crop_min_scale = scheduling(0.26, 0.14, epoch, epochs) (cosine), globals
    (min, 1), locals (0.05, min) — data/transforms.py."""
    from excb.augment import crop_scales

    a = _applied(_cfg("r50_official_code.yaml"))["augment"]
    assert crop_scales(a, 0, 400) == ((0.26, 1.0), (0.05, 0.26))
    g, l = crop_scales(a, 200, 400)
    assert g == (pytest.approx(0.20), 1.0) and l == (0.05, pytest.approx(0.20))
    g, _ = crop_scales(a, 399, 400)
    assert g[0] == pytest.approx(0.14 + 0.06 * (1 + math.cos(math.pi * 399 / 400)))
    paper = _cfg("r50_mc_400ep.yaml")["augment"]
    assert crop_scales(paper, 0, 400) == crop_scales(paper, 399, 400) == ((0.2, 1.0), (0.05, 0.2))


def test_dataset_items_carry_the_epoch_into_the_crops():
    from excb.augment import build_multicrop
    from excb.train import MultiCropDataset

    a = _applied(_cfg("r50_official_code.yaml", "augment.global_size=32", "augment.local_size=16"))["augment"]

    class Tiny:
        targets = [0]

        def __len__(self):
            return 1

        def load_image(self, i):
            from PIL import Image

            return Image.new("RGB", (40, 40), (120, 30, 200))

    for backend in ("pil", "fast"):
        tr = build_multicrop({**a, "backend": backend}, epochs=10)
        ds = MultiCropDataset(Tiny(), tr, seed=0)
        views, _ = ds[(0, 5)]
        assert len(views) == 8 and views[0].shape[-1] == 32 and views[2].shape[-1] == 16
        lo = 0.14 + 0.06 * (1 + math.cos(math.pi * 5 / 10))
        if backend == "pil":
            assert tr.global_crops[0].scale[0] == pytest.approx(lo) and tr.local_crop.scale[1] == pytest.approx(lo)
        else:
            assert tr.global_scale[0] == pytest.approx(lo) and tr.local_scale[1] == pytest.approx(lo)


def test_released_blur_probabilities_and_kernel():
    """data/transforms.py GaussianBlur(p) applies with 1 - p: globals 0 / 0.9, locals (p = 1.0) never; 9 px."""
    from torchvision import transforms as T

    from excb.augment import MultiCropTransform

    a = _applied(_cfg("r50_official_code.yaml"))["augment"]
    tr = MultiCropTransform(a, epochs=400)

    def blurs(compose):
        return [(op.p, op.transforms[0].kernel_size) for op in compose.transforms
                if isinstance(op, T.RandomApply) and isinstance(op.transforms[0], T.GaussianBlur)]

    assert blurs(tr.global_t[0]) == [] and blurs(tr.global_t[1]) == [(0.9, (9, 9))] and blurs(tr.local_t) == []
    paper = MultiCropTransform(_cfg("r50_mc_400ep.yaml")["augment"])
    assert blurs(paper.global_t[0]) == [(1.0, (23, 23))] and blurs(paper.global_t[1]) == [(0.1, (23, 23))]
    assert blurs(paper.local_t) == [(0.5, (9, 9))]
    from excb.fast_augment import FastMultiCropTransform

    fast = FastMultiCropTransform(a)
    assert fast.blur_p == [0.0, 0.9] and fast.blur_local == 0.0


# ----------------------------------------------------------------------------- k-means
def test_spherical_kmeans_finds_the_directions():
    from excb.kmeans import spherical_kmeans

    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(5, 16, generator=g), dim=1)
    x = dirs.repeat_interleave(40, 0) + 0.05 * torch.randn(200, 16, generator=g)
    x = torch.nn.functional.normalize(x, dim=1)
    c, empty = spherical_kmeans(x, 5, iters=20, seed=0)
    assert empty == 0
    assert torch.allclose(c.norm(dim=1), torch.ones(5), atol=1e-5)
    best = (c @ dirs.t()).max(dim=0).values            # each true direction has a centroid next to it
    assert float(best.min()) > 0.99


def test_kmeans_with_fewer_samples_than_clusters_is_a_clear_error():
    from excb.kmeans import spherical_kmeans

    with pytest.raises(ExcbError, match="centroids.init.*K = 64.*got 10"):
        spherical_kmeans(torch.nn.functional.normalize(torch.randn(10, 4), dim=1), 64)


# ----------------------------------------------------------------------------- the recipe preset
RELEASED = {   # written from ManiadisG/ExCB@7750bd5 (see excb/recipes.py for the files)
    "loss.pairs": "official-code", "loss.normalization": "pair-mean", "head.init": "trunc_normal",
    "head.predictor_norm_input": True, "backbone.zero_init_residual": True, "optim.min_lr_factor": 1e-4,
    "centroids.weight_decay_schedule": "base_x10_to_x1", "centroids.init": "kmeans",
    "augment.blur_probs": [0.0, 0.9, 0.0], "augment.blur_kernel": 9,
    "augment.global_min_scale_schedule": [0.26, 0.14], "augment.local_scale_follows_global": True,
    "balancer.winner_boost": 0.01, "balancer.zero_weight_noise": 1e-3,
}


@pytest.mark.parametrize("name", ["r50_official_code.yaml", "vit_s16_official_code.yaml"])
def test_official_code_configs_have_the_released_values(name):
    cfg = _applied(_cfg(name))
    for key, value in RELEASED.items():
        assert get_dotted(cfg, key) == value, (name, key)
    assert cfg["centroids"]["kmeans_samples"] == 500000 and cfg["centroids"]["kmeans_iters"] == 50
    assert cfg["head"]["hidden_layers"] == 2 and cfg["augment"]["n_local"] == 6
    if name.startswith("vit"):
        o = cfg["optim"]
        assert (o["name"], o["clip_grad"], o["min_lr"], o["weight_decay"], o["weight_decay_end"]) == \
               ("adamw", 0.0, 0.0, 0.04, 0.4)
        assert cfg["centroids"]["freeze_epochs"] == 0


def test_recipe_switch_alone_equals_the_official_yaml():
    """``recipe=official-code`` on the paper's 400-epoch recipe gives exactly r50_official_code.yaml."""
    a = _applied(_cfg("r50_mc_400ep.yaml", "recipe=official-code"))
    b = _applied(_cfg("r50_official_code.yaml"))
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    # a value the user set away from the paper default wins over the preset
    c = _applied(_cfg("r50_mc_400ep.yaml", "recipe=official-code", "augment.blur_kernel=5"))
    assert c["augment"]["blur_kernel"] == 5 and c["loss"]["normalization"] == "pair-mean"
    # the paper recipe is untouched
    p = _cfg("r50_mc_400ep.yaml")
    assert _applied(p) == p and all(get_dotted(p, k) != v for k, v in RELEASED.items())


def test_tiny_official_code_run_initialises_centroids_by_kmeans(tmp_path):
    from excb.train import train

    cfg = make_tiny_config(recipe="official-code", epochs=1)
    res = train(cfg, tmp_path)
    proto = res["protocol"]
    assert proto["loss"]["normalization"] == "pair-mean" and proto["centroids"]["init"] == "kmeans"
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    km = [r for r in log if r.get("kind") == "kmeans_init"]
    assert km and km[0]["kmeans_samples"] == 256
    assert any(r.get("kind") == "recipe" for r in log)
