"""Non-finite numbers never become a result: a backbone with one ``inf`` weight, or one whose
features come out NaN (a BatchNorm with a negative running variance), fails its stage with ONE
line naming the tensor; no results.json is written and no leaderboard row appears, while a
healthy checkpoint evaluated into the same run directory does get its row."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from faultlib import EXCB_BENCH, assert_one_line_error, run

SMALL = ["knn.data.limit_train=200", "knn.data.limit_val=100", "knn.k=[5]", "knn.headline_k=5"]


def _resnet18_sd() -> dict:
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("ck")
    sd = _resnet18_sd()
    torch.save(sd, d / "healthy_r18.pth")
    inf = {k: v.clone() for k, v in sd.items()}
    inf["layer3.0.conv1.weight"].view(-1)[7] = float("inf")
    torch.save(inf, d / "inf_weight_r18.pth")
    nan_feat = {k: v.clone() for k, v in sd.items()}
    nan_feat["layer4.1.bn2.running_var"][3] = -1.0   # finite weights, sqrt(-1) -> NaN features
    torch.save(nan_feat, d / "nan_features_r18.pth")
    return {"healthy": d / "healthy_r18.pth", "inf": d / "inf_weight_r18.pth", "nan": d / "nan_features_r18.pth"}


def _eval(ck: Path, base: Path, cwd: Path, tag: str):
    return run([*EXCB_BENCH, "eval", "--checkpoint", str(ck), "--stages", "knn", "-o", str(base), *SMALL], cwd,
               timeout=300, tag=tag)


def test_nonfinite_backbones_fail_and_leave_no_row(tmp_path, checkpoints):
    base = tmp_path / "run"
    inf = _eval(checkpoints["inf"], base, tmp_path, "inf")
    assert_one_line_error(inf, "inf_weight_r18.pth", "non-finite", "layer3.0.conv1.weight", "1 inf")
    nan = _eval(checkpoints["nan"], base, tmp_path, "nan")
    assert_one_line_error(nan, "non-finite", "knn train features", "200 of 200")
    for label in ("inf_weight_r18", "nan_features_r18"):
        assert not (base / f"eval_{label}" / "knn" / "results.json").exists(), label

    good = _eval(checkpoints["healthy"], base, tmp_path, "healthy")
    assert good.p.returncode == 0, good.report()
    board = (base / "leaderboard" / "leaderboard.md").read_text()
    csv = (base / "leaderboard" / "leaderboard.csv").read_text()
    assert "healthy_r18" in board and "healthy_r18" in csv, "the control row must appear"
    for label in ("inf_weight_r18", "nan_features_r18"):
        assert label not in board and label not in csv, f"a row of the non-finite checkpoint {label} appeared"
