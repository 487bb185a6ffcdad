"""Checkpoint-format registry: every layout round-trips to identical features; bad files fail loudly.

Each case builds a model with torchvision/timm, saves it the way that project does (with
its heads, momentum encoders, optimizer state, pickled args...), loads it through
``load_backbone`` with ``format="auto"`` and with the explicit name, and compares the
backbone features on a fixed input bit for bit against the original model.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Callable, Dict

import pytest
import torch
import torchvision
from torch import nn

from excb import ExcbError
from excb.backbones import create_backbone
from excb.checkpoint_formats import detect_format, format_names, list_formats, load_backbone, read_checkpoint
from excb.io import sha256_file

torch.set_num_threads(1)

ALL_FORMATS = ["excb-bench", "excb-official", "dino", "mocov2", "mocov3", "simsiam", "vissl", "solo-learn", "swav",
               "torchvision", "timm"]


# ----------------------------------------------------------------------------- helpers
def _randomise_bn(model: nn.Module, seed: int) -> nn.Module:
    """Fresh BN stats are 0/1 in every model: make them distinctive so unloaded stats show."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def make_resnet(seed: int, small_stem: bool = False, fc: nn.Module | None = None) -> nn.Module:
    """A torchvision resnet18 with a classifier/projection ``fc`` like the SSL projects keep."""
    torch.manual_seed(seed)
    if small_stem:
        m, _ = create_backbone("resnet18", stem="small")
    else:
        m = torchvision.models.resnet18(weights=None, num_classes=10)
    m.fc = fc if fc is not None else nn.Linear(512, 10)
    return _randomise_bn(m, seed).eval()


def make_vit(seed: int) -> nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=10).eval()


@torch.no_grad()
def ref_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled backbone features of the original model (its classifier removed)."""
    m = copy.deepcopy(model).eval()
    if hasattr(m, "fc"):
        m.fc = nn.Identity()
        return m(x)
    return m.forward_head(m.forward_features(x), pre_logits=True)


def prefixed(sd: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {prefix + k: v.clone() for k, v in sd.items()}


def mlp_head(prefix: str, dims=(512, 64, 32)) -> Dict[str, torch.Tensor]:
    return {f"{prefix}0.weight": torch.randn(dims[1], dims[0]), f"{prefix}0.bias": torch.randn(dims[1]),
            f"{prefix}2.weight": torch.randn(dims[2], dims[1]), f"{prefix}2.bias": torch.randn(dims[2])}


X_IMG = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(123))


def _backbone_sd(model: nn.Module) -> Dict[str, torch.Tensor]:
    """State dict without the classifier, as SSL projects save their backbone."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(("fc.", "head."))}


# ----------------------------------------------------------------------------- layouts
# each builder returns (checkpoint object, reference model, which-network label or None)
def layout_excb_bench(which: str):
    teacher, student = make_resnet(1, fc=nn.Identity()), make_resnet(2, fc=nn.Identity())

    def net(m, with_pred):
        sd = prefixed(_backbone_sd(m), "backbone.")
        sd.update(mlp_head("projector.mlp."))
        sd["centroids.weight"] = torch.randn(16, 32)
        if with_pred:
            sd.update(mlp_head("predictor.mlp.", (32, 64, 32)))
        return sd

    obj = {"format": "excb-bench", "version": 1, "epoch": 3, "config": {"backbone": {"name": "resnet18"}, "lr": 0.3},
           "backbone": {"name": "resnet18", "kwargs": {"stem": "standard", "zero_init_residual": False}},
           "student": net(student, True), "teacher": net(teacher, False),
           "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
           "balancer": {"s": torch.rand(16)}, "scaler": None, "rng": {"torch": torch.get_rng_state()}}
    return obj, {"teacher": teacher, "student": student}[which]


def layout_excb_official(which: str):
    teacher, student = make_resnet(3), make_resnet(4)

    def net(m, with_pred):
        sd = prefixed(_backbone_sd(m), "backbone.")
        sd.update(mlp_head("classifier.projector.layers."))
        sd["classifier.centroid_layer.weight_g"] = torch.ones(16, 1)
        sd["classifier.centroid_layer.weight_v"] = torch.randn(16, 32)
        if with_pred:
            sd.update(mlp_head("classifier.predictor.layers.", (32, 64, 32)))
            sd["classifier.predictor_activation.weight"] = torch.ones(1)
        return sd

    args = argparse.Namespace(arch="resnet18", epochs=400, lr=0.3, out_dim=256, use_fp16=True, output_dir="/x",
                              global_crops_scale=(0.14, 1.0), local_crops_number=6)
    obj = {"student": net(student, True), "teacher": net(teacher, False), "epoch": 400, "args": args,
           "optimizer": {"state": {}, "param_groups": []}}
    return obj, {"teacher": teacher, "student": student}[which]


def layout_dino_full(which: str):
    teacher, student = make_resnet(5, fc=nn.Identity()), make_resnet(6, fc=nn.Identity())
    head = {**mlp_head("head.mlp."), "head.last_layer.weight_g": torch.ones(100, 1),
            "head.last_layer.weight_v": torch.randn(100, 32)}
    # DINO saves the DDP-wrapped student and the bare teacher
    obj = {"student": {**prefixed(_backbone_sd(student), "module.backbone."), **prefixed(head, "module.")},
           "teacher": {**prefixed(_backbone_sd(teacher), "backbone."), **head},
           "optimizer": {"state": {}, "param_groups": []}, "epoch": 100,
           "args": argparse.Namespace(arch="resnet50", out_dim=60000, momentum_teacher=0.996),
           "dino_loss": {"center": torch.zeros(1, 100)}, "fp16_scaler": None}
    return obj, {"teacher": teacher, "student": student}[which]


def layout_mocov2(which: str):
    q = make_resnet(7, fc=nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 32)))
    k = make_resnet(8, fc=nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 32)))
    sd = {**prefixed(q.state_dict(), "module.encoder_q."), **prefixed(k.state_dict(), "module.encoder_k."),
          "module.queue": torch.randn(32, 100), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"epoch": 200, "arch": "resnet18", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}, q


def layout_mocov3(which: str):
    def enc(seed):
        return make_resnet(seed, fc=nn.Sequential(nn.Linear(512, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
                                                  nn.Linear(64, 32, bias=False), nn.BatchNorm1d(32, affine=False)))
    base, mom = enc(9), enc(10)
    sd = {**prefixed(base.state_dict(), "module.base_encoder."),
          **prefixed(mom.state_dict(), "module.momentum_encoder."), **mlp_head("module.predictor.", (32, 64, 32))}
    return {"epoch": 100, "arch": "resnet18", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []},
            "scaler": {"scale": 1024.0}}, base


def layout_swav(which: str):
    m = make_resnet(11, fc=nn.Identity())
    sd = {**prefixed(_backbone_sd(m), "module."), **prefixed(mlp_head("projection_head."), "module."),
          "module.prototypes.weight": torch.randn(100, 32)}
    return sd, m


def layout_swav_training(which: str):
    sd, m = layout_swav(which)
    return {"epoch": 5, "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}, "amp": None}, m


def layout_solo_learn(which: str):
    m = make_resnet(12, small_stem=True, fc=nn.Identity())  # solo-learn's CIFAR ResNets use the small stem
    mom = make_resnet(13, small_stem=True, fc=nn.Identity())
    sd = {**prefixed(_backbone_sd(m), "backbone."), **mlp_head("projector."),
          "classifier.weight": torch.randn(10, 512), "classifier.bias": torch.zeros(10),
          **prefixed(_backbone_sd(mom), "momentum_backbone."), **mlp_head("momentum_projector.")}
    return {"epoch": 999, "global_step": 10, "pytorch-lightning_version": "2.0.0", "state_dict": sd,
            "hyper_parameters": {"cfg": {"method": "byol", "backbone": {"name": "resnet18"}}},
            "optimizer_states": [], "lr_schedulers": []}, m


def layout_vissl(which: str):
    m = make_resnet(14, fc=nn.Identity())
    model = {"trunk": prefixed(_backbone_sd(m), "_feature_blocks."),
             "heads": {"0.clf.0.weight": torch.randn(10, 512), "0.clf.0.bias": torch.zeros(10)}}
    return {"phase_idx": 3, "iteration": 100, "type": "checkpoint",
            "classy_state_dict": {"base_model": {"model": model, "meta": {}}, "loss": {}, "train_phase_idx": 3}}, m


def layout_torchvision(which: str):
    m = make_resnet(15)  # keeps its fc classifier: allowed to be unexpected
    return m.state_dict(), m


def layout_timm(which: str):
    m = make_vit(16)  # keeps head.weight/bias: allowed to be unexpected
    return m.state_dict(), m


def layout_dino_bare_vit(which: str):
    m = make_vit(17)
    return _backbone_sd(m), m


def layout_dino_bare_resnet(which: str):
    m = make_resnet(18, fc=nn.Identity())
    return _backbone_sd(m), m


# (case id, builder, explicit format, format auto-detection must find, which)
CASES = [
    ("excb-bench-teacher", layout_excb_bench, "excb-bench", "excb-bench", "teacher"),
    ("excb-bench-student", layout_excb_bench, "excb-bench", "excb-bench", "student"),
    ("excb-official-teacher", layout_excb_official, "excb-official", "excb-official", "teacher"),
    ("excb-official-student", layout_excb_official, "excb-official", "excb-official", "student"),
    ("dino-full-teacher", layout_dino_full, "dino", "dino", "teacher"),
    ("dino-full-student", layout_dino_full, "dino", "dino", "student"),
    # bare DINO backbones are plain state dicts: auto-detect calls them torchvision/timm
    ("dino-bare-resnet", layout_dino_bare_resnet, "dino", "torchvision", "teacher"),
    ("dino-bare-vit", layout_dino_bare_vit, "dino", "timm", "teacher"),
    ("mocov2", layout_mocov2, "mocov2", "mocov2", "teacher"),
    ("mocov3", layout_mocov3, "mocov3", "mocov3", "teacher"),
    ("swav", layout_swav, "swav", "swav", "teacher"),
    ("swav-training", layout_swav_training, "swav", "swav", "teacher"),
    ("solo-learn", layout_solo_learn, "solo-learn", "solo-learn", "teacher"),
    ("vissl", layout_vissl, "vissl", "vissl", "teacher"),
    ("torchvision", layout_torchvision, "torchvision", "torchvision", "teacher"),
    ("timm", layout_timm, "timm", "timm", "teacher"),
]


@pytest.mark.parametrize("case,build,explicit,auto,which", CASES, ids=[c[0] for c in CASES])
def test_layout_round_trip_gives_identical_features(tmp_path: Path, case, build: Callable, explicit, auto, which):
    obj, ref = build(which)
    path = tmp_path / f"{case}.pth"
    torch.save(obj, path)
    assert detect_format(torch.load(path, weights_only=False)) == auto
    expected = ref_features(ref, X_IMG)
    for fmt in ("auto", explicit):
        model, dim, info = load_backbone(path, format=fmt, which=which)
        assert not model.training
        with torch.no_grad():
            got = model(X_IMG)
        assert dim == expected.shape[1] == got.shape[1]
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert info["format"] == (auto if fmt == "auto" else explicit)
        assert info["path"] == str(path) and info["sha256"] == sha256_file(path)
        assert info["n_tensors"] == len(_backbone_sd(ref))
    # the other network of a teacher/student file really is another one
    if which == "teacher" and case.endswith("-teacher"):
        other, _, _ = load_backbone(path, which="student")
        with torch.no_grad():
            assert not torch.allclose(other(X_IMG), expected)


def test_arch_inference_and_info(tmp_path: Path):
    obj, _ = layout_solo_learn("teacher")
    torch.save(obj, tmp_path / "solo.ckpt")
    model, dim, info = load_backbone(tmp_path / "solo.ckpt")
    assert info["arch"] == "resnet18" and info["kwargs"]["stem"] == "small" and dim == 512
    assert model.conv1.kernel_size == (3, 3)
    assert info["which"] is None  # one network in the file

    obj, _ = layout_timm("teacher")
    torch.save(obj, tmp_path / "vit.pth")
    model, dim, info = load_backbone(tmp_path / "vit.pth")
    assert info["arch"] == "vit_tiny_patch16_224" and info["kwargs"]["img_size"] == 32 and dim == 192
    assert info["missing_allowed"] == ["head.bias", "head.weight"]

    obj, _ = layout_torchvision("teacher")
    torch.save(obj, tmp_path / "tv.pth")
    _, _, info = load_backbone(tmp_path / "tv.pth", arch="resnet18")
    assert info["missing_allowed"] == ["fc.bias", "fc.weight"] and info["kwargs"]["stem"] == "standard"

    obj, _ = layout_excb_bench("teacher")
    torch.save(obj, tmp_path / "ours.pth")
    _, _, info = load_backbone(tmp_path / "ours.pth", which="student")
    assert info["which"] == "student" and info["arch"] == "resnet18"
    assert set(info) >= {"path", "sha256", "format", "which", "arch", "n_tensors", "missing_allowed"}


def test_resnet50_inferred_from_bottlenecks():
    from excb.checkpoint_formats import infer_arch

    sd = torchvision.models.resnet50(weights=None).state_dict()
    assert infer_arch(sd) == ("resnet50", {"stem": "standard"})
    sd34 = torchvision.models.resnet34(weights=None).state_dict()
    assert infer_arch(sd34)[0] == "resnet34"


# ----------------------------------------------------------------------------- rejections
def _one_line_error(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_missing_block_is_rejected_with_key_list(tmp_path: Path):
    obj, _ = layout_torchvision("teacher")
    obj = {k: v for k, v in obj.items() if not k.startswith("layer4.1.")}
    path = tmp_path / "broken.pth"
    torch.save(obj, path)
    for fmt in ("auto", "torchvision", "dino"):
        with pytest.raises(ExcbError) as e:
            load_backbone(path, format=fmt)
        msg = _one_line_error(e)
        assert str(path) in msg and "missing 10" in msg
        for key in ("layer4.1.conv1.weight", "layer4.1.conv2.weight", "layer4.1.bn2.{bias,running_mean"):
            assert key in msg, msg


def test_missing_stage_in_wrapped_checkpoint_is_rejected(tmp_path: Path):
    obj, _ = layout_mocov3("teacher")
    # MoCo v3 file whose base encoder lost layer3 entirely: long key list gets truncated with a count
    obj["state_dict"] = {k: v for k, v in obj["state_dict"].items() if not k.startswith("module.base_encoder.layer3.")}
    torch.save(obj, tmp_path / "m.pth")
    with pytest.raises(ExcbError) as e:
        load_backbone(tmp_path / "m.pth")
    msg = _one_line_error(e)
    assert "mocov3" in msg and "layer3.0.conv1.weight" in msg and "more" in msg


def test_unexpected_non_classifier_key_is_rejected(tmp_path: Path):
    obj, _ = layout_torchvision("teacher")
    obj["layer5.0.conv1.weight"] = torch.zeros(1)
    torch.save(obj, tmp_path / "extra.pth")
    with pytest.raises(ExcbError) as e:
        load_backbone(tmp_path / "extra.pth")
    assert "unexpected 1 [layer5.0.conv1.weight]" in _one_line_error(e)


@pytest.mark.parametrize("kind", ["text", "random", "truncated", "list", "missing", "directory"])
def test_non_checkpoint_files_are_rejected(tmp_path: Path, kind):
    path = tmp_path / f"{kind}.pth"
    if kind == "text":
        path.write_text("these are not the weights you are looking for\n")
    elif kind == "random":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    elif kind == "truncated":
        torch.save(layout_torchvision("teacher")[0], path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "list":
        torch.save([torch.ones(2)], path)
    elif kind == "directory":
        path.mkdir()
    for trust in (False, True):
        with pytest.raises(ExcbError) as e:
            load_backbone(path, trust_pickle=trust)
        assert str(path) in _one_line_error(e)


def test_unrecognised_dict_lists_top_level_keys(tmp_path: Path):
    torch.save({"weights": {"a": torch.ones(1)}, "meta": 1}, tmp_path / "odd.pth")
    with pytest.raises(ExcbError) as e:
        load_backbone(tmp_path / "odd.pth")
    msg = _one_line_error(e)
    assert "meta, weights" in msg and "--format" in msg


def test_wrong_architecture_names_both(tmp_path: Path):
    obj, _ = layout_torchvision("teacher")
    torch.save(obj, tmp_path / "r18.pth")
    with pytest.raises(ExcbError) as e:
        load_backbone(tmp_path / "r18.pth", arch="resnet50")
    msg = _one_line_error(e)
    assert "resnet18" in msg and "resnet50" in msg

    obj, _ = layout_timm("teacher")
    torch.save(obj, tmp_path / "vit.pth")
    with pytest.raises(ExcbError) as e:
        load_backbone(tmp_path / "vit.pth", arch="vit_small_patch16_224")
    msg = _one_line_error(e)
    assert "vit_tiny_patch16_224" in msg and "vit_small_patch16_224" in msg
    with pytest.raises(ExcbError) as e:
        load_backbone(tmp_path / "vit.pth", arch="resnet18")
    assert "vit_tiny_patch16_224" in _one_line_error(e)


def test_explicit_wrong_format_and_bad_arguments(tmp_path: Path):
    obj, _ = layout_mocov2("teacher")
    torch.save(obj, tmp_path / "moco.pth")
    with pytest.raises(ExcbError) as e:
        load_backbone(tmp_path / "moco.pth", format="dino")
    msg = _one_line_error(e)
    assert "not a dino checkpoint" in msg and "'mocov2'" in msg
    with pytest.raises(ExcbError) as e:
        load_backbone(tmp_path / "moco.pth", format="moco2")
    assert "mocov2" in _one_line_error(e)
    with pytest.raises(ExcbError):
        load_backbone(tmp_path / "moco.pth", which="momentum")


# ----------------------------------------------------------------------------- pickle safety
class CustomState:
    """An arbitrary class some training script pickled into its checkpoint."""

    def __init__(self):
        self.best = 0.5


MARKER: Dict[str, int] = {"calls": 0}


def _side_effect(value):
    MARKER["calls"] += 1
    return value


class Sneaky:
    """Unpickling this runs ``_side_effect`` — what a malicious file would do with os.system."""

    def __reduce__(self):
        return (_side_effect, (1,))


def test_argparse_namespace_loads_with_weights_only(tmp_path: Path):
    obj, ref = layout_excb_official("teacher")
    path = tmp_path / "official.pth"
    torch.save(obj, path)
    with pytest.raises(Exception):  # plain weights_only refuses it (what users hit with PyTorch >= 2.6)
        torch.load(path, weights_only=True)
    loaded = read_checkpoint(path)
    assert isinstance(loaded["args"], argparse.Namespace) and loaded["args"].epochs == 400
    assert loaded["args"].global_crops_scale == (0.14, 1.0)
    model, _, info = load_backbone(path)
    assert info["format"] == "excb-official"
    torch.testing.assert_close(model(X_IMG), ref_features(ref, X_IMG), rtol=0, atol=0)


def test_numpy_scalars_are_allowed(tmp_path: Path):
    import numpy as np

    obj, _ = layout_mocov2("teacher")
    obj["best_acc1"] = np.float64(71.5)
    torch.save(obj, tmp_path / "np.pth")
    assert read_checkpoint(tmp_path / "np.pth")["best_acc1"] == 71.5


def test_custom_class_is_refused_without_trust(tmp_path: Path):
    obj, ref = layout_torchvision("teacher")
    path = tmp_path / "custom.pth"
    torch.save({"state_dict": obj, "extra": CustomState()}, path)
    with pytest.raises(ExcbError) as e:
        load_backbone(path)
    msg = _one_line_error(e)
    assert "CustomState" in msg and "trust_pickle=True" in msg and "--trust-checkpoint" in msg
    model, _, info = load_backbone(path, trust_pickle=True)
    assert info["format"] == "torchvision"
    torch.testing.assert_close(model(X_IMG), ref_features(ref, X_IMG), rtol=0, atol=0)


def test_code_in_checkpoint_is_not_executed_without_trust(tmp_path: Path):
    obj, _ = layout_torchvision("teacher")
    path = tmp_path / "sneaky.pth"
    torch.save({"state_dict": obj, "payload": Sneaky()}, path)
    MARKER["calls"] = 0
    with pytest.raises(ExcbError) as e:
        load_backbone(path)
    assert "_side_effect" in _one_line_error(e)
    assert MARKER["calls"] == 0
    load_backbone(path, trust_pickle=True)  # the user said they trust it: full unpickle
    assert MARKER["calls"] == 1


def test_registry_lists_every_format():
    assert format_names() == ALL_FORMATS
    listed = list_formats()
    assert [line.split(":")[0] for line in listed] == ALL_FORMATS
    assert all(len(line.split(": ", 1)[1]) > 10 for line in listed)
