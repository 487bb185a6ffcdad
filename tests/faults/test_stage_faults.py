"""Downstream stages survive SIGKILL: k-NN (killed while its feature cache is written), linear probe
(killed mid-epoch) and semi-supervised fine-tuning (killed inside its per-epoch state write).
Rerunning the same command resumes and ends with exactly the metrics of an uninterrupted run."""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import List

import pytest

from faultlib import EXCB_BENCH, Proc, base_env, read_json, run, wait_until

COMMON = ["data.name=demo", "data.limit_val=200", "resize=36", "crop=32", "num_workers=0"]
STAGES = {
    "knn": (["knn"], ["data.limit_train=1000", "batch_size=100", "k=[5,20]"]),
    "linear": (["linear"], ["data.limit_train=512", "epochs=3", "batch_size=128", "lrs=[0.03,0.3]",
                            "holdout_fraction=0.1", "extract_batch_size=128", "rrc_scale=[0.35,1.0]"]),
    "semisup": (["semisup", "--percent", "10"], ["data.limit_train=600", "epochs=3", "batch_size=20",
                                                "extract_batch_size=100", "rrc_scale=[0.35,1.0]"]),
}


def _cmd(stage: str, ck: Path, out: Path) -> List[str]:
    sub, extra = STAGES[stage]
    return [*EXCB_BENCH, *sub, "--checkpoint", str(ck), "-o", str(out), *COMMON, *extra]


def _reference(stage: str, ck: Path, tmp: Path) -> dict:
    out = tmp / f"{stage}_reference"
    pr = run(_cmd(stage, ck, out), tmp, timeout=300, tag=f"{stage}_ref")
    assert pr.p.returncode == 0, pr.report()
    return read_json(out / "results.json")


def _rerun_and_compare(stage: str, ck: Path, out: Path, tmp: Path, ref: dict) -> Proc:
    again = run(_cmd(stage, ck, out), tmp, timeout=300, tag=f"{stage}_again")
    assert again.p.returncode == 0, again.report()
    res = read_json(out / "results.json")
    assert res["metrics"] == ref["metrics"], (res["metrics"], ref["metrics"])
    assert res["checkpoint"]["sha256"] == ref["checkpoint"]["sha256"]
    assert not list(out.rglob(".*.tmp")), "no orphaned temporaries"
    return again


def test_knn_killed_while_caching_features(tmp_path, reference_pretrain):
    ck = reference_pretrain / "checkpoint.pth"
    ref = _reference("knn", ck, tmp_path)
    out = tmp_path / "knn"
    # park inside the 2nd feature-cache write (val features: train's are already cached), kill there
    pr = Proc(_cmd("knn", ck, out), tmp_path, env=base_env(EXCB_FAULT_SLEEP_IN_SAVE="60:.pt:2"), tag="knn_killed")
    wait_until(lambda: len(list((out / "features").glob("*.pt"))) == 1 and any((out / "features").glob(".*.tmp")),
               pr, 240, "the val feature cache write")
    pr.kill9()
    assert not (out / "results.json").exists()
    again = _rerun_and_compare("knn", ck, out, tmp_path, ref)
    assert "features reused" in again.stdout, again.report()


@pytest.mark.slow   # > ~15 s on 2 cores; CI runs it (.ci/run: pytest -m slow)
def test_linear_probe_killed_mid_epoch(tmp_path, reference_pretrain):
    ck = reference_pretrain / "checkpoint.pth"
    ref = _reference("linear", ck, tmp_path)
    out = tmp_path / "linear"
    pr = Proc(_cmd("linear", ck, out), tmp_path, tag="linear_killed")
    wait_until(lambda: (out / "state.pth").exists(), pr, 240, "the epoch-1 state of the linear probe")
    time.sleep(random.Random(7).uniform(0.0, 1.0))     # somewhere in epoch 2
    pr.kill9()
    assert not (out / "results.json").exists()
    again = _rerun_and_compare("linear", ck, out, tmp_path, ref)
    assert "resuming after epoch" in again.stdout, again.report()


@pytest.mark.slow   # > ~15 s on 2 cores; CI runs it (.ci/run: pytest -m slow)
def test_semisup_killed_inside_state_write(tmp_path, reference_pretrain):
    ck = reference_pretrain / "checkpoint.pth"
    ref = _reference("semisup", ck, tmp_path)
    out = tmp_path / "semisup"
    pr = Proc(_cmd("semisup", ck, out), tmp_path, env=base_env(EXCB_FAULT_SLEEP_IN_SAVE="60:state.pth:2"),
              tag="semisup_killed")
    wait_until(lambda: (out / "state.pth").exists() and any(out.glob(".state.pth.*.tmp")), pr, 300,
               "the epoch-2 state write of semisup")
    pr.kill9()
    again = _rerun_and_compare("semisup", ck, out, tmp_path, ref)
    assert "resuming" in again.stdout, again.report()
    assert (out / "subset_ids.txt").read_text() == (tmp_path / "semisup_reference" / "subset_ids.txt").read_text()
