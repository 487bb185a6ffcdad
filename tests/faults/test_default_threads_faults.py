"""Resume with the default number of threads: the rest of the suite forces OMP_NUM_THREADS=1, so
this runs pretraining with the process's own thread count (no OMP/MKL variables) and checks that
stopping after epoch 1 and rerunning ends bit-identical to an uninterrupted run."""
from __future__ import annotations


import torch

from faultlib import assert_bit_identical, base_env, pretrain_cmd, run


def _default_thread_env() -> dict:
    env = base_env()
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.pop(k, None)
    return env


def test_resume_with_default_threads_is_bit_identical(tmp_path):
    env = _default_thread_env()
    assert "OMP_NUM_THREADS" not in env
    ref = tmp_path / "ref"
    pr = run(pretrain_cmd(ref), tmp_path, env=env, timeout=300, tag="ref")
    assert pr.p.returncode == 0, pr.report()
    out = tmp_path / "resumed"
    first = run(pretrain_cmd(out, "stop_after_epoch=1"), tmp_path, env=env, timeout=300, tag="first")
    assert first.p.returncode == 0, first.report()
    assert torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)["epoch"] == 1
    again = run(pretrain_cmd(out, "stop_after_epoch=1"), tmp_path, env=env, timeout=300, tag="again")
    assert again.p.returncode == 0 and "resuming from" in again.stdout, again.report()
    assert_bit_identical(ref / "checkpoint.pth", out / "checkpoint.pth")
