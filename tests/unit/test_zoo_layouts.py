"""Every zoo entry: a synthetic file in that release's layout, served through a mirror folder
and ``zoo:NAME``, loads via ``load_backbone`` with the entry's format and architecture and
gives the features of a torchvision/timm model holding the same weights."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict

import pytest
import torch
import torchvision
import yaml
from torch import nn

from excb import ExcbError, zoo
from excb.checkpoint_formats import load_backbone

torch.set_num_threads(1)
REAL = zoo.load_registry(zoo.DEFAULT_REGISTRY)


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):   # distinctive BN stats: unloaded ones would show
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def ref_resnet50(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return _randomise(torchvision.models.resnet50(weights=None), seed)


def ref_vit_s16(seed: int) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=1000).eval()


def _bb(m: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v for k, v in m.state_dict().items() if not k.startswith(("fc.", "head."))}


def _pre(sd: Dict[str, torch.Tensor], p: str) -> Dict[str, torch.Tensor]:
    return {p + k: v for k, v in sd.items()}


def _mlp(prefix: str, dims=(2048, 64, 32)) -> Dict[str, torch.Tensor]:
    out = {}
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        out[f"{prefix}{3 * i}.weight"] = torch.randn(b, a)
        out[f"{prefix}{3 * i}.bias"] = torch.randn(b)
    return out


# layouts as each project saves them (keys read from their releases' loading code and READMEs)
def dino_bare(m, dim):            # DINO "backbone only": torchvision / DINO-ViT (= timm) names, no head
    return _bb(m)


def swav_release(m, dim):         # SwAV / DeepCluster-v2: DDP module.* with projection head and prototypes
    return {**_pre(_bb(m), "module."), **_pre(_mlp("projection_head.", (dim, 64, 32)), "module."),
            "module.prototypes.weight": torch.randn(100, 32)}


def mocov2_release(m, dim):       # MoCo v2: state_dict with encoder_q (MLP fc head), encoder_k, queue
    q = {**_bb(m), **_mlp("fc.", (dim, 64, 32))}
    return {"epoch": 800, "arch": "resnet50", "optimizer": {"state": {}, "param_groups": []},
            "state_dict": {**_pre(q, "module.encoder_q."), **_pre(q, "module.encoder_k."),
                           "module.queue": torch.randn(32, 10), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}}


def mocov3_release(m, dim):       # MoCo v3: base/momentum encoders (projector in fc/head), predictor
    head = "head." if "blocks.0.attn.qkv.weight" in m.state_dict() else "fc."
    enc = {**_bb(m), **_mlp(head, (dim, 64, 32))}
    return {"epoch": 1000, "arch": "resnet50", "scaler": {"scale": 1024.0},
            "state_dict": {**_pre(enc, "module.base_encoder."), **_pre(enc, "module.momentum_encoder."),
                           **_mlp("module.predictor.", (32, 64, 32))}}


def torchvision_file(m, dim):     # torchvision / Barlow Twins / VICReg: plain names (fc kept or not)
    return m.state_dict()


def simsiam_release(m, dim):      # SimSiam: state_dict with module.encoder.* (fc = projector), predictor
    enc = {**_bb(m), **_mlp("fc.", (dim, 64, 32))}
    return {"epoch": 100, "arch": "resnet50", "optimizer": {"state": {}, "param_groups": []},
            "state_dict": {**_pre(enc, "module.encoder."), **_mlp("module.predictor.", (32, 64, 32))}}


def excb_official(m, dim):        # authors' ExCB: student/teacher with backbone.* and classifier.*, args
    def net():
        return {**_pre(_bb(m), "backbone."), **_mlp("classifier.projector.layers.", (dim, 64, 32)),
                "classifier.centroid_layer.weight_g": torch.ones(16, 1),
                "classifier.centroid_layer.weight_v": torch.randn(16, 32)}
    return {"teacher": net(), "student": net(), "epoch": 400,
            "args": argparse.Namespace(arch="resnet50", epochs=400, lr=0.3)}


LAYOUTS: Dict[str, Callable] = {"dino": dino_bare, "swav": swav_release, "mocov2": mocov2_release,
                                "mocov3": mocov3_release, "torchvision": torchvision_file, "simsiam": simsiam_release,
                                "excb-official": excb_official}


@pytest.fixture(scope="module")
def references():
    return {"resnet50": (ref_resnet50(3), 2048), "vit_small_patch16_224": (ref_vit_s16(4), 384)}


@pytest.fixture
def mirror_env(tmp_path, monkeypatch):
    """The real registry without the published pins (synthetic files cannot match them)."""
    doc = yaml.safe_load(zoo.DEFAULT_REGISTRY.read_text())
    for e in doc["entries"].values():
        for k in ("sha256", "sha256_prefix", "md5_prefix"):
            e.pop(k, None)
    reg = tmp_path / "zoo.yaml"
    reg.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("EXCB_ZOO_REGISTRY", str(reg))
    monkeypatch.setenv("EXCB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EXCB_ZOO_MIRROR", str(tmp_path / "mirror"))
    monkeypatch.setenv("EXCB_OFFLINE", "1")
    return tmp_path


@pytest.mark.parametrize("name", sorted(REAL))
def test_every_entry_layout_loads_with_expected_features(name, references, mirror_env):
    entry = REAL[name]
    assert entry.format in LAYOUTS, f"no synthetic layout for format {entry.format}"
    ref, dim = references[entry.arch]
    obj = LAYOUTS[entry.format](ref, dim)
    target = mirror_env / "mirror" / entry.filename
    target.parent.mkdir(exist_ok=True)
    torch.save(obj, target)
    path, fmt, arch, rec = zoo.resolve_checkpoint(f"zoo:{name}")
    assert Path(path) == target and rec["name"] == name
    model, got_dim, info = load_backbone(path, format=fmt, arch=arch, which=entry.which)
    assert (info["format"], info["arch"], got_dim) == (entry.format, entry.arch, dim)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if entry.is_vit:
            expected = ref.forward_head(ref.forward_features(x), pre_logits=True)
        else:
            expected = nn.Sequential(*list(ref.children())[:-1])(x).flatten(1)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    target.unlink()


def test_published_prefix_refuses_a_synthetic_torchvision_file(tmp_path, monkeypatch, references):
    monkeypatch.setenv("EXCB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EXCB_ZOO_MIRROR", str(tmp_path))
    monkeypatch.delenv("EXCB_ZOO_REGISTRY", raising=False)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "resnet50-0676ba61.pth")
    with pytest.raises(ExcbError) as e:
        zoo.resolve_checkpoint("zoo:supervised_resnet50")
    assert "0676ba61" in str(e.value)
