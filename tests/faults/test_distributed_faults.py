"""Two gloo ranks under torchrun: SIGKILL one rank mid-training; the whole command must end (no
hang) within a bounded time with an error naming the failed rank and signal, the last checkpoint
stays loadable, and rerunning the same command resumes and completes."""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Dict

import pytest
import torch

from faultlib import STEPS_PER_EPOCH, TINY_PRETRAIN, Proc, read_json, reached_step, run, wait_until

BOUND_S = 60


def _children(pid: int) -> list:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _ranks(torchrun_pid: int) -> Dict[int, int]:
    """rank -> pid of the worker processes torchrun started (read from their environment)."""
    ranks = {}
    for c in _children(torchrun_pid):
        try:
            env = Path(f"/proc/{c}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for kv in env:
            if kv.startswith(b"RANK="):
                ranks[int(kv[5:])] = c
    return ranks


def _torchrun_cmd(out: Path, port: int) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(port), "-m", "excb", "-o", str(out), *TINY_PRETRAIN, "dist_timeout_s=120"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_kill_one_rank_ends_quickly_and_rerun_resumes(tmp_path, victim):
    out = tmp_path / "run"
    pr = Proc(_torchrun_cmd(out, _free_port()), tmp_path, tag="dist")
    kill_step = STEPS_PER_EPOCH + 1                   # inside epoch 2, after epoch 1 was saved
    wait_until(reached_step(out, kill_step), pr, 300, f"step {kill_step} under torchrun")
    ranks = _ranks(pr.pid)
    assert set(ranks) == {0, 1}, ranks
    t0 = time.time()
    os.kill(ranks[victim], signal.SIGKILL)
    try:
        rc = pr.p.wait(timeout=BOUND_S)
    except Exception:
        pr.kill_group()
        raise AssertionError(f"torchrun still running {BOUND_S} s after rank {victim} was killed\n{pr.report()}")
    elapsed = time.time() - t0
    print(f"torchrun ended {elapsed:.1f} s after rank {victim} was killed")
    pr._close()
    assert rc != 0 and elapsed < BOUND_S
    err = pr.stderr
    assert "ChildFailedError" in err or "failed" in err.lower(), pr.report()
    assert "SIGKILL" in err or "Signal 9" in err or "exitcode  : -9" in err, pr.report()
    for c in ranks.values():                           # no orphaned rank keeps running
        assert not Path(f"/proc/{c}").exists() or "zombie" in Path(f"/proc/{c}/status").read_text().lower()
    ck = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert ck["epoch"] == 1

    again = run(_torchrun_cmd(out, _free_port()), tmp_path, timeout=400, tag="again")
    assert again.p.returncode == 0, again.report()
    assert "resuming from" in again.stdout and "(epoch 1/2, step 4)" in again.stdout, again.report()
    res = read_json(out / "results.json")
    assert res["status"] == "complete" and res["world_size"] == 2
