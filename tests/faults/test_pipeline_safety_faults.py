"""A bad value never costs work: every stage's config is checked before any stage runs, a rejected
command leaves a finished stage's files byte-identical (and leaves nothing that blocks the corrected
command), and a new attempt that fails after moving finished outputs aside gives them back when the
previous inputs are asked for again."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import pytest
import torch
import torchvision

from faultlib import EXCB_BENCH, TINY_PRETRAIN, assert_one_line_error, read_json, run


def _tree(d: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def resnet18_ck(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("ck") / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), p)
    return p


def _eval_pipeline(tmp: Path, ck: Path) -> Path:
    cfg = tmp / "pipe.yaml"
    cfg.write_text(
        "name: t\noutput_dir: run\nseed: 0\ndata: {name: demo, limit_train: 200, limit_val: 100}\n"
        "stages: [knn, linear]\n"
        f"knn: {{checkpoint: {ck}, resize: 36, crop: 32, batch_size: 100, k: [5], headline_k: 5, num_workers: 0}}\n"
        f"linear: {{checkpoint: {ck}, resize: 36, crop: 32, epochs: 1, batch_size: 100, extract_batch_size: 100, "
        "mode: cached-features, num_workers: 0}\n")
    return cfg


def test_bad_stage_value_fails_before_pretraining(tmp_path):
    cfg = tmp_path / "pipe.yaml"
    cfg.write_text("name: t\noutput_dir: run\ndata: {name: demo}\nstages: [pretrain, linear]\n")
    out = tmp_path / "run"
    pr = run([*EXCB_BENCH, "run-all", "--config", str(cfg), "-o", str(out), *(f"pretrain.{o}" for o in TINY_PRETRAIN),
              "linear.epochs=0"], tmp_path, timeout=120, tag="bad")
    assert_one_line_error(pr, "linear", "'epochs'", "> 0", "got 0")
    assert not (out / "pretrain").exists(), "pretraining ran although a later stage's config was invalid"
    assert not (out / "manifest.json").exists()


@pytest.mark.slow   # > ~15 s on 2 cores; CI runs it (.ci/run: pytest -m slow)
def test_rejected_commands_leave_finished_stage_untouched(tmp_path, resnet18_ck):
    cfg = _eval_pipeline(tmp_path, resnet18_ck)
    out = tmp_path / "run"
    base = [*EXCB_BENCH, "run-all", "--config", str(cfg), "-o", str(out)]
    first = run(base, tmp_path, timeout=300, tag="first")
    assert first.p.returncode == 0, first.report()
    before = _tree(out / "linear")
    assert "results.json" in before

    bad = run([*base, "linear.epochs=0"], tmp_path, timeout=120, tag="bad_value")
    assert_one_line_error(bad, "linear", "'epochs'", "got 0")
    assert _tree(out / "linear") == before, "a rejected value changed the finished stage's files"
    assert not (out / "linear.prev").exists()

    # valid values, but the stage fails once it runs (its data folder does not exist)
    missing = tmp_path / "no_such_data"
    failing = run([*base, "linear.data.name=imagefolder", f"linear.data.root={missing}"], tmp_path, timeout=120,
                  tag="failing")
    assert_one_line_error(failing, str(missing))
    again = run(base, tmp_path, timeout=300, tag="again")
    assert again.p.returncode == 0, again.report()
    assert "linear: restored the finished outputs" in again.stdout, again.report()
    assert _tree(out / "linear") == before, "the finished outputs were not given back byte-identical"
    assert read_json(out / "manifest.json")["stages"]["linear"]["status"] == "complete"


def test_rejected_pretrain_values_do_not_block_the_corrected_command(tmp_path):
    cfg = tmp_path / "pipe.yaml"
    cfg.write_text("name: t\noutput_dir: run\ndata: {name: demo}\nstages: [pretrain]\n")
    out = tmp_path / "run"
    base = [*EXCB_BENCH, "run-all", "--config", str(cfg), "-o", str(out),
            *(f"pretrain.{o}" for o in TINY_PRETRAIN if not o.startswith("epochs=")), "pretrain.epochs=1"]
    zero = run([*base, "pretrain.batch_size=0"], tmp_path, timeout=120, tag="zero")
    assert_one_line_error(zero, "pretrain", "'batch_size'", "got 0")
    assert not (out / "pretrain").exists()
    # passes the value checks, fails when the data is read: a batch larger than the 256 images
    big = run([*base, "pretrain.batch_size=512"], tmp_path, timeout=120, tag="big_batch")
    assert_one_line_error(big, "batch_size", "512", "exceeds the training set")
    fixed = run(base, tmp_path, timeout=300, tag="fixed")
    assert fixed.p.returncode == 0, fixed.report()
    assert read_json(out / "pretrain" / "results.json")["status"] == "complete"
