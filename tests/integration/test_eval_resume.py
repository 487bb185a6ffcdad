"""Linear probe and semi-supervised fine-tuning: a run stopped after an epoch and rerun ends with
exactly the metrics of an uninterrupted run (per-epoch state, per-epoch seeds)."""
from __future__ import annotations

import json

import pytest
import torch

from excb import ExcbError
from excb.config import resolve_config

TINY = ["backbone.name=resnet18", "data.limit_train=120", "data.limit_val=40", "resize=18", "crop=16",
        "rrc_scale=[0.5,1.0]", "num_workers=0", "progress=false"]


def _run(mod, tmp, name, extra):
    cfg = resolve_config(mod.DEFAULTS, None, TINY + extra)
    return mod.run(cfg, tmp / name)


def test_linear_resume_matches_uninterrupted(tmp_path):
    import benchmarks.linear as L

    common = ["epochs=3", "batch_size=32", "lrs=[0.01,0.1]", "holdout_fraction=0.2"]
    full = _run(L, tmp_path, "full", common)
    part = _run(L, tmp_path, "resumed", common + ["stop_after_epoch=1"])
    assert part["status"] == "stopped" and part["epochs_done"] == 1
    assert not (tmp_path / "resumed" / "results.json").exists()
    state = torch.load(tmp_path / "resumed" / "state.pth", weights_only=False)
    assert state["epoch"] == 0
    resumed = _run(L, tmp_path, "resumed", common)
    assert resumed["metrics"] == full["metrics"]
    hist = [json.loads(l) for l in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    ref = [json.loads(l) for l in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist if "epoch" in h] == [1, 2, 3]   # epoch 1 not redone
    # the training losses (sensitive to every augmentation draw and batch order) agree exactly
    assert [h["loss"] for h in hist if "loss" in h] == [h["loss"] for h in ref if "loss" in h]
    # a state written under another config is refused, not mixed in
    with pytest.raises(ExcbError, match="another config"):
        _run(L, tmp_path, "resumed", ["epochs=4", "batch_size=32", "lrs=[0.01,0.1]", "holdout_fraction=0.2"])


def test_semisup_resume_matches_uninterrupted(tmp_path):
    import benchmarks.semisup as S

    common = ["percent=10", "epochs=3", "batch_size=16", "backbone_lr=0.01", "head_lr=0.1"]
    full = _run(S, tmp_path, "full", common)
    assert full["metrics"]["n_labelled"] == 10   # 10 % of 120 images over 10 classes: 1 per class
    part = _run(S, tmp_path, "resumed", common + ["stop_after_epoch=2"])
    assert part["status"] == "stopped"
    # augmentation is seeded per (epoch, sample): resuming with loader workers changes nothing
    resumed = _run(S, tmp_path, "resumed", common + ["num_workers=2"])
    assert resumed["metrics"] == full["metrics"]
    assert (tmp_path / "resumed" / "subset_ids.txt").read_text() == (tmp_path / "full" / "subset_ids.txt").read_text()
    res = json.loads((tmp_path / "full" / "results.json").read_text())
    assert res["stage"] == "semisup_10" and res["protocol"]["subset"]["source"] == "balanced"
    assert res["data"]["n_labelled"] == 10 and res["checkpoint"]["format"] == "random-init"
