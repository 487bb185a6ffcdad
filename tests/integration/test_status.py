"""excb-bench status on a running, a finished and a failed run (and one whose process died)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from excb import ExcbError
from excb.io import read_jsonl
from excb_bench.pipeline import resolve_pipeline, run_pipeline
from excb_bench.status import collect, main as status_main, render

TINY_PRETRAIN = {
    "data": {"name": "demo", "limit_train": 128},
    "backbone": {"name": "resnet18"},
    "head": {"hidden_dim": 64, "out_dim": 32, "predictor_hidden_dim": 64},
    "centroids": {"K": 32},
    "augment": {"global_size": 32, "local_size": 16, "n_local": 1, "eval_resize": 36, "eval_crop": 32},
    "optim": {"warmup_epochs": 0},
    "batch_size": 64, "epochs": 1, "num_workers": 0, "log_every": 1, "final_pass": False,
}


def _pipeline(tmp: Path, stages, **pretrain) -> Path:
    cfg = {"name": "tiny", "output_dir": str(tmp / "run"), "seed": 0, "stages": stages,
           "pretrain": {**TINY_PRETRAIN, **pretrain}}
    p = tmp / "pipeline.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _row(st, stage):
    return next(r for r in st["stages"] if r["stage"] == stage)


def test_status_of_a_finished_run(tmp_path):
    run = tmp_path / "run"
    run_pipeline(resolve_pipeline(_pipeline(tmp_path, ["pretrain", "leaderboard"])), run)
    st = collect(run)
    assert st["lock"] is None
    pre = _row(st, "pretrain")
    assert pre["state"] == "complete" and pre["epoch"] == 1 and pre["epochs"] == 1
    assert pre["images_per_s"] > 0 and pre["eta_s"] is None
    assert set(pre["metrics"]) >= {"loss", "train_assign_used"}
    assert _row(st, "leaderboard")["state"] == "complete"
    out = io.StringIO()
    assert status_main(str(run), stream=out) == 0
    text = out.getvalue()
    assert "pretrain" in text and "epoch 1/1" in text and "loss=" in text and "no process holds" in text


def test_status_of_a_failed_run_shows_its_error_line(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ExcbError, match="non-finite loss"):
        run_pipeline(resolve_pipeline(_pipeline(tmp_path, ["pretrain", "leaderboard"], **{"debug": {"inject_nan_at_step": 1}})), run)
    st = collect(run)
    pre = _row(st, "pretrain")
    assert pre["state"] == "failed"
    assert pre["error"].startswith("non-finite loss") and "\n" not in pre["error"]
    assert _row(st, "leaderboard")["state"] == "pending"
    assert "pretrain: non-finite loss" in render(st)


def test_status_of_a_running_run_then_of_its_killed_process(tmp_path):
    path = _pipeline(tmp_path, ["pretrain"], epochs=60)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "excb_bench.cli", "run-all", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            epochs = [r for r in read_jsonl(run / "pretrain" / "log.jsonl") if r.get("kind") == "epoch"] \
                if (run / "pretrain" / "log.jsonl").exists() else []
            if len(epochs) >= 2:
                break
            assert proc.poll() is None, "the run ended early"
            time.sleep(0.5)
        st = collect(run)
        assert st["lock"] and f"pid {proc.pid}" in st["lock"]
        pre = _row(st, "pretrain")
        assert pre["state"] == "running" and pre["epochs"] == 60 and 2 <= pre["epoch"] < 60
        assert pre["images_per_s"] > 0
        assert 0 < pre["eta_s"] < 60 * 3600
        assert "running" in render(st)
    finally:
        proc.kill()
        proc.wait()
    st = collect(run)
    pre = _row(st, "pretrain")
    assert st["lock"] is None and pre["state"] == "interrupted"
    assert pre["eta_s"] is None


def test_status_of_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(ExcbError, match="not found"):
        collect(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExcbError, match="names any stage"):
        collect(tmp_path / "empty")
