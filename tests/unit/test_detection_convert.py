"""torchvision ResNet -> Detectron2 names: every tensor, checked name by name against an
independent enumeration of Detectron2's R50 layout (SPEC section 9)."""
from __future__ import annotations

import pickle
from typing import Dict, Tuple

import numpy as np
import pytest
import torch

from excb import ExcbError
from excb.backbones import create_backbone
from detection.convert import (convert_to_detectron2, detectron2_name, load_detectron2_pickle, require_complete,
                               save_detectron2_pickle)

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def expected_d2_r50() -> Dict[str, Tuple[int, ...]]:
    """Detectron2's R50 tensor names and shapes, written from the architecture (not from the
    converter's rules): stem 7x7/64; stages res2..res5 with 3, 4, 6, 3 bottlenecks of width
    64 * 2^i and output 4x the width; the first block of each stage has a projection shortcut."""
    out: Dict[str, Tuple[int, ...]] = {}

    def norm(prefix: str, c: int) -> None:
        for s in BN:
            out[f"{prefix}.norm.{s}"] = () if s == "num_batches_tracked" else (c,)

    out["stem.conv1.weight"] = (64, 3, 7, 7)
    norm("stem.conv1", 64)
    in_c = 64
    for i, n in enumerate((3, 4, 6, 3)):
        w = 64 * 2 ** i
        o = 4 * w
        for b in range(n):
            p = f"res{i + 2}.{b}"
            cin = in_c if b == 0 else o
            out[f"{p}.conv1.weight"] = (w, cin, 1, 1)
            norm(f"{p}.conv1", w)
            out[f"{p}.conv2.weight"] = (w, w, 3, 3)
            norm(f"{p}.conv2", w)
            out[f"{p}.conv3.weight"] = (o, w, 1, 1)
            norm(f"{p}.conv3", o)
            if b == 0:
                out[f"{p}.shortcut.weight"] = (o, cin, 1, 1)
                norm(f"{p}.shortcut", o)
        in_c = o
    return out


@pytest.fixture(scope="module")
def r50():
    torch.manual_seed(0)
    model, dim = create_backbone("resnet50")
    assert dim == 2048
    return model


def test_all_318_tensors_land_on_expected_names_and_shapes(r50):
    sd = r50.state_dict()
    assert len(sd) == 318  # fc is Identity: 53 convs + 53 BNs x 5 tensors
    d2, report = convert_to_detectron2(r50)
    want = expected_d2_r50()
    assert len(want) == 318
    assert report["n_in"] == 318 and report["n_mapped"] == 318
    assert report["unmapped"] == [] and report["dropped"] == []
    assert set(d2) == set(want), (sorted(set(want) - set(d2))[:5], sorted(set(d2) - set(want))[:5])
    for k, shape in want.items():
        assert tuple(d2[k].shape) == shape, k
    assert report["arch_hint"]["depth"] == 50 and report["arch_hint"]["bottleneck"]


@pytest.mark.parametrize("tv,d2", [
    ("conv1.weight", "stem.conv1.weight"),
    ("bn1.running_var", "stem.conv1.norm.running_var"),
    ("layer1.0.conv2.weight", "res2.0.conv2.weight"),
    ("layer3.5.bn3.bias", "res4.5.conv3.norm.bias"),
    ("layer4.0.downsample.0.weight", "res5.0.shortcut.weight"),
    ("layer2.0.downsample.1.num_batches_tracked", "res3.0.shortcut.norm.num_batches_tracked"),
    ("fc.weight", None),
    ("layer5.0.conv1.weight", None),
])
def test_single_names(tv, d2):
    assert detectron2_name(tv) == d2


def test_values_are_copied_unchanged(r50):
    sd = r50.state_dict()
    d2, _ = convert_to_detectron2(sd)
    assert torch.equal(d2["res4.2.conv2.weight"], sd["layer3.2.conv2.weight"])
    assert torch.equal(d2["stem.conv1.norm.running_mean"], sd["bn1.running_mean"])
    d2["res4.2.conv2.weight"].add_(1.0)  # a copy: the source model is untouched
    assert not torch.equal(d2["res4.2.conv2.weight"], sd["layer3.2.conv2.weight"])


def test_classifier_dropped_and_leftovers_reported():
    model, _ = create_backbone("resnet18")
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}  # DDP prefix is stripped
    sd["module.fc.weight"] = torch.zeros(10, 512)
    sd["module.projector.0.weight"] = torch.zeros(4, 4)
    d2, rep = convert_to_detectron2(sd)
    assert rep["dropped"] == ["fc.weight"]
    assert rep["unmapped"] == ["projector.0.weight"]
    assert rep["arch_hint"]["depth"] == 18 and not rep["arch_hint"]["bottleneck"]
    assert "res5.1.conv2.norm.weight" in d2 and "res5.0.shortcut.weight" in d2
    with pytest.raises(ExcbError, match="projector.0.weight"):
        require_complete(rep, "ck.pth")


def test_small_stem_refused():
    model, _ = create_backbone("resnet18", stem="small")
    _, rep = convert_to_detectron2(model)
    with pytest.raises(ExcbError, match="7x7"):
        require_complete(rep, "ck.pth")


def test_pickle_layout(tmp_path, r50):
    d2, _ = convert_to_detectron2(r50)
    p = save_detectron2_pickle(tmp_path / "w.pkl", d2)
    with open(p, "rb") as f:
        obj = pickle.load(f)
    assert set(obj) == {"model", "__author__", "matching_heuristics"}
    assert obj["__author__"] == "excb-bench" and obj["matching_heuristics"] is True
    assert all(isinstance(v, np.ndarray) for v in obj["model"].values())
    assert len(obj["model"]) == 318
    np.testing.assert_array_equal(obj["model"]["res5.2.conv3.weight"], d2["res5.2.conv3.weight"].numpy())
    assert load_detectron2_pickle(p)["model"].keys() == obj["model"].keys()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temporary behind


def test_convert_checkpoint_through_registry(tmp_path):
    """End to end from a file: a bare torchvision state dict, loaded by the format registry."""
    from detection.convert import convert_checkpoint

    model, _ = create_backbone("resnet50")
    torch.save(model.state_dict(), tmp_path / "r50.pth")
    rep, info = convert_checkpoint(tmp_path / "r50.pth", tmp_path / "out.pkl")
    assert rep["n_mapped"] == 318 and rep["unmapped"] == []
    assert info["arch"] == "resnet50"
    assert len(load_detectron2_pickle(tmp_path / "out.pkl")["model"]) == 318
