"""The pipeline: run-all runs every stage, a rerun skips them, one changed key reruns one stage."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from excb import ExcbError
from excb_bench.pipeline import RunLock, resolve_pipeline, run_pipeline
from excb_bench.stages import STAGES

TINY_PRETRAIN = {
    "data": {"name": "demo", "limit_train": 192},
    "backbone": {"name": "resnet18"},
    "head": {"hidden_dim": 64, "out_dim": 32, "predictor_hidden_dim": 64},
    "centroids": {"K": 32},
    "augment": {"global_size": 32, "local_size": 16, "n_local": 1, "eval_resize": 36, "eval_crop": 32},
    "optim": {"warmup_epochs": 0},
    "batch_size": 64, "epochs": 1, "num_workers": 0, "log_every": 1,
}


def _available(stage: str) -> bool:
    try:
        STAGES[stage].load()
        return True
    except ImportError:
        return False


def _write_pipeline(tmp: Path, stages, extra=None) -> Path:
    cfg = {"name": "tiny", "output_dir": str(tmp / "run"), "seed": 0, "data": {"name": "demo"},
           "stages": stages, "pretrain": TINY_PRETRAIN,
           "figures": {"tsne": {"max_samples": 60, "max_iter": 250, "perplexity": 5.0}}}
    cfg.update(extra or {})
    p = tmp / "pipeline.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_run_all_then_skip_then_rerun_one_stage(tmp_path, capsys):
    stages = ["pretrain", "leaderboard", "figures"]
    path = _write_pipeline(tmp_path, stages)
    cfg = resolve_pipeline(path)
    run = tmp_path / "run"
    first = run_pipeline(cfg, run)
    assert first == {s: "complete" for s in stages}
    for s in stages:
        assert (run / s / "results.json").exists(), s
    assert (run / "leaderboard" / "leaderboard.md").exists()
    assert (run / "figures" / "training_stats.png").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert set(manifest["stages"]) == set(stages)
    assert all(e["status"] == "complete" and e["input_hash"] for e in manifest["stages"].values())
    mtime = (run / "pretrain" / "checkpoint.pth").stat().st_mtime_ns

    second = run_pipeline(resolve_pipeline(path), run)
    assert second == {s: "up-to-date" for s in stages}
    assert (run / "pretrain" / "checkpoint.pth").stat().st_mtime_ns == mtime

    # one figures key changes: only figures reruns
    third = run_pipeline(resolve_pipeline(path, ["figures.dpi=60"]), run)
    assert third == {"pretrain": "up-to-date", "leaderboard": "up-to-date", "figures": "complete"}
    assert (run / "figures.prev" / "results.json").exists()

    # --force reruns what is asked even when up to date
    fourth = run_pipeline(resolve_pipeline(path, ["figures.dpi=60"]), run, only=["leaderboard"], force=["leaderboard"])
    assert fourth == {"leaderboard": "complete"}


def test_changed_pretrain_config_is_refused_without_force(tmp_path):
    path = _write_pipeline(tmp_path, ["pretrain"])
    run = tmp_path / "run"
    run_pipeline(resolve_pipeline(path), run)
    with pytest.raises(ExcbError, match="--force pretrain"):
        run_pipeline(resolve_pipeline(path, ["pretrain.optim.lr=0.5"]), run)


@pytest.mark.skipif(not _available("knn"), reason="benchmarks.knn not available")
def test_downstream_reruns_when_checkpoint_changes(tmp_path):
    path = _write_pipeline(tmp_path, ["pretrain", "knn"], {"knn": {"config": "configs/eval/demo_knn.yaml"}})
    run = tmp_path / "run"
    assert run_pipeline(resolve_pipeline(path, ["knn.data.limit_train=200", "knn.data.limit_val=50"]), run) == \
        {"pretrain": "complete", "knn": "complete"}
    # a new pretraining (forced) changes the checkpoint's sha256: knn must rerun
    out = run_pipeline(resolve_pipeline(path, ["knn.data.limit_train=200", "knn.data.limit_val=50"]), run,
                       force=["pretrain"])
    assert out == {"pretrain": "complete", "knn": "complete"}


def test_second_process_is_refused(tmp_path):
    path = _write_pipeline(tmp_path, ["leaderboard"])
    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(ExcbError, match="in use"):
            run_pipeline(resolve_pipeline(path), run)
    # released: now it runs
    assert run_pipeline(resolve_pipeline(path), run) == {"leaderboard": "complete"}


def test_unknown_keys_are_one_line_errors_with_suggestion(tmp_path):
    path = _write_pipeline(tmp_path, ["pretrain"])
    with pytest.raises(ExcbError, match="did you mean 'pretrain'|unknown key"):
        resolve_pipeline(path, ["pretrian.epochs=3"])
    with pytest.raises(ExcbError, match="unknown key 'pretrain.epoch'; did you mean 'pretrain.epochs'"):
        resolve_pipeline(path, ["pretrain.epoch=3"])
    with pytest.raises(ExcbError, match="must be int"):
        resolve_pipeline(path, ["pretrain.epochs=many"])
    with pytest.raises(ExcbError, match="unknown stage 'knnn'.*did you mean 'knn'"):
        resolve_pipeline(path, ["stages=[knnn]"])
