"""Pretraining end to end on the demo data: outputs, bit-identical resume, NaN stop, collapse."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tiny_helpers import make_tiny_config
from excb import ExcbError
from excb.io import read_json, read_jsonl, sha256_file
from excb.train import train

def test_epoch_statistics_by_hand():
    """SPEC section 5 on a hand-made epoch: c_avg (Eq. 11), sizes, agreement (Eq. 12), purity."""
    from excb.train import EpochStats, cluster_purity

    K = 4
    st = EpochStats(K, G=2, device=torch.device("cpu"))
    # step 1: 4 samples, two global views (rows: view 0 then view 1)
    p1 = torch.tensor([[0.7, 0.1, 0.1, 0.1]] * 4 + [[0.4, 0.3, 0.2, 0.1]] * 4)
    a1 = torch.tensor([0, 1, 2, 3, 0, 1, 3, 3])
    st.add(torch.tensor(2.0), p1, a1, torch.tensor([0, 0, 1, 1]))
    # step 2
    p2 = torch.full((8, K), 0.25)
    a2 = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1])
    st.add(torch.tensor(4.0), p2, a2, torch.tensor([1, 1, 1, 1]))
    out = st.summary()
    assert out["loss"] == pytest.approx(3.0)
    assert out["c_avg"] == pytest.approx(((0.7 + 0.4) / 2 + 0.25) / 2)
    # agreement: step 1 3/4 of samples agree, step 2 3/4 -> 0.75
    assert out["agreement"] == pytest.approx(0.75)
    # counts over the epoch: cluster 0: 2+7, 1: 2+1, 2: 1, 3: 3 -> 16 rows; relative = count·K/16
    assert out["train_assign_size_max"] == pytest.approx(9 * 4 / 16)
    assert out["train_assign_size_min"] == pytest.approx(1 * 4 / 16)
    assert out["train_assign_used"] == 1.0
    # purity on view 0: clusters {0: labels 0,1,1,1,1 -> 4}, {1: 0 -> 1}, {2: 1}, {3: 1} -> 7/8
    assert out["purity"] == pytest.approx(7 / 8)
    rng = torch.Generator().manual_seed(0)
    a = torch.randint(0, 50, (500,), generator=rng).numpy()
    y = torch.randint(0, 7, (500,), generator=rng).numpy()
    brute = sum(max(int(((a == k) & (y == c)).sum()) for c in range(7)) for k in range(50)) / 500
    assert cluster_purity(a, y) == pytest.approx(brute)


# 128 images at batch 64: two steps per epoch keeps three short runs within seconds
FAST = {"data.limit_train": 128, "final_pass": False}


def _ck(run: Path, name: str = "checkpoint.pth"):
    return torch.load(run / name, map_location="cpu", weights_only=True)


def _assert_state_equal(a, b, where=""):
    """Recursive bit-equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            _assert_state_equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_state_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _assert_same_training_state(ca, cb):
    assert ca["epoch"] == cb["epoch"]
    for key in ("student", "teacher", "balancer", "optimizer"):
        _assert_state_equal(ca[key], cb[key], key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A: 2 epochs straight. B: stopped after epoch 1, then the same command again."""
    root = tmp_path_factory.mktemp("pretrain")
    a, b = root / "a", root / "b"
    res_a = train(make_tiny_config(**FAST), a)
    res_b1 = train(make_tiny_config(stop_after_epoch=1, **FAST), b)
    shutil.copy(b / "checkpoint.pth", root / "b_epoch1.pth")
    res_b2 = train(make_tiny_config(**FAST), b)
    return {"root": root, "a": a, "b": b, "res_a": res_a, "res_b1": res_b1, "res_b2": res_b2}


def test_outputs_and_epoch_stats(runs):
    a = runs["a"]
    res = read_json(a / "results.json")
    assert res == runs["res_a"] or res["stage"] == "pretrain"
    for key in ("stage", "metrics", "protocol", "data", "checkpoint", "seed", "world_size", "wall_s", "versions"):
        assert key in res, key
    assert res["status"] == "complete" and res["metrics"]["epochs_done"] == 2 and res["world_size"] == 1
    assert res["data"]["n_train"] == 128
    ck = _ck(a)
    assert ck["format"] == "excb-bench" and ck["version"] == 1 and ck["epoch"] == 2
    assert ck["backbone"]["name"] == "resnet18"
    assert "centroids.weight" in ck["teacher"] and any(k.startswith("backbone.layer1") for k in ck["teacher"])
    assert any(k.startswith("predictor.") for k in ck["student"]) and not any(k.startswith("predictor.") for k in ck["teacher"])
    assert ck["balancer"]["s"].shape == (64,)
    epochs = [r for r in read_jsonl(a / "log.jsonl") if r.get("kind") == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    for r in epochs:
        for key in ("loss", "c_avg", "agreement", "train_assign_size_min", "train_assign_size_max", "train_assign_used",
                    "purity", "lr", "momentum", "images_per_s", "s_estimate_min", "s_estimate_max"):
            assert key in r, key
        assert 0 < r["c_avg"] <= 1 and 0 <= r["agreement"] <= 1 and 0 < r["purity"] <= 1
        assert r["train_assign_size_min"] <= 1 <= r["train_assign_size_max"]
    steps = [r for r in read_jsonl(a / "log.jsonl") if r.get("kind") == "step"]
    assert len(steps) == 4 and all(r["loss"] > 0 for r in steps)


def test_resume_is_bit_identical(runs):
    assert runs["res_b1"]["status"] == "stopped" and runs["res_b1"]["metrics"]["epochs_done"] == 1
    assert _ck(runs["root"], "b_epoch1.pth")["epoch"] == 1
    assert runs["res_b2"]["status"] == "complete"
    ca, cb = _ck(runs["a"]), _ck(runs["b"])
    _assert_same_training_state(ca, cb)
    # and training did move the weights: the check above would catch a resume that restarted
    c1 = _ck(runs["root"], "b_epoch1.pth")
    assert not torch.equal(ca["teacher"]["centroids.weight"], c1["teacher"]["centroids.weight"])
    assert not torch.equal(ca["balancer"]["s"], c1["balancer"]["s"])
    # the per-epoch statistics of the resumed run match too
    ha = [r for r in read_jsonl(runs["a"] / "log.jsonl") if r.get("kind") == "epoch"]
    hb = [r for r in read_jsonl(runs["b"] / "log.jsonl") if r.get("kind") == "epoch"]
    assert [r["loss"] for r in ha] == [r["loss"] for r in hb]


def test_worker_count_does_not_change_training(runs, tmp_path):
    """Augmentations are seeded per item: 2 loader workers give the same weights as 0."""
    train(make_tiny_config(num_workers=2, stop_after_epoch=1, **FAST), tmp_path)
    _assert_same_training_state(_ck(runs["root"], "b_epoch1.pth"), _ck(tmp_path))


def test_nan_stops_with_error_and_keeps_checkpoint(runs, tmp_path):
    shutil.copy(runs["root"] / "b_epoch1.pth", tmp_path / "checkpoint.pth")
    digest = sha256_file(tmp_path / "checkpoint.pth")
    with pytest.raises(ExcbError) as e:
        train(make_tiny_config(**{"debug.inject_nan_at_step": 3}, **FAST), tmp_path)  # epoch 2, step 2
    msg = str(e.value)
    assert "non-finite loss" in msg and "epoch 2" in msg and "\n" not in msg
    assert sha256_file(tmp_path / "checkpoint.pth") == digest
    assert not (tmp_path / "results.json").exists()
    # the same command without the fault resumes from epoch 1 and ends where the clean run ends
    res = train(make_tiny_config(**FAST), tmp_path)
    assert res["status"] == "complete"
    _assert_same_training_state(_ck(runs["a"]), _ck(tmp_path))


def test_nan_in_first_epoch_writes_no_checkpoint(tmp_path):
    with pytest.raises(ExcbError, match="non-finite"):
        train(make_tiny_config(**{"debug.inject_nan_at_step": 0}, **FAST), tmp_path)
    assert not (tmp_path / "checkpoint.pth").exists()


# ----------------------------------------------------------------------------- collapse vs balancing
# Short-run settings that make the dynamics visible in 18 steps: a fast teacher EMA (0.9 -> 0.99)
# so the teacher follows the student, and for ExCB a fast size estimate (m_s = 0.9) so s tracks
# the sizes within the run. Observed (K=64, 384 images, 3 epochs, seeds 0/1): without balancing
# the last epoch has max relative size 22.6 / 40.0 with 16 % / 8 % of clusters used; with ExCB
# max 4.4 and 89 % used.
COLLAPSE = {"data.limit_train": 384, "epochs": 3, "augment.n_local": 0, "ema.momentum": 0.9,
            "ema.momentum_end": 0.99, "final_pass": False}


def _last_epoch(run: Path) -> dict:
    return [r for r in read_jsonl(run / "log.jsonl") if r.get("kind") == "epoch"][-1]


def test_without_balancing_the_teacher_collapses(tmp_path):
    train(make_tiny_config(**{"balancer.name": "none"}, **COLLAPSE), tmp_path)
    last = _last_epoch(tmp_path)
    assert last["train_assign_size_max"] >= 12, last     # one cluster holds >= 12x its share
    assert last["train_assign_used"] <= 0.4, last       # most of the 64 clusters are empty


def test_excb_keeps_clusters_balanced(tmp_path):
    train(make_tiny_config(**{"balancer.name": "excb", "balancer.momentum": 0.9}, **COLLAPSE), tmp_path)
    first = [r for r in read_jsonl(tmp_path / "log.jsonl") if r.get("kind") == "epoch"][0]
    last = _last_epoch(tmp_path)
    assert last["train_assign_size_max"] <= 8, last
    assert last["train_assign_used"] >= 0.75, last
    assert first["s_estimate_max"] > 1.05  # s did adapt (the balancing was active, not a lucky init)
