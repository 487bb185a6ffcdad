"""Figures: PNGs from synthetic logs / counts / features, and the statistics they annotate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import figures as F
from excb import ExcbError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(p: Path) -> bool:
    return p.is_file() and p.stat().st_size > 2000 and p.read_bytes()[:8] == PNG_MAGIC


def _write_log(path: Path, epochs: int = 5, purity: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"kind": "step", "epoch": 1, "step": 0, "loss": 9.0})]
    for e in range(1, epochs + 1):
        rec = {"kind": "epoch", "epoch": e, "loss": 8.0 / e, "c_avg": 0.1 * e, "cluster_size_min": 0.5 + 0.05 * e,
               "cluster_size_max": 3.0 - 0.2 * e, "agreement": 0.2 + 0.1 * e, "lr": 0.1 / e, "momentum": 0.996 + 0.0005 * e,
               "images_per_s": 100.0 + e}
        if purity:
            rec["purity"] = 0.3 + 0.05 * e
        lines.append(json.dumps(rec))
    lines.append(json.dumps({"kind": "epoch", "epoch": 2, "loss": 123.0}))   # resumed run relogged epoch 2
    path.write_text("\n".join(lines) + '\n{"kind": "epo')                   # torn last line


def test_cluster_size_stats_hand_values():
    counts = np.array([0, 0, 5, 10, 25], dtype=np.int64)       # K=5, N=40 -> rel = c*5/40
    s = F.cluster_size_stats(counts)
    assert s["n_clusters"] == 5 and s["n_samples"] == 40 and s["n_empty"] == 2
    assert s["empty_fraction"] == pytest.approx(0.4)
    assert s["max_relative_size"] == pytest.approx(3.125)
    assert s["min_relative_size"] == 0.0
    assert s["min_relative_size_nonempty"] == pytest.approx(0.625)
    assert s["band_fraction"] == pytest.approx(0.2)              # only 1.25 lies in [0.7, 1.3]
    uniform = F.cluster_size_stats(np.full(8, 3))
    assert (uniform["empty_fraction"], uniform["max_relative_size"], uniform["band_fraction"]) == (0.0, 1.0, 1.0)
    for bad in (np.zeros(4, dtype=np.int64), np.array([], dtype=np.int64), np.array([3, -1])):
        with pytest.raises(ExcbError):
            F.cluster_size_stats(bad)


def test_epoch_records_dedup_and_filter(tmp_path: Path):
    log = tmp_path / "log.jsonl"
    _write_log(log, epochs=4)
    recs = F.load_epoch_records(log)
    assert [r["epoch"] for r in recs] == [1, 2, 3, 4]
    assert recs[1]["loss"] == 123.0                              # last record of an epoch wins
    x, y = F._series(recs, "purity")
    assert len(x) == 0


def test_all_figures_from_synthetic_inputs(tmp_path: Path):
    run = tmp_path / "run"
    _write_log(run / "pretrain" / "log.jsonl", epochs=6, purity=True)
    with open(run / "pretrain" / "log.jsonl", "a") as f:   # the online k-NN monitor's records
        f.write("\n")                                         # after _write_log's torn last line
        for ep, top1 in ((0, 40.0), (3, 45.5), (6, 52.0)):
            f.write(json.dumps({"kind": "monitor", "epoch": ep, "knn_top1": top1, "knn_random_init": 40.0}) + "\n")
    counts = np.zeros(64, dtype=np.int64)
    counts[:48] = np.arange(1, 49)                               # 16 empty clusters of 64
    np.save(run / "pretrain" / "final_cluster_counts.npy", counts)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 30)
    feats = rng.normal(size=(120, 16)) + 4.0 * np.eye(16)[labels]
    res = F.run({"tsne": {"max_samples": 100}}, run / "figures", features=feats, labels=labels,
                class_names=["a", "b", "c", "d"])
    assert res["skipped"] == {}
    names = [Path(p).name for p in res["figures"]]
    assert names == ["training_stats.png", "cluster_sizes.png", "tsne.png", "online_knn.png"]
    assert res["metrics"]["online_knn"] == {"last_top1": 52.0, "random_init": 40.0}
    assert all(_is_png(Path(p)) for p in res["figures"])
    st = res["metrics"]["cluster_sizes"]
    assert st["empty_fraction"] == pytest.approx(16 / 64)
    assert st["max_relative_size"] == pytest.approx(48 * 64 / counts.sum())
    assert res["metrics"]["epochs_logged"] == 6 and res["metrics"]["tsne_samples"] == 100
    on_disk = json.loads((run / "figures" / "results.json").read_text())
    assert on_disk["stage"] == "figures" and on_disk["figures"] == res["figures"]
    assert not list((run / "figures").glob(".*.tmp"))


def test_missing_inputs_are_skipped_with_reasons(tmp_path: Path):
    run = tmp_path / "run"
    (run / "pretrain").mkdir(parents=True)
    (run / "pretrain" / "log.jsonl").write_text(json.dumps({"kind": "step", "epoch": 1}) + "\n")
    res = F.run({}, run / "figures")
    assert res["figures"] == []
    assert "no records with kind 'epoch'" in res["skipped"]["training_stats"]
    assert "final_cluster_counts.npy not found" in res["skipped"]["cluster_sizes"]
    assert "checkpoint.pth not found" in res["skipped"]["tsne"]
    assert "no online k-NN records" in res["skipped"]["online_knn"]
    np.save(run / "pretrain" / "final_cluster_counts.npy", np.zeros(5, dtype=np.int64))
    res = F.run({"figures": ["cluster_sizes"]}, run / "figures")
    assert "all zero" in res["skipped"]["cluster_sizes"] and list(res["skipped"]) == ["cluster_sizes"]
    with pytest.raises(ExcbError, match="unknown figure"):
        F.run({"figures": ["tnse"]}, run / "figures")


def test_training_stats_without_optional_keys(tmp_path: Path):
    recs = [{"kind": "epoch", "epoch": 1, "loss": 2.0}]          # one epoch, most metrics absent
    p = F.plot_training_stats(recs, tmp_path / "ts.png")
    assert _is_png(p)


def test_tsne_subsample_and_validation(tmp_path: Path):
    idx = F.subsample(500, 80, seed=3)
    assert len(idx) == 80 and len(set(idx.tolist())) == 80 and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, F.subsample(500, 80, seed=3))
    assert np.array_equal(F.subsample(50, 80, seed=3), np.arange(50))
    rng = np.random.default_rng(1)
    feats, labels = rng.normal(size=(200, 8)), rng.integers(0, 25, size=200)   # > 20 classes: no legend
    assert _is_png(F.plot_tsne(feats, labels, tmp_path / "t.png", max_samples=60, max_iter=250))
    with pytest.raises(ExcbError, match="labels"):
        F.plot_tsne(feats, labels[:10], tmp_path / "u.png")


def test_tsne_extraction_glue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The checkpoint -> backbone -> features path, with the two helpers it calls faked."""
    import sys
    import types

    import torch

    calls = {}

    def load_backbone(path, format="auto", which="teacher", arch=None):
        calls["load"] = (Path(path).name, format, which)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 8)), 8, {}

    def extract_features(model, dataset, batch_size, num_workers, device):
        calls["extract"] = (len(dataset), batch_size, num_workers, device, tuple(dataset[0][0].shape))
        with torch.no_grad():
            feats = torch.cat([model(dataset[i][0][None]) for i in range(len(dataset))])
        return feats, torch.tensor(dataset.targets)

    monkeypatch.setitem(sys.modules, "excb.checkpoint_formats", types.SimpleNamespace(load_backbone=load_backbone))
    monkeypatch.setitem(sys.modules, "benchmarks.features", types.SimpleNamespace(extract_features=extract_features))
    run = tmp_path / "run"
    (run / "pretrain").mkdir(parents=True)
    (run / "pretrain" / "checkpoint.pth").write_bytes(b"not read by the fake")
    (run / "pretrain" / "results.json").write_text(json.dumps(
        {"protocol": {"data": {"name": "demo", "limit_val": 200}, "augment": {"eval_resize": 28, "eval_crop": 28}}}))
    res = F.run({"figures": ["tsne"], "tsne": {"max_samples": 60, "max_iter": 250, "batch_size": 16}}, run / "figures")
    assert res["skipped"] == {} and _is_png(run / "figures" / "tsne.png")
    assert calls["load"] == ("checkpoint.pth", "auto", "teacher")
    assert calls["extract"] == (60, 16, 0, "cpu", (3, 28, 28))     # capped subset, pretrain's eval size
    assert res["metrics"]["tsne_samples"] == 60
