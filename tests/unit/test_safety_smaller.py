"""Issue 12, item 10: DINO teacher/student files holding only ``backbone.*`` are auto-detected; a legacy
(non-zip) pickle that needs trust is reported as such (not as truncated); a ViT evaluated far below its
training resolution gets a recorded warning; ``semisup --help`` prints "1 %"."""
from __future__ import annotations

import contextlib
import io
import pickle

import pytest
import torch
import torchvision

from excb import ExcbError


def test_dino_teacher_student_with_only_backbone_keys_is_detected(tmp_path):
    from excb.checkpoint_formats import load_backbone

    torch.manual_seed(0)
    t = {f"backbone.{k}": v for k, v in torchvision.models.resnet18().state_dict().items()}
    s = {k: v + 1.0 if v.is_floating_point() else v for k, v in t.items()}
    path = tmp_path / "dino_backbone_only.pth"
    torch.save({"teacher": t, "student": s, "epoch": 100}, path)
    model, dim, info = load_backbone(path)
    assert info["format"] == "dino" and info["which"] == "teacher" and dim == 512
    assert torch.equal(model.state_dict()["conv1.weight"], t["backbone.conv1.weight"])
    student, _, info_s = load_backbone(path, which="student")
    assert info_s["which"] == "student"
    assert torch.equal(student.state_dict()["conv1.weight"], s["backbone.conv1.weight"])


class _Record:
    def __init__(self):
        self.note = "run 7"


def test_legacy_pickle_needing_trust_is_not_called_truncated(tmp_path):
    from excb.checkpoint_formats import read_checkpoint

    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "record": _Record()}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(ExcbError) as e:
        read_checkpoint(path)
    msg = str(e.value)
    assert "legacy (non-zip) pickle" in msg and "_Record" in msg and "--trust-checkpoint" in msg
    assert "truncated" not in msg and "\n" not in msg
    raw = tmp_path / "raw.pkl"   # a plain pickle.dump, protocol 4 (torch's reader calls it "Unsupported operand")
    raw.write_bytes(pickle.dumps({"record": _Record()}, protocol=4))
    with pytest.raises(ExcbError, match=r"legacy \(non-zip\) pickle.*_Record.*--trust-checkpoint"):
        read_checkpoint(raw)


def test_vit_far_below_training_resolution_is_warned(tmp_path):
    from excb.backbones import create_backbone
    from benchmarks.common import load_stage_backbone

    torch.manual_seed(0)
    vit, _ = create_backbone("vit_tiny_patch16_224")
    path = tmp_path / "vit_tiny.pth"
    torch.save(vit.state_dict(), path)
    _, _, rec = load_stage_backbone({"checkpoint": str(path), "format": "auto", "which": "teacher", "arch": None}, 32)
    assert any("trained at 224 px evaluated at crop=32 px" in w for w in rec["warnings"]), rec
    _, _, rec_ok = load_stage_backbone({"checkpoint": str(path), "format": "auto", "which": "teacher", "arch": None}, 224)
    assert "warnings" not in rec_ok


def test_semisup_help_prints_a_single_percent_sign():
    from excb_bench.cli import build_parser

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args(["semisup", "--help"])
    text = out.getvalue()
    assert "1 %" in text and "%%" not in text


def test_figures_rerun_only_when_their_inputs_change(tmp_path):
    from excb_bench.pipeline import input_hash, stage_inputs
    from benchmarks.figures import DEFAULTS

    run = tmp_path / "run"
    (run / "pretrain").mkdir(parents=True)
    (run / "knn").mkdir()
    (run / "pretrain" / "log.jsonl").write_text('{"kind": "epoch", "epoch": 1}\n')
    (run / "knn" / "results.json").write_text('{"metrics": {"top1": 50.0}}\n')
    cfg = {**DEFAULTS, "run": str(run)}
    h0 = input_hash(stage_inputs("figures", cfg, run))
    (run / "knn" / "results.json").write_text('{"metrics": {"top1": 51.0}}\n')   # not drawn by any figure
    (run / "linear").mkdir()
    (run / "linear" / "results.json").write_text("{}\n")
    assert input_hash(stage_inputs("figures", cfg, run)) == h0
    (run / "pretrain" / "log.jsonl").write_text('{"kind": "epoch", "epoch": 1}\n{"kind": "epoch", "epoch": 2}\n')
    assert input_hash(stage_inputs("figures", cfg, run)) != h0
