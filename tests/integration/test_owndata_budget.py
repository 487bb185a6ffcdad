"""Budgets on real (tiny) runs: a run stopped inside an epoch — by the time budget, by
stop_after_step, or by SIGKILL after a save_every_steps checkpoint — and then resumed ends with
exactly the weights, optimizer state, balancer state and epoch statistics of an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tiny_helpers import make_tiny_config
from excb.io import read_json, read_jsonl
from excb.train import train

# 128 images at batch 32: 4 steps per epoch; 1.5 epochs = 6 steps
BASE = {"data.limit_train": 128, "batch_size": 32, "epochs": 1.5, "final_pass": False}
TIMING = ("images_per_s", "epoch_s")


def _ck(run: Path):
    return torch.load(run / "checkpoint.pth", map_location="cpu", weights_only=True)


def _equal(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), (where, set(a) ^ set(b))
        for k in a:
            _equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _same_run(ref: Path, other: Path):
    ca, cb = _ck(ref), _ck(other)
    assert (ca["epoch"], ca["step"]) == (cb["epoch"], cb["step"])
    for key in ("student", "teacher", "optimizer", "balancer"):
        _equal(ca[key], cb[key], key)
    strip = lambda h: [{k: v for k, v in r.items() if k not in TIMING} for r in h]  # noqa: E731
    _equal(strip(ca["history"]), strip(cb["history"]), "history")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("budget") / "ref"
    res = train(make_tiny_config(**BASE), run)
    return run, res


def test_fractional_epochs_run_the_right_number_of_steps(reference):
    run, res = reference
    assert res["status"] == "complete"
    assert res["metrics"]["steps_done"] == 6 and res["metrics"]["epochs_done"] == 1.5
    ck = _ck(run)
    assert ck["step"] == 6 and ck["epoch"] == 1 and ck["steps_per_epoch"] == 4
    epochs = [r for r in read_jsonl(run / "log.jsonl") if r.get("kind") == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2] and epochs[1]["epoch_fraction"] == 0.5
    assert len([r for r in read_jsonl(run / "log.jsonl") if r.get("kind") == "step"]) == 6


def test_time_budget_then_mid_epoch_stops_resume_exactly(reference, tmp_path, capsys):
    ref, _ = reference
    run = tmp_path / "run"
    # a budget shorter than one step: the run still makes one step (progress is guaranteed), saves, stops
    res = train(make_tiny_config(**BASE, time_budget="0.001"), run)
    assert res["status"] == "stopped" and res["stop_reason"] == "time_budget" and res["metrics"]["steps_done"] == 1
    ck = _ck(run)
    assert ck["step"] == 1 and ck["epoch"] == 0 and ck["epoch_stats"]["sums"][3] == 1   # one step's statistics
    assert read_json(run / "results.json")["status"] == "stopped"
    # continue to step 5 (inside the second epoch, after one epoch-end checkpoint), then to the end
    res = train(make_tiny_config(**BASE, stop_after_step=5), run)
    assert res["status"] == "stopped" and res["metrics"]["steps_done"] == 5 and _ck(run)["step"] == 5
    res = train(make_tiny_config(**BASE), run)
    assert res["status"] == "complete" and res["metrics"]["steps_done"] == 6
    _same_run(ref, run)
    # the epoch statistics logged after the mid-epoch resumes equal the uninterrupted run's
    ea = [r for r in read_jsonl(ref / "log.jsonl") if r.get("kind") == "epoch"]
    eb = [r for r in read_jsonl(run / "log.jsonl") if r.get("kind") == "epoch"]
    for a, b in zip(ea, eb):
        assert {k: v for k, v in a.items() if k not in TIMING + ("time",)} == \
            {k: v for k, v in b.items() if k not in TIMING + ("time",)}
    resumes = [r for r in read_jsonl(run / "log.jsonl") if r.get("kind") == "resume"]
    assert [r["step"] for r in resumes] == [1, 5]


def test_save_every_steps_writes_mid_epoch_checkpoints(tmp_path):
    run = tmp_path / "run"
    train(make_tiny_config(**BASE, save_every_steps=3, stop_after_step=3), run)
    ck = _ck(run)
    assert ck["step"] == 3 and "epoch_stats" in ck and ck["epoch_stats"]["counts"].sum() == 3 * 32 * 2
    saves = [r for r in read_jsonl(run / "log.jsonl") if r.get("kind") == "checkpoint"]
    assert [(r["step"], r["reason"]) for r in saves] == [(3, "stop_after_step")]


def test_max_steps_ends_complete_with_final_pass_and_k_warning(tmp_path, capsys):
    """max_steps caps a 3-epoch recipe at 5 steps; the run is complete (annealed schedules, final
    pass). K = 200 > 128 images is a warning with the consequence, not a refusal."""
    run = tmp_path / "run"
    res = train(make_tiny_config(**{**BASE, "final_pass": True, "epochs": 3, "max_steps": 5, "centroids.K": 200}), run)
    assert res["status"] == "complete" and res["metrics"]["steps_done"] == 5 and res["metrics"]["epochs_done"] == 1.25
    assert (run / "final_cluster_counts.npy").exists()
    out = capsys.readouterr().out
    assert "warning: centroids.K (200) is larger than the training set (128 images)" in out
    assert "at least 72 clusters (36 %) empty" in out
    warn = [r for r in read_jsonl(run / "log.jsonl") if r.get("kind") == "warning"]
    assert len(warn) == 1 and warn[0]["key"] == "centroids.K"
    # the final pass can populate at most 128 of the 200 clusters
    import numpy as np

    counts = np.load(run / "final_cluster_counts.npy")
    assert counts.sum() == 128 and (counts > 0).sum() <= 128
    # the lr of the last step is the end of the 5-step cosine, not of a 12-step one:
    # warm-up 1 epoch = 4 steps, then one cosine step t=0 at the peak 0.3 * 32 / 256 = 0.0375
    last = [r for r in read_jsonl(run / "log.jsonl") if r.get("kind") == "step"][-1]
    assert last["step"] == 4 and last["lr"] == pytest.approx(0.0375)


TINY_CLI = ["seed=0", "data.name=demo", "data.limit_train=128", "backbone.name=resnet18", "head.hidden_dim=128",
            "head.out_dim=128", "head.predictor_hidden_dim=128", "centroids.K=64", "augment.global_size=32",
            "augment.local_size=16", "augment.n_local=2", "augment.eval_resize=36", "augment.eval_crop=32",
            "augment.global_scale=[0.35,1.0]", "augment.local_scale=[0.1,0.35]", "optim.lr=0.3",
            "optim.warmup_epochs=1", "batch_size=32", "epochs=1.5", "num_workers=0", "log_every=1",
            "final_pass=false"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    repo = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.slow
def test_sigkill_after_a_step_checkpoint_resumes_exactly(reference, tmp_path):
    """SIGKILL in the second epoch after save_every_steps=1 checkpoints; the rerun ends equal to the
    uninterrupted run (which used the same config in-process, one thread)."""
    ref, _ = reference
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "excb_bench.cli", "pretrain", "-o", str(out), *TINY_CLI, "save_every_steps=1"]
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and p.poll() is None:
            if (out / "checkpoint.pth").exists():
                try:
                    if _ck(out)["step"] >= 5:
                        break
                except Exception:  # noqa: BLE001 - a rename in progress
                    pass
            time.sleep(0.05)
        assert p.poll() is None, "the run ended before it could be killed"
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    step_at_kill = _ck(out)["step"]
    assert 5 <= step_at_kill < 6, step_at_kill
    r = subprocess.run(cmd[:-1], env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"step {step_at_kill}" in r.stdout
    _same_run(ref, out)


def _torchrun(out: Path, extra) -> subprocess.CompletedProcess:
    import json

    from tiny_helpers import TINY_OVERRIDES, free_port
    from excb.config import flatten

    flat = flatten({**TINY_OVERRIDES, "data": {"name": "demo", "limit_train": 128}, "batch_size": 32,
                    "epochs": 1.5, "final_pass": False})
    overrides = [f"{k}={json.dumps(v)}" for k, v in flat.items()] + list(extra)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "excb", "-o", str(out), *overrides]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.slow  # three 2-rank torchrun launches: ~2-3 min wall on a busy 2-core machine
def test_two_ranks_stop_together_on_the_time_budget_and_resume_exactly(tmp_path):
    """Under DDP each rank reads its own clock; the stop is agreed (no rank left waiting in a
    collective), the mid-epoch checkpoint holds both ranks' statistics, and the resumed run equals
    an uninterrupted 2-rank run."""
    import json

    _torchrun(tmp_path / "ref", [])
    _torchrun(tmp_path / "run", ["time_budget=0.001"])
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["status"] == "stopped" and res["stop_reason"] == "time_budget" and res["metrics"]["steps_done"] == 1
    ck = _ck(tmp_path / "run")
    # 1 step x 2 ranks x 16 images x 2 global views, all in rank 0's saved counts
    assert ck["step"] == 1 and ck["epoch_stats"]["counts"].sum() == 64 and len(ck["epoch_stats"]["assign1"]) == 32
    _torchrun(tmp_path / "run", [])
    _same_run(tmp_path / "ref", tmp_path / "run")
