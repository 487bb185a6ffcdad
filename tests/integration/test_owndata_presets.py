"""The own-data presets (configs/pretrain/own_*.yaml) are complete recipes: with only data.root set
they validate, and each trains on a generated ImageFolder at its resolution (one step, small batch)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from excb.config import resolve_config
from excb.train import PRETRAIN_DEFAULTS, train, validate_config
from test_owndata_data import make_image_folder

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "pretrain"
# (file, global px, local px, backbone, stem): what each preset promises in its first line
EXPECTED = [("own_32px.yaml", 32, 16, "resnet18", "small"), ("own_64px.yaml", 64, 32, "resnet18", "small"),
            ("own_96px.yaml", 96, 48, "resnet50", "standard")]


@pytest.mark.parametrize("name,g,l,arch,stem", EXPECTED, ids=[e[0] for e in EXPECTED])
def test_preset_is_a_complete_imagefolder_recipe(tmp_path, capsys, name, g, l, arch, stem):
    root = make_image_folder(tmp_path / "imgs", {"cats": 8, "dogs": 8}, px=g + 8)
    cfg = resolve_config(PRETRAIN_DEFAULTS, PRESETS / name, [f"data.root={root}"])
    validate_config(cfg, name)
    assert cfg["data"]["name"] == "imagefolder"
    assert (cfg["augment"]["global_size"], cfg["augment"]["local_size"]) == (g, l)
    assert (cfg["backbone"]["name"], cfg["backbone"]["stem"]) == (arch, stem)
    # sized for 5k-100k images, not ImageNet's 65,536 clusters and batch 1024
    assert cfg["centroids"]["K"] == 1024 and cfg["batch_size"] == 256
    # the step-scaled choices: s and the teacher average over ~100 steps (~1.3 epochs of 20k images)
    assert 1 / (1 - cfg["balancer"]["momentum"]) == pytest.approx(100) and cfg["ema"]["momentum"] == 0.99
    # one real step on CPU with a small batch (everything else as the preset says)
    small = dict(cfg, batch_size=8, max_steps=1, num_workers=0, final_pass=False, save_every_steps=0)
    res = train(small, tmp_path / "run")
    assert res["status"] == "complete" and res["metrics"]["steps_done"] == 1
    assert "larger than the training set (16 images)" in capsys.readouterr().out   # K = 1024 > 16: a warning
    ck = torch.load(tmp_path / "run" / "checkpoint.pth", map_location="cpu", weights_only=True)
    k = 3 if stem == "small" else 7
    assert ck["teacher"]["backbone.conv1.weight"].shape[-1] == k
