"""The balancing study: grid of tiny pretrainings, table/figure/JSON outputs, skip on rerun."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from excb import ExcbError

TINY = [
    "balancers=[excb,none]", "batch_sizes=[8,16]",
    "pretrain.data.limit_train=32", "pretrain.backbone.name=resnet18",
    "pretrain.head.hidden_dim=32", "pretrain.head.out_dim=16", "pretrain.head.predictor_hidden_dim=32",
    "pretrain.centroids.K=8", "pretrain.augment.global_size=16", "pretrain.augment.local_size=8",
    "pretrain.augment.n_local=1", "pretrain.augment.eval_resize=18", "pretrain.augment.eval_crop=16",
    "pretrain.epochs=1", "pretrain.num_workers=0", "pretrain.optim.warmup_epochs=0",
    "knn.limit_train=48", "knn.limit_val=24", "knn.k=5",
]


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _args(out: Path, overrides):
    return argparse.Namespace(what="balancers", config=None, output_dir=str(out), overrides=list(overrides))


def test_demo_config_resolves_and_budget_is_equal():
    from benchmarks.study import DEFAULT_CONFIG, cell_config, resolve_study_config

    cfg = resolve_study_config(DEFAULT_CONFIG, [])
    assert cfg["balancers"] == ["excb", "dino-centering", "sinkhorn", "none"]
    assert cfg["batch_sizes"] == [16, 64, 256]
    n = cfg["pretrain"]["data"]["limit_train"]
    seen = {(n // B) * B * cfg["pretrain"]["epochs"] for B in cfg["batch_sizes"]}
    assert len(seen) == 1  # same number of images seen in every cell
    c = cell_config(cfg, "sinkhorn", 64)
    assert c["balancer"]["name"] == "sinkhorn" and c["batch_size"] == 64
    assert cfg["pretrain"]["balancer"]["name"] == "excb"  # the shared recipe is not mutated


def test_config_errors_are_one_line():
    from benchmarks.study import DEFAULT_CONFIG, resolve_study_config

    with pytest.raises(ExcbError, match="unknown balancer 'swav'"):
        resolve_study_config(DEFAULT_CONFIG, ["balancers=[excb,swav]"])
    with pytest.raises(ExcbError, match="batch_sizes"):
        resolve_study_config(DEFAULT_CONFIG, ["batch_sizes=[0]"])
    with pytest.raises(ExcbError, match="unknown key"):
        resolve_study_config(DEFAULT_CONFIG, ["pretrain.epoch=3"])


def test_markdown_table_formats_rows():
    from benchmarks.study import markdown_table

    row = {"balancer": "excb", "batch": 16, "steps": 10, "images_seen": 160, "knn_top1": 61.234,
           "final_used_fraction": 0.98, "final_max_rel_size": 2.5, "last_epoch_cluster_size_max": 3.0, "purity": 0.5}
    md = markdown_table([row, {**row, "balancer": "none", "final_used_fraction": None}], K=8)
    lines = md.splitlines()
    assert lines[0].startswith("| balancer | batch |")
    assert "| excb | 16 | 10 | 160 | 61.2 | 98.0 % | 2.5 | 3.0 | 0.500 |" in md
    assert "| none | 16 |" in md and "– %" in md


def test_tiny_grid_runs_then_skips(tmp_path, monkeypatch):
    from benchmarks import study

    out = tmp_path / "study"
    assert study.main(_args(out, TINY)) == 0
    for name in ("study.md", "study.json", "results.json", "config.yaml", "cluster_sizes.png"):
        assert (out / name).exists(), name
    assert (out / "cluster_sizes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads((out / "study.json").read_text())["rows"]
    assert [(r["balancer"], r["batch"]) for r in rows] == [("excb", 8), ("none", 8), ("excb", 16), ("none", 16)]
    for r in rows:
        assert r["images_seen"] == 32  # same budget: 4 x 8 and 2 x 16 images
        assert 0.0 <= r["knn_top1"] <= 100.0
        assert 0.0 < r["final_used_fraction"] <= 1.0
        assert r["final_max_rel_size"] >= 1.0  # the largest cluster is at least an equal share
        assert r["curve"]["epoch"] == [1]
        assert (out / r["cell"] / "checkpoint.pth").exists()
    assert rows[0]["steps"] == 4 and rows[2]["steps"] == 2
    md = (out / "study.md").read_text()
    assert md.count("\n| ") == 4  # 4 rows (the header is the first line; the separator starts "|-")

    # rerun: every cell is finished, so no pretraining may start
    import excb.train

    def boom(*a, **k):
        raise AssertionError("a finished cell was retrained")

    monkeypatch.setattr(excb.train, "train", boom)
    assert study.main(_args(out, TINY)) == 0
    # a changed recipe key is a different cell content: it must retrain (and hits the stub)
    with pytest.raises(AssertionError, match="retrained"):
        study.main(_args(out, TINY + ["pretrain.optim.lr=0.1"]))
