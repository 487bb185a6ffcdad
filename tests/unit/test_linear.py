"""Linear probe: frozen backbone (weights and BN buffers unchanged), separable data -> ~100 %,
independent heads of the lr grid, holdout selection."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import benchmarks.linear as L
from benchmarks.linear import LinearHeads, evaluate_heads, train_heads
from excb.config import resolve_config


def _separable(n_per: int, C: int = 4, dim: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(C, dim, generator=g) * 4
    y = torch.arange(C).repeat_interleave(n_per)
    f = centres[y] + 0.3 * torch.randn(len(y), dim, generator=g)
    return f, y


def _batches(f, y, bs, seed):
    def it(epoch):
        order = torch.as_tensor(L.rank_order(len(y), seed, epoch))
        for s in range(0, len(order), bs):
            b = order[s:s + bs]
            yield f[b], y[b]
    return it


def _cfg(**kw):
    return resolve_config(L.DEFAULTS, None, [f"{k}={v}" for k, v in kw.items()])


def test_separable_features_reach_100_percent():
    f, y = _separable(40)
    tf, ty = _separable(25, seed=0)
    torch.manual_seed(0)
    heads = LinearHeads(f.shape[1], 4, 1)
    out = train_heads(heads, [0.3], _cfg(epochs=20, batch_size=32), len(y), _batches(f, y, 32, 0),
                      lambda e: {"val": evaluate_heads(heads, tf, ty)}, None)
    assert not out["stopped"] and out["epoch"] == 20
    assert out["history"][-1]["val"][0][0] >= 99.0
    assert out["history"][-1]["loss"] < out["history"][0]["loss"]


def test_heads_of_the_grid_are_independent():
    f, y = _separable(20)
    cfg = _cfg(epochs=3, batch_size=16)
    torch.manual_seed(1)
    together = LinearHeads(f.shape[1], 4, 2)
    alone = LinearHeads(f.shape[1], 4, 1)
    alone.heads[0].load_state_dict(together.heads[0].state_dict())
    train_heads(together, [0.05, 5.0], cfg, len(y), _batches(f, y, 16, 0), lambda e: {}, None)
    train_heads(alone, [0.05], cfg, len(y), _batches(f, y, 16, 0), lambda e: {}, None)
    for a, b in zip(together.heads[0].parameters(), alone.heads[0].parameters()):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(together.heads[0].weight, together.heads[1].weight)


class QuadrantData(torch.utils.data.Dataset):
    """RGB images whose class is (bright half: top/bottom) x (colour: red/blue) — invariant to the
    probe's horizontal flips, and linearly separable from pooled statistics."""

    def __init__(self, n: int, seed: int, transform=None):
        from PIL import Image
        import numpy as np

        rng = np.random.default_rng(seed)
        self.targets = [i % 4 for i in range(n)]
        self.classes = ["top-red", "top-blue", "bottom-red", "bottom-blue"]
        self.sample_ids = [f"q{seed}_{i}" for i in range(n)]
        self.imgs = []
        for c in self.targets:
            a = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
            half, colour = divmod(c, 2)
            a[half * 8:(half + 1) * 8, :, 2 * colour] += 180
            self.imgs.append(Image.fromarray(a))
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def load_image(self, i):
        return self.imgs[i]

    def __getitem__(self, i):
        return (self.transform(self.imgs[i]) if self.transform else self.imgs[i]), self.targets[i]


class TinyBN(nn.Module):
    """A small BN network; its pooled 2x2 grid keeps the top/bottom information."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(2)

    def forward(self, x):
        return self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1)


@pytest.mark.parametrize("mode", ["augment", "cached-features"])
def test_stage_leaves_backbone_untouched_and_learns(tmp_path, monkeypatch, mode):
    torch.manual_seed(0)
    net = TinyBN()
    with torch.no_grad():   # non-trivial BN buffers, so a moving average would show
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    before = copy.deepcopy(net.state_dict())
    monkeypatch.setattr(L, "load_stage_backbone", lambda cfg, crop: (net, 16, {"path": None, "sha256": None,
                                                                             "format": "test", "arch": "tiny"}))
    monkeypatch.setattr(L, "build_dataset", lambda data, split, tf: QuadrantData(160 if split == "train" else 60,
                                                                              0 if split == "train" else 1, tf))
    cfg = _cfg(mode=mode, epochs=12, batch_size=32, lrs=[0.5, 0.05], holdout_fraction=0.1, resize=16, crop=16,
               rrc_scale=[0.9, 1.0], num_workers=0, progress=False)
    res = L.run(cfg, tmp_path)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), f"backbone {k} changed"
    assert not any(p.requires_grad for p in net.parameters())
    m = res["metrics"]
    assert m["top1"] >= 95.0, m
    assert m["selection"] == "holdout" and m["selected_lr"] in (0.5, 0.05)
    assert m["best_on_val"]["top1"] >= m["top1"]
    assert res["protocol"]["mode"] == mode and res["data"]["n_holdout"] == 16 and res["data"]["n_train_used"] == 144
    assert (tmp_path / "results.json").exists() and (tmp_path / "log.jsonl").exists()


def test_vit_protocol_uses_last4_cls_and_reports_both_selections(tmp_path):
    cfg = _cfg(**{"backbone.name": "vit_tiny_patch16_224", "backbone.kwargs": "{img_size: 32}", "data.limit_train": 60,
                  "data.limit_val": 20, "resize": 36, "crop": 32, "epochs": 1, "batch_size": 32,
                  "lrs": "[0.001,0.01,0.1]", "lr_batch_scaling": "true", "holdout_fraction": 0.2,
                  "mode": "cached-features", "num_workers": 0, "progress": "false"})
    res = L.run(cfg, tmp_path)
    p, m = res["protocol"], res["metrics"]
    assert p["feature"] == "last4_cls" and p["feature_dim"] == 4 * 192
    assert p["lrs_effective"] == pytest.approx([0.000125, 0.00125, 0.0125])   # lr * 32 / 256
    assert p["name"] == "linear-last4_cls-cached-features"
    assert m["selection"] == "holdout" and len(m["per_lr"]) == 3
    assert m["best_on_val"]["top1"] == max(r["val_top1"] for r in m["per_lr"])
    assert m["top1"] == next(r["val_top1"] for r in m["per_lr"] if r["lr"] == m["selected_lr"])
