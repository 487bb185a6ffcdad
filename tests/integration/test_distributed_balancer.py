"""Balancers under 2 processes (gloo) equal one process on the concatenated batch, on every rank."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tiny_helpers import free_port

K, ROWS, STEPS = 16, 12, 4  # rows per rank per step


def _batches():
    """STEPS batches of 2*ROWS similarity rows, skewed so that balancing has work to do."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(STEPS):
        z = torch.rand(2 * ROWS, K, generator=g) * 0.6 - 0.3
        z[:, :3] += 0.4 * torch.rand(2 * ROWS, 3, generator=g)  # clusters 0-2 popular
        out.append(z.clamp(-1, 1))
    return out


def _run_balancer(name: str, batches, part=None):
    """Feed ``batches`` (or this rank's half of each) to a fresh balancer; return state + outputs."""
    from excb.balancing import create_balancer

    bal = create_balancer(name, K, momentum=0.9, sinkhorn_iters=3)
    probs, assigns, states = [], [], []
    for z in batches:
        if part is not None:
            z = z[part * ROWS:(part + 1) * ROWS]
        p, a = bal.teacher_probs(z, 0.04)
        bal.update(z, a)
        probs.append(p)
        assigns.append(a)
        states.append({k: v.clone() for k, v in bal.state_dict().items()})
    return {"probs": probs, "assign": assigns, "states": states}


def _worker(rank: int, world: int, port: int, out_dir: str, names):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        res = {n: _run_balancer(n, _batches(), part=rank) for n in names}
        torch.save(res, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


NAMES = ["excb", "dino-centering", "sinkhorn"]


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(2, free_port(), str(out), NAMES), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("name", NAMES)
def test_distributed_equals_single_process(two_rank_results, name):
    single = _run_balancer(name, _batches())
    r0, r1 = two_rank_results[0][name], two_rank_results[1][name]
    for step in range(STEPS):
        # the same state on both ranks, equal to the single-process state on the concatenated batch
        for key, val in single["states"][step].items():
            assert torch.equal(r0["states"][step][key], r1["states"][step][key]), (name, key, step)
            torch.testing.assert_close(r0["states"][step][key], val, rtol=1e-5, atol=1e-7)
        # each rank's targets are the single-process targets of its rows
        both = torch.cat([r0["probs"][step], r1["probs"][step]])
        torch.testing.assert_close(both, single["probs"][step], rtol=1e-4, atol=1e-6)
        assert torch.equal(torch.cat([r0["assign"][step], r1["assign"][step]]), single["assign"][step])


def test_excb_s_moves_and_is_identical(two_rank_results):
    s0 = two_rank_results[0]["excb"]["states"][-1]["s"]
    assert torch.equal(s0, two_rank_results[1]["excb"]["states"][-1]["s"])
    assert (s0 - 1.0 / K).abs().max() > 1e-3  # the skewed batches did change s
    assert s0.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_sinkhorn_columns_balanced_across_ranks(two_rank_results):
    p = torch.cat([two_rank_results[r]["sinkhorn"]["probs"][0] for r in range(2)])
    torch.testing.assert_close(p.sum(1), torch.ones(2 * ROWS), rtol=1e-5, atol=1e-5)
    col = p.sum(0) / (2 * ROWS / K)
    assert (col - 1).abs().max() < 0.5


@pytest.mark.slow  # ~20 s CPU, but two ranks + torchrun start-up: ~50 s wall on a busy 2-core machine
def test_two_rank_pretraining_under_torchrun(tmp_path):
    """The DDP path end to end: torchrun, 2 gloo ranks, one epoch; statistics gathered over ranks."""
    import json
    import subprocess
    import sys

    from tiny_helpers import TINY_OVERRIDES
    from excb.config import flatten

    flat = flatten({**TINY_OVERRIDES, "data": {"name": "demo", "limit_train": 128}, "epochs": 1})
    overrides = [f"{k}={json.dumps(v)}" for k, v in flat.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "excb", "-o", str(tmp_path / "run"), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["world_size"] == 2 and res["status"] == "complete"
    ck = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    s = ck["balancer"]["s"]
    assert s.sum().item() == pytest.approx(1.0, abs=1e-5) and not torch.equal(s, torch.full_like(s, 1 / 64))
    # 2 steps x 64 images x 2 global views were counted: train_assign_used > 0 from both ranks' rows
    assert 0 < res["metrics"]["train_assign_used"] <= 1
    assert res["metrics"]["final_pass_max_size"] >= 1
