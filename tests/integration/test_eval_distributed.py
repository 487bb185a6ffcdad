"""The classification stages under `torchrun --nproc_per_node 2` (gloo on CPU): k-NN gives the
single-process numbers exactly; linear and semi-supervised runs complete with world_size 2."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from excb.config import resolve_config

REPO = Path(__file__).resolve().parents[2]
TINY = ["data.limit_train=90", "data.limit_val=25", "resize=18", "crop=16", "num_workers=0", "progress=false"]
SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from excb.config import resolve_config
import importlib
mod = importlib.import_module("benchmarks." + sys.argv[1])
res = mod.run(resolve_config(mod.DEFAULTS, None, sys.argv[3:]), sys.argv[2])
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp: Path, stage: str, out: Path, overrides) -> dict:
    script = tmp / "stage_main.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), stage, str(out)] + list(overrides)
    p = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_stages_under_torchrun(tmp_path):
    import benchmarks.knn as K

    knn_over = TINY + ["backbone.name=resnet18", "k=[5,20,200]", "cache=true"]
    dist = _torchrun(tmp_path, "knn", tmp_path / "knn2", knn_over)
    single = K.run(resolve_config(K.DEFAULTS, None, knn_over), tmp_path / "knn1")
    assert dist["world_size"] == 2 and single["world_size"] == 1
    assert dist["metrics"] == single["metrics"]
    assert dist["data"] == single["data"]

    lin = _torchrun(tmp_path, "linear", tmp_path / "lin", TINY + ["backbone.name=resnet18", "epochs=2", "batch_size=32",
                                                                  "lrs=[0.01,0.1]", "holdout_fraction=0.2"])
    assert lin["world_size"] == 2 and lin["metrics"]["epochs_done"] == 2 and 0 <= lin["metrics"]["top1"] <= 100
    semi = _torchrun(tmp_path, "semisup", tmp_path / "semi", TINY + ["backbone.name=resnet18", "epochs=2",
                                                                     "batch_size=8", "percent=10"])
    assert semi["world_size"] == 2 and semi["stage"] == "semisup_10" and semi["metrics"]["n_labelled"] == 10
