"""Config mistakes through the real command line: each is exit code 2 and ONE stderr line naming
the key and the value (and, for files, the path), before any work is done."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from faultlib import EXCB_BENCH, TINY_PRETRAIN, Proc, assert_one_line_error

PRETRAIN_CASES = {
    # name: (extra overrides, strings the error line must contain)
    "unknown_key": (["optim.lrr=0.1"], ["optim.lrr", "did you mean 'optim.lr'"]),
    "unknown_section": (["optimizer.lr=0.1"], ["optimizer"]),
    "wrong_type": (["batch_size=sixty-four"], ["batch_size", "must be int", "'sixty-four'"]),
    "wrong_type_section": (["optim=0.1"], ["optim", "section"]),
    "negative_batch": (["batch_size=-64"], ["batch_size", "-64", "> 0"]),
    "zero_epochs": (["epochs=0"], ["epochs", "0"]),
    # K larger than the data is a warning since issue 15 (tests/integration/test_owndata_budget.py)
    "batch_larger_than_data": (["batch_size=512"], ["batch_size", "512", "128 images"]),
    "data_root_missing": (["data.name=imagefolder", "data.root=/nonexistent/imagenet"],
                          ["/nonexistent/imagenet/train", "data.root"]),
    "unknown_dataset": (["data.name=imagenett"], ["data.name", "imagenett"]),
}


def _start_pretrain(tmp_path: Path, tag: str, extra) -> Proc:
    d = tmp_path / tag
    d.mkdir()
    return Proc([*EXCB_BENCH, "pretrain", "-o", str(d / "out"), *TINY_PRETRAIN, *extra], d, tag=tag)


@pytest.mark.slow   # > ~15 s on 2 cores; CI runs it (.ci/run: pytest -m slow)
def test_pretrain_config_errors_are_one_line(tmp_path):
    """All cases at once (each a process that stops before training): ~1 process-start each."""
    procs = {name: _start_pretrain(tmp_path, name, extra) for name, (extra, _) in PRETRAIN_CASES.items()}
    failures = []
    for name, pr in procs.items():
        pr.wait(180)
        pr._close()
        try:
            assert_one_line_error(pr, *PRETRAIN_CASES[name][1])
            assert not (tmp_path / name / "out" / "checkpoint.pth").exists()
        except AssertionError as e:
            failures.append(f"[{name}] {e}")
    assert not failures, "\n\n".join(failures)


def test_missing_config_file_and_missing_checkpoint(tmp_path):
    cases = {
        "config": ([*EXCB_BENCH, "pretrain", "--config", str(tmp_path / "nope.yaml")], ["nope.yaml", "not found"]),
        "pipeline": ([*EXCB_BENCH, "run-all", "--config", str(tmp_path / "nope.yaml")], ["nope.yaml", "not found"]),
        "eval": ([*EXCB_BENCH, "eval", "--checkpoint", str(tmp_path / "missing.pth"), "-o", str(tmp_path / "ev")],
                 ["missing.pth", "not found"]),
    }
    procs = {k: Proc(cmd, tmp_path, tag=k) for k, (cmd, _) in cases.items()}
    for k, pr in procs.items():
        pr.wait(120)
        pr._close()
        assert_one_line_error(pr, *cases[k][1])


def test_pipeline_yaml_mistakes_name_file_section_key_and_value(tmp_path):
    good = {"name": "t", "output_dir": str(tmp_path / "run"), "stages": ["pretrain"],
            "pretrain": {"epochs": 1, "batch_size": 64, "data": {"limit_train": 128}}}
    cases = {
        "unknown_stage_key": ({**good, "pretrain": {**good["pretrain"], "epochz": 3}}, ["bad.yaml", "epochz", "epochs"]),
        "wrong_type": ({**good, "pretrain": {**good["pretrain"], "batch_size": [64]}}, ["bad.yaml", "batch_size", "[64]"]),
        "unknown_stage": ({**good, "stages": ["pretrain", "knnn"]}, ["knnn", "did you mean 'knn'"]),
        "unknown_top_key": ({**good, "outptu_dir": "x"}, ["bad.yaml", "outptu_dir", "output_dir"]),
    }
    procs = {}
    for k, (cfg, _) in cases.items():
        d = tmp_path / k
        d.mkdir()
        (d / "bad.yaml").write_text(yaml.safe_dump(cfg))
        procs[k] = Proc([*EXCB_BENCH, "run-all", "--config", str(d / "bad.yaml")], d, tag=k)
    for k, pr in procs.items():
        pr.wait(120)
        pr._close()
        assert_one_line_error(pr, *cases[k][1])
    assert not (tmp_path / "run" / "pretrain").exists()


def test_override_for_a_stage_not_in_the_pipeline(tmp_path):
    cfg = {"name": "t", "output_dir": str(tmp_path / "run"), "stages": ["pretrain"]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    pr = Proc([*EXCB_BENCH, "run-all", "--config", str(tmp_path / "p.yaml"), "linear.epochs=3"], tmp_path, tag="ov")
    pr.wait(120)
    pr._close()
    assert_one_line_error(pr, "linear", "not in this pipeline")
