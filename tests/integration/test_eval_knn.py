"""k-NN stage end to end on the embedded demo data: results.json contract, sanity rows, cache reuse,
and a checkpoint in our own excb-bench layout."""
from __future__ import annotations

import json

import pytest
import torch

import benchmarks.knn as K
from excb.config import resolve_config

TINY = ["data.limit_train=150", "data.limit_val=30", "resize=18", "crop=16", "num_workers=0", "progress=false",
        "batch_size=64"]


def test_pixels_row_contract(tmp_path):
    cfg = resolve_config(K.DEFAULTS, None, TINY + ["backbone.name=pixels"])
    res = K.run(cfg, tmp_path / "knn")
    on_disk = json.loads((tmp_path / "knn" / "results.json").read_text())
    assert on_disk["metrics"] == res["metrics"]
    for key in ("stage", "metrics", "protocol", "data", "checkpoint", "seed", "world_size", "wall_s", "versions"):
        assert key in res, key
    m = res["metrics"]
    assert m["top1"] == m["top1_k20"] and m["top5"] == m["top5_k20"]
    assert {"top1_k10", "top1_k100", "top1_k200"} <= set(m)
    assert m["k_effective"]["200"] == 150   # clamped to the bank (fewer train samples than k)
    assert m["top1"] > 30.0                 # raw pixels of Fashion-MNIST are far above chance (10 %)
    assert res["data"] == {"name": "demo", "n_train": 150, "n_val": 30}
    assert res["checkpoint"]["format"] == "pixels" and res["protocol"]["temperature"] == 0.07
    assert not (tmp_path / "knn" / "features").exists()   # raw pixels are not cached


def test_random_init_row_is_seeded_and_cached(tmp_path, capsys):
    cfg = resolve_config(K.DEFAULTS, None, TINY + ["backbone.name=resnet18", "k=[5,20]"])
    a = K.run(cfg, tmp_path / "a")
    b = K.run(resolve_config(K.DEFAULTS, None, TINY + ["backbone.name=resnet18", "k=[5,20]", "cache=false"]),
              tmp_path / "b")
    assert a["metrics"] == b["metrics"] and a["checkpoint"]["format"] == "random-init"
    # rerun: features come from the cache, numbers identical
    capsys.readouterr()
    again = K.run(cfg, tmp_path / "a")
    assert "features reused" in capsys.readouterr().out
    assert again["metrics"] == a["metrics"]
    # another seed is another random network: the cache is not reused
    K.run(resolve_config(K.DEFAULTS, None, TINY + ["backbone.name=resnet18", "k=[5,20]", "seed=1"]), tmp_path / "a")
    assert "features reused" not in capsys.readouterr().out
    assert len(list((tmp_path / "a" / "features").glob("*.pt"))) == 4


def test_excb_checkpoint_layout(tmp_path):
    pytest.importorskip("excb.checkpoint_formats")
    from excb.backbones import create_backbone

    torch.manual_seed(3)
    net, _ = create_backbone("resnet18")
    sd = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    ck = {"format": "excb-bench", "version": 1, "epoch": 1, "config": {},
          "backbone": {"name": "resnet18", "kwargs": {"stem": "standard"}}, "student": sd, "teacher": sd}
    path = tmp_path / "checkpoint.pth"
    torch.save(ck, path)
    cfg = resolve_config(K.DEFAULTS, None, TINY + [f"checkpoint={path}", "cache=false"])
    res = K.run(cfg, tmp_path / "knn")
    assert len(res["checkpoint"]["sha256"]) == 64 and res["checkpoint"]["path"] == str(path)
    # the same weights as a random-init module evaluated directly
    feats_ck = res["metrics"]["top1"]
    cfg2 = resolve_config(K.DEFAULTS, None, TINY + ["backbone.name=resnet18", "seed=3", "cache=false"])
    assert K.run(cfg2, tmp_path / "knn2")["metrics"]["top1"] == feats_ck
