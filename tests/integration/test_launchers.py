"""--launcher slurm through submitit's LocalExecutor (real subprocess jobs, real signals and requeue),
and the sbatch script the SLURM executor would submit."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from excb.checkpoint import load_checkpoint_file

submitit = pytest.importorskip("submitit")

TINY_PRETRAIN = {
    "backbone": {"name": "resnet18"},
    "head": {"hidden_dim": 64, "out_dim": 32, "predictor_hidden_dim": 64},
    "centroids": {"K": 32},
    "augment": {"global_size": 32, "local_size": 16, "n_local": 1, "eval_resize": 36, "eval_crop": 32},
    "optim": {"warmup_epochs": 0},
    "batch_size": 64, "epochs": 2, "num_workers": 0, "log_every": 1,
}
REPO = Path(__file__).resolve().parents[2]


def _pipeline(tmp: Path, stages, pretrain=None) -> Path:
    cfg = {"name": "tiny", "output_dir": str(tmp / "run"), "seed": 0,
           "data": {"name": "demo", "limit_train": 192, "limit_val": 100}, "stages": stages,
           "pretrain": {**TINY_PRETRAIN, **(pretrain or {})},
           "knn": {"config": str(REPO / "configs/eval/demo_knn.yaml"), "k": [20], "progress": False}}
    p = tmp / "pipeline.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _run_all(path: Path, *extra: str, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "excb_bench.cli", "run-all", "--config", str(path), "--launcher", "slurm",
           "slurm.executor=local", "slurm.poll_s=0.3", "slurm.gpus_per_node=0", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_two_stage_pipeline_as_jobs(tmp_path):
    path = _pipeline(tmp_path, ["pretrain", "knn"])
    p = _run_all(path, "slurm.time=10")
    assert p.returncode == 0, p.stderr[-2000:]
    run = tmp_path / "run"
    m = json.loads((run / "manifest.json").read_text())["stages"]
    assert m["pretrain"]["status"] == m["knn"]["status"] == "complete"
    ids = {m[s]["job"]["id"] for s in ("pretrain", "knn")}
    assert len(ids) == 2                                    # one job per stage
    for s in ("pretrain", "knn"):
        job = m[s]["job"]
        assert job["launcher"] == "slurm" and job["executor"] == "local" and job["nodes"]
        assert Path(job["stdout"]).is_file() and Path(job["stderr"]).is_file()
        assert job["attempts"] == 1
    # knn was submitted once pretraining had finished: its job started after the checkpoint was written
    knn_started = json.loads((run / "knn" / "job.json").read_text())["time"]
    assert knn_started > (run / "pretrain" / "checkpoint.pth").stat().st_mtime
    knn = json.loads((run / "knn" / "results.json").read_text())
    assert knn["checkpoint"]["path"].endswith("pretrain/checkpoint.pth") and 0 <= knn["metrics"]["top1"] <= 100
    # a rerun finds everything up to date and submits nothing
    p2 = _run_all(path, "slurm.time=10")
    assert p2.returncode == 0 and "submitted job" not in p2.stdout and p2.stdout.count("up to date") == 2


@pytest.mark.slow
def test_time_limit_requeues_and_resumes_to_the_uninterrupted_result(tmp_path):
    from excb.config import resolve_config
    from excb.train import PRETRAIN_DEFAULTS, train
    from excb_bench.pipeline import resolve_pipeline

    path = _pipeline(tmp_path, ["pretrain"], {"epochs": 4})
    # a 30 s limit whose warning signal comes 22 s early: every attempt is cut after ~8 s and requeued
    p = _run_all(path, "slurm.time=0.5", "slurm.signal_delay_s=22", "slurm.max_requeue=20")
    assert p.returncode == 0, p.stderr[-2000:]
    run = tmp_path / "run"
    job = json.loads((run / "pretrain" / "job.json").read_text())
    assert job["requeues"] >= 1 and job["attempts"] == job["requeues"] + 1
    resumes = [json.loads(ln) for ln in (run / "pretrain" / "log.jsonl").read_text().splitlines()
               if '"resume"' in ln]
    assert resumes, "the requeued job did not resume from a checkpoint"
    manifest = json.loads((run / "manifest.json").read_text())["stages"]["pretrain"]
    assert manifest["status"] == "complete" and manifest["job"]["requeues"] == job["requeues"]

    # the same stage config, trained without interruption in this process
    scfg = resolve_pipeline(path)["pretrain"]
    torch.set_num_threads(1)
    train(resolve_config(PRETRAIN_DEFAULTS, base=scfg), tmp_path / "straight")
    a = load_checkpoint_file(run / "pretrain" / "checkpoint.pth")
    b = load_checkpoint_file(tmp_path / "straight" / "checkpoint.pth")
    assert a["epoch"] == b["epoch"] == 4
    for k, v in b["teacher"].items():
        assert torch.equal(a["teacher"][k], v), k
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def test_sbatch_script_carries_the_slurm_settings(tmp_path, monkeypatch):
    from excb_bench.launchers import SLURM_DEFAULTS, SlurmLauncher

    fake = tmp_path / "bin"               # submitit only checks that srun exists; nothing is submitted
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")

    cfg = {**SLURM_DEFAULTS, "partition": "gpu", "nodes": 2, "gpus_per_node": 8, "cpus_per_task": 10,
           "time": "2-00:00:00", "mem": "320G", "account": "proj42", "qos": "high", "constraint": "a100",
           "stage_resources": {"linear": {"gpus_per_node": 1, "time": 90}}}
    launcher = SlurmLauncher(cfg, tmp_path)
    text = launcher._executor("pretrain", launcher.resources("pretrain"))._make_submission_file_text("CMD", "uid")
    for flag in ("--partition=gpu", "--nodes=2", "--gpus-per-node=8", "--ntasks-per-node=8", "--cpus-per-task=10",
                 "--time=2880", "--mem=320G", "--account=proj42", "--qos=high", "--constraint=a100",
                 "--signal=USR2@120", "--job-name=excb-pretrain"):
        assert f"#SBATCH {flag}" in text, flag
    lin = launcher._executor("linear", launcher.resources("linear"))._make_submission_file_text("CMD", "uid")
    assert "#SBATCH --nodes=1" in lin and "#SBATCH --gpus-per-node=1" in lin and "#SBATCH --time=90" in lin
    assert "#SBATCH --ntasks-per-node=1" in lin


def test_slurm_settings_errors_are_one_line(tmp_path, monkeypatch):
    from excb import ExcbError
    from excb_bench.launchers import SLURM_DEFAULTS, SlurmLauncher, parse_minutes

    assert parse_minutes("1-02:03:00") == 1 * 1440 + 2 * 60 + 3
    assert parse_minutes("02:30:00") == 150 and parse_minutes("45:30") == 45.5 and parse_minutes(90) == 90
    with pytest.raises(ExcbError, match="slurm.time"):
        parse_minutes("two hours")
    with pytest.raises(ExcbError, match="stage_resources.knn.gpu"):
        SlurmLauncher({**SLURM_DEFAULTS, "stage_resources": {"knn": {"gpu": 1}}}, tmp_path)
    with pytest.raises(ExcbError, match="slurm.executor"):
        SlurmLauncher({**SLURM_DEFAULTS, "executor": "pbs"}, tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))    # no srun here
    launcher = SlurmLauncher(dict(SLURM_DEFAULTS), tmp_path)
    with pytest.raises(ExcbError, match="srun not found"):
        launcher._executor("knn", launcher.resources("knn"))


@pytest.mark.slow
def test_failed_job_is_reported_with_its_error_line(tmp_path):
    from excb_bench.status import collect

    path = _pipeline(tmp_path, ["pretrain", "knn"], {"debug": {"inject_nan_at_step": 1}})
    p = _run_all(path, "slurm.time=10")
    assert p.returncode == 2 and "non-finite loss" in p.stderr
    st = {r["stage"]: r for r in collect(tmp_path / "run")["stages"]}
    assert st["pretrain"]["state"] == "failed" and st["pretrain"]["job_id"]
    assert "non-finite loss" in st["pretrain"]["error"] and "\n" not in st["pretrain"]["error"]
    assert st["knn"]["state"] == "pending"           # never submitted: its input failed
