"""A pipeline whose pretraining stops on its time budget: the stages that read the checkpoint wait
(they would evaluate a mid-schedule network), and the same command continues pretraining — the
budget is not part of the stage's identity — then runs them."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from excb_bench.pipeline import resolve_pipeline, run_pipeline

PRETRAIN = {
    "data": {"name": "demo", "limit_train": 128},
    "backbone": {"name": "resnet18"},
    "head": {"hidden_dim": 64, "out_dim": 32, "predictor_hidden_dim": 64},
    "centroids": {"K": 32},
    "augment": {"global_size": 32, "local_size": 16, "n_local": 1, "eval_resize": 36, "eval_crop": 32},
    "optim": {"warmup_epochs": 0},
    "batch_size": 64, "epochs": 1.5, "num_workers": 0, "log_every": 1, "final_pass": False,
}


def _pipeline(tmp: Path, pretrain: dict) -> Path:
    cfg = {"name": "t", "output_dir": str(tmp / "run"), "seed": 0, "data": {"name": "demo"},
           "stages": ["pretrain", "knn"], "pretrain": pretrain,
           "knn": {"data": {"name": "demo", "limit_train": 200, "limit_val": 100}, "num_workers": 0}}
    p = tmp / "pipeline.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_time_budget_stop_blocks_evaluation_until_pretraining_is_done(tmp_path, capsys):
    run = tmp_path / "run"
    first = run_pipeline(resolve_pipeline(_pipeline(tmp_path, {**PRETRAIN, "time_budget": "0.001"})), run)
    assert first == {"pretrain": "stopped", "knn": "waiting"}
    assert not (run / "knn" / "results.json").exists()
    assert "rerun the same command to continue" in capsys.readouterr().out
    # the same pipeline without the budget continues the stopped run (no "config changed" refusal)
    second = run_pipeline(resolve_pipeline(_pipeline(tmp_path, PRETRAIN)), run)
    assert second == {"pretrain": "complete", "knn": "complete"}
    res = json.loads((run / "pretrain" / "results.json").read_text())
    assert res["metrics"]["steps_done"] == 3 and res["metrics"]["epochs_done"] == 1.5
    resumes = [json.loads(ln) for ln in (run / "pretrain" / "log.jsonl").read_text().splitlines()
               if '"resume"' in ln]
    assert [r["step"] for r in resumes] == [1]
