"""Pretraining survives SIGKILL (mid-epoch and inside the checkpoint write), damaged checkpoints
and a NaN loss; the rerun of the same command ends bit-identical to an uninterrupted run."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from faultlib import (EXCB_BENCH, PYTHON_M_EXCB, STEPS_PER_EPOCH, Proc, assert_bit_identical, assert_one_line_error,
                       base_env, copy_run, pretrain_cmd, reached_step, read_json, run, step_records, wait_until)


def _finish(out: Path, cwd: Path, tag: str, entry=EXCB_BENCH) -> Proc:
    pr = run(pretrain_cmd(out, entry=entry), cwd, timeout=300, tag=tag)
    assert pr.p.returncode == 0, pr.report()
    return pr


@pytest.mark.parametrize("entry", ["excb-bench", pytest.param("python -m excb", marks=pytest.mark.slow)])
def test_kill9_mid_epoch2_then_rerun_is_bit_identical(tmp_path, reference_pretrain, entry):
    entry_cmd = EXCB_BENCH if entry == "excb-bench" else PYTHON_M_EXCB
    out = tmp_path / "run"
    # a reproducible "random" step of epoch 2 (global steps 4..7), different per entry point
    step = STEPS_PER_EPOCH + random.Random(entry).randrange(STEPS_PER_EPOCH - 1)
    pr = Proc(pretrain_cmd(out, entry=entry_cmd), tmp_path, tag="killed")
    wait_until(reached_step(out, step), pr, 240, f"training step {step}")
    pr.kill9()
    assert pr.p.returncode == -9
    assert not (out / "results.json").exists(), "a killed run must not look finished"
    ck = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert ck["epoch"] == 1

    again = _finish(out, tmp_path, "rerun", entry_cmd)
    assert "resuming from" in again.stdout and "epoch 1/2" in again.stdout, again.report()
    assert_bit_identical(reference_pretrain / "checkpoint.pth", out / "checkpoint.pth")
    assert read_json(out / "results.json")["status"] == "complete"


def test_kill9_inside_checkpoint_write_keeps_previous_loadable(tmp_path, reference_pretrain):
    """SIGKILL while checkpoint.pth's replacement is written (held there by the io test hook)."""
    out = tmp_path / "run"
    env = base_env(EXCB_FAULT_SLEEP_IN_SAVE="60:checkpoint.pth.next:2")
    pr = Proc(pretrain_cmd(out), tmp_path, env=env, tag="killed")
    # the epoch-2 save: epoch 1 is already checkpoint.pth, its successor sits complete in a temporary
    wait_until(lambda: (out / "checkpoint.pth").exists() and any(out.glob(".checkpoint.pth.next.*.tmp")),
               pr, 240, "the epoch-2 checkpoint write")
    pr.kill9()
    tmps = list(out.glob(".checkpoint*.tmp"))
    assert tmps, "the kill should have hit inside the write"
    assert torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)["epoch"] == 1
    assert not (out / "checkpoint.pth.next").exists()

    again = _finish(out, tmp_path, "rerun")
    assert "resuming from" in again.stdout, again.report()
    assert "orphaned temporary" in again.stdout, "the orphaned temporary must be cleaned up"
    assert not list(out.glob(".checkpoint*.tmp"))
    assert_bit_identical(reference_pretrain / "checkpoint.pth", out / "checkpoint.pth")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_latest_checkpoint_falls_back_to_previous(tmp_path, reference_pretrain, damage):
    out = copy_run(reference_pretrain, tmp_path / "run")
    (out / "results.json").unlink()
    latest = out / "checkpoint.pth"
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 3] if damage == "truncated" else b"\x00garbage" * 1000)

    again = _finish(out, tmp_path, "rerun")
    text = again.stdout
    assert f"skipping {latest}" in text and "truncated or corrupt" in text, again.report()
    assert "using checkpoint_prev.pth (epoch 1)" in text, again.report()
    assert "resuming from" in text and "checkpoint_prev.pth" in text
    assert (out / "checkpoint.pth.corrupt").exists(), "the damaged file is kept aside, not rotated over prev"
    assert torch.load(out / "checkpoint_prev.pth", map_location="cpu", weights_only=True)["epoch"] == 1
    assert_bit_identical(reference_pretrain / "checkpoint.pth", out / "checkpoint.pth")


def test_kill_between_the_two_renames_resumes_from_next(tmp_path, reference_pretrain):
    """State after a kill between 'latest -> prev' and '.next -> latest': only .next and prev exist."""
    out = copy_run(reference_pretrain, tmp_path / "run")
    (out / "results.json").unlink()
    (out / "checkpoint.pth").rename(out / "checkpoint.pth.next")   # epoch 2, complete but unrenamed
    again = _finish(out, tmp_path, "rerun")
    assert "resuming from" in again.stdout and "completed the interrupted save" in again.stdout, again.report()
    assert_bit_identical(reference_pretrain / "checkpoint.pth", out / "checkpoint.pth")


def test_checkpoint_of_another_config_is_not_overwritten(tmp_path, reference_pretrain):
    out = copy_run(reference_pretrain, tmp_path / "run")
    before = (out / "checkpoint.pth").read_bytes()
    pr = run(pretrain_cmd(out, "centroids.K=32"), tmp_path, timeout=120, tag="other")
    assert_one_line_error(pr, str(out / "checkpoint.pth"), "another backbone/K", "another output directory")
    assert (out / "checkpoint.pth").read_bytes() == before


@pytest.mark.slow   # > ~15 s on 2 cores; CI runs it (.ci/run: pytest -m slow)
def test_nan_stops_run_keeps_checkpoint_and_rerun_completes(tmp_path, reference_pretrain):
    out = tmp_path / "run"
    nan_step = STEPS_PER_EPOCH + 1   # second step of epoch 2
    pr = run(pretrain_cmd(out, f"debug.inject_nan_at_step={nan_step}"), tmp_path, timeout=240, tag="nan")
    line = assert_one_line_error(pr, "non-finite loss", "epoch 2", "step 2", "rerun")
    assert "last checkpoint is intact" in line
    ck = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["teacher"].values() if v.is_floating_point())
    assert not (out / "results.json").exists()
    assert max(r["step"] for r in step_records(out)) == nan_step - 1, "no step after the NaN is logged"

    _finish(out, tmp_path, "rerun")
    assert_bit_identical(reference_pretrain / "checkpoint.pth", out / "checkpoint.pth")
