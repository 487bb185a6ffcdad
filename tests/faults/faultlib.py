"""Fault-injection helpers (imported by the tests as ``faultlib``): run ``excb-bench`` / ``python -m excb`` as real processes with a tiny
config, kill them with SIGKILL at chosen moments, and compare what they leave behind.

Every process gets one intra-op thread (``OMP_NUM_THREADS=1``) so two runs of the same command
are bit-identical on CPU, and so the suite shares the 2 cores politely.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

# The tiny pretraining run of the fault suite: 4 steps of 32 images per epoch, ~0.5-1 s a step.
TINY_PRETRAIN: List[str] = [
    "seed=0", "data.name=demo", "data.limit_train=128", "backbone.name=resnet18",
    "head.hidden_dim=128", "head.out_dim=128", "head.predictor_hidden_dim=128", "centroids.K=64",
    "augment.global_size=32", "augment.local_size=16", "augment.n_local=2", "augment.eval_resize=36",
    "augment.eval_crop=32", "optim.warmup_epochs=1", "batch_size=32", "epochs=2", "num_workers=0",
    "log_every=1", "final_pass=false",
]
STEPS_PER_EPOCH = 4


def base_env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", "")})
    env.pop("EXCB_FAULT_SLEEP_IN_SAVE", None)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(extra)
    return env


EXCB_BENCH = [sys.executable, "-m", "excb_bench.cli"]   # the console script's entry point
PYTHON_M_EXCB = [sys.executable, "-m", "excb"]


class Proc:
    """A child process whose stdout/stderr go to files (no pipe can fill up and stall it)."""

    def __init__(self, cmd: Sequence[str], cwd: Path, env: Optional[Dict[str, str]] = None, tag: str = "p"):
        self.cmd = list(cmd)
        self.out_path = Path(cwd) / f".{tag}.stdout"
        self.err_path = Path(cwd) / f".{tag}.stderr"
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        # own session: killing the group also reaches DataLoader workers / torchrun's ranks
        self.p = subprocess.Popen(self.cmd, cwd=str(cwd), env=env or base_env(), stdout=self._out, stderr=self._err,
                                  start_new_session=True)

    @property
    def pid(self) -> int:
        return self.p.pid

    def poll(self) -> Optional[int]:
        return self.p.poll()

    def wait(self, timeout: float) -> int:
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError(f"{self.cmd} did not finish within {timeout} s\n{self.report()}")

    def kill9(self) -> None:
        """SIGKILL the process itself (what an OOM killer or a preempted node does)."""
        if self.p.poll() is None:
            os.kill(self.p.pid, signal.SIGKILL)
        self.p.wait(timeout=30)
        self._close()

    def kill_group(self) -> None:
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self._close()

    def _close(self) -> None:
        for f in (self._out, self._err):
            if not f.closed:
                f.close()

    @property
    def stdout(self) -> str:
        return self.out_path.read_bytes().decode(errors="replace")  # keep \r (progress bars)

    @property
    def stderr(self) -> str:
        return self.err_path.read_bytes().decode(errors="replace")

    def report(self) -> str:
        return f"--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}"


def run(cmd: Sequence[str], cwd: Path, timeout: float = 300, env: Optional[Dict[str, str]] = None,
        tag: str = "run") -> Proc:
    """Run to completion; returns the finished :class:`Proc` (check ``.p.returncode``)."""
    pr = Proc(cmd, cwd, env, tag)
    pr.wait(timeout)
    pr._close()
    return pr


def wait_until(cond: Callable[[], bool], proc: Optional[Proc], timeout: float, what: str, poll: float = 0.02) -> None:
    """Poll ``cond`` until true; fail early if ``proc`` exits first."""
    t0 = time.time()
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc={proc.poll()}) before: {what}\n{proc.report()}")
        if time.time() - t0 > timeout:
            if proc is not None:
                proc.kill_group()
            raise AssertionError(f"timed out after {timeout} s waiting for: {what}"
                                 + (f"\n{proc.report()}" if proc is not None else ""))
        time.sleep(poll)


def step_records(run_dir: Path) -> List[dict]:
    from excb.io import read_jsonl

    return [r for r in read_jsonl(Path(run_dir) / "log.jsonl") if r.get("kind") == "step"]


def reached_step(run_dir: Path, global_step: int) -> Callable[[], bool]:
    """True once the training log shows ``global_step`` (0-based over all epochs) finished."""
    return lambda: any(r.get("step", -1) >= global_step for r in step_records(run_dir))


def visible_lines(text: str) -> List[str]:
    """What a terminal shows: progress bars redraw with '\\r', so keep the text after the last one."""
    out = []
    for line in text.split("\n"):
        line = line.rsplit("\r", 1)[-1].strip()
        if line:
            out.append(line)
    return out


def assert_one_line_error(proc: Proc, *needles: str, prefix: str = "excb-bench: error:") -> str:
    """The process failed with exit code 2 and exactly one visible stderr line naming ``needles``."""
    assert proc.p.returncode == 2, f"rc={proc.p.returncode}\n{proc.report()}"
    err = proc.stderr
    assert "Traceback" not in err, proc.report()
    lines = visible_lines(err)
    assert len(lines) == 1, f"expected ONE stderr line, got {len(lines)}:\n" + "\n".join(lines)
    assert lines[0].startswith(prefix), lines[0]
    for n in needles:
        assert n in lines[0], f"{n!r} not in: {lines[0]}"
    return lines[0]


def load_weights(path: Path) -> Dict[str, Dict[str, torch.Tensor]]:
    ck = torch.load(path, map_location="cpu", weights_only=True)
    return {"epoch": ck["epoch"], "student": ck["student"], "teacher": ck["teacher"], "balancer": ck["balancer"],
            "optimizer": ck["optimizer"]}


def assert_bit_identical(a: Path, b: Path) -> None:
    """Teacher, student, balancer and optimiser state of two checkpoints are equal bit for bit."""
    wa, wb = load_weights(a), load_weights(b)
    assert wa["epoch"] == wb["epoch"]
    for part in ("student", "teacher"):
        assert wa[part].keys() == wb[part].keys(), part
        diff = [k for k in wa[part] if not torch.equal(wa[part][k], wb[part][k])]
        assert not diff, f"{part}: {len(diff)} tensors differ, e.g. {diff[:3]}"
    for k, v in wa["balancer"].items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, wb["balancer"][k]), f"balancer.{k}"
    sa, sb = wa["optimizer"]["state"], wb["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        for kk, v in sa[k].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, sb[k][kk]), f"optimizer.state[{k}].{kk}"


def pretrain_cmd(out: Path, *extra: str, entry: Sequence[str] = EXCB_BENCH) -> List[str]:
    prefix = ["pretrain"] if entry is EXCB_BENCH else []
    return [*entry, *prefix, "-o", str(out), *TINY_PRETRAIN, *extra]


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def read_json(p: Path) -> dict:
    return json.loads(Path(p).read_text())
