"""`excb-bench export`: the exported file loads strictly into the library's own model and gives
the same features as load_backbone; the key mapping names the source keys; failures write nothing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from excb import ExcbError
from excb.checkpoint_formats import load_backbone
from excb.export import export_backbone
from excb.model import build_models


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and BN running statistics, so a dropped or swapped tensor changes features."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.dtype.is_floating_point:
                t.copy_(torch.randn(t.shape, generator=g) * 0.05 + (1.0 if name.endswith(("running_var", "bn1.weight")) else 0.0))
                if name.endswith("running_var"):
                    t.abs_().add_(0.5)
    return model


def _excb_checkpoint(path: Path, backbone: dict, K: int = 16) -> Path:
    """A checkpoint in the layout excb.train writes, with different teacher and student weights."""
    student, teacher = build_models(backbone, {"hidden_dim": 32, "out_dim": 16, "predictor_hidden_dim": 32}, K)
    _randomise(student, 1)
    _randomise(teacher, 2)
    torch.save({"format": "excb-bench", "version": 1, "epoch": 1, "config": {"backbone": backbone},
                "backbone": {"name": backbone["name"], "kwargs": {k: v for k, v in backbone.items() if k != "name"}},
                "student": student.state_dict(), "teacher": teacher.state_dict()}, path)
    return path


def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_torchvision_export_loads_strictly_and_matches(tmp_path, which):
    ck = _excb_checkpoint(tmp_path / "ck.pth", {"name": "resnet18", "stem": "standard"})
    out = tmp_path / "exp" / "r18.pth"
    rec = export_backbone(ck, out, to="torchvision", which=which)
    sd = torch.load(out, map_location="cpu", weights_only=True)
    tv = torchvision.models.resnet18()               # the library's own constructor, default 1000 classes
    tv.load_state_dict(sd, strict=True)
    assert torch.count_nonzero(sd["fc.weight"]) == 0 and sd["fc.weight"].shape == (1000, 512)
    tv.fc = nn.Identity()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ref, dim, _ = load_backbone(ck, which=which)
    assert dim == 512
    assert torch.allclose(_features(tv, x), _features(ref, x), atol=1e-6, rtol=0)
    # the other network gives other features: the export really took `which`
    other, _, _ = load_backbone(ck, which="student" if which == "teacher" else "teacher")
    assert not torch.allclose(_features(tv, x), _features(other, x), atol=1e-3)
    meta = json.loads((tmp_path / "exp" / "r18.json").read_text())
    assert meta == json.loads(json.dumps(rec))
    assert meta["target"] == "torchvision" and meta["arch"] == "resnet18" and meta["source"]["which"] == which
    assert meta["key_map"]["conv1.weight"] == f"{which}.backbone.conv1.weight"
    assert meta["key_map"]["layer4.1.bn2.running_var"] == f"{which}.backbone.layer4.1.bn2.running_var"
    assert "fc.weight" not in meta["key_map"] and meta["classifier"]["num_classes"] == 1000
    assert set(meta["key_map"]) == set(sd) - {"fc.weight", "fc.bias"}
    assert meta["build"] == "model = torchvision.models.resnet18()"
    # no temporaries left beside the outputs
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["r18.json", "r18.pth"]


def test_timm_resnet_small_stem_follows_the_build_line(tmp_path):
    timm = pytest.importorskip("timm")
    ck = _excb_checkpoint(tmp_path / "ck.pth", {"name": "resnet18", "stem": "small"})
    out = tmp_path / "r18_small.pth"
    rec = export_backbone(ck, out, to="timm")
    sd = torch.load(out, map_location="cpu", weights_only=True)
    assert "fc.weight" not in sd and sd["conv1.weight"].shape == (64, 3, 3, 3)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.load_state_dict(sd, strict=True)
    # the JSON's build line does the same (executed as a user would paste it)
    env = {"timm": timm, "torch": torch}
    exec(rec["build"], env)
    env["model"].load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ref, _, _ = load_backbone(ck)
    assert torch.allclose(_features(model, x), _features(ref, x), atol=1e-6, rtol=0)
    assert torch.allclose(_features(env["model"], x), _features(ref, x), atol=1e-6, rtol=0)


def test_timm_vit_export(tmp_path):
    timm = pytest.importorskip("timm")
    bb = {"name": "vit_tiny_patch16_224", "img_size": 32, "drop_path_rate": 0.0}
    ck = _excb_checkpoint(tmp_path / "ck.pth", bb)
    out = tmp_path / "vit.pth"
    rec = export_backbone(ck, out, to="timm")
    sd = torch.load(out, map_location="cpu", weights_only=True)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32)
    model.load_state_dict(sd, strict=True)
    assert "img_size=32" in rec["build"]
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    ref, _, _ = load_backbone(ck)
    assert torch.allclose(_features(model, x), _features(ref, x), atol=1e-5, rtol=0)
    # torchvision has no ViT-S/Ti with these names: refused, nothing written
    with pytest.raises(ExcbError, match="use --to timm"):
        export_backbone(ck, tmp_path / "tv.pth", to="torchvision")
    assert not (tmp_path / "tv.pth").exists() and not (tmp_path / "tv.json").exists()


def test_bad_arguments_are_one_line_errors(tmp_path):
    ck = _excb_checkpoint(tmp_path / "ck.pth", {"name": "resnet18", "stem": "standard"})
    with pytest.raises(ExcbError, match="must not end in .json"):
        export_backbone(ck, tmp_path / "x.json")
    with pytest.raises(ExcbError, match="unknown target 'onnx'"):
        export_backbone(ck, tmp_path / "x.pth", to="onnx")
    with pytest.raises(ExcbError, match="checkpoint not found"):
        export_backbone(tmp_path / "missing.pth", tmp_path / "x.pth")
    assert not any(p.name.startswith("x") or p.name.startswith(".x") for p in tmp_path.iterdir())


def test_cli_export(tmp_path):
    ck = _excb_checkpoint(tmp_path / "ck.pth", {"name": "resnet18", "stem": "standard"})
    out = tmp_path / "cli.pth"
    r = subprocess.run([sys.executable, "-m", "excb_bench.cli", "export", "--checkpoint", str(ck), "--to",
                        "torchvision", "--which", "student", "--num-classes", "0", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    sd = torch.load(out, map_location="cpu", weights_only=True)
    tv = torchvision.models.resnet18()
    tv.fc = nn.Identity()
    tv.load_state_dict(sd, strict=True)
    assert json.loads((tmp_path / "cli.json").read_text())["source"]["which"] == "student"
    r = subprocess.run([sys.executable, "-m", "excb_bench.cli", "export", "--checkpoint", str(tmp_path / "nope.pth"),
                        "--to", "timm", "--out", str(tmp_path / "n.pth")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "checkpoint not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1
