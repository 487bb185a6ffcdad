"""Export a pretrained backbone as a plain state dict for torchvision or timm.

    excb-bench export --checkpoint runs/own/checkpoint.pth --to torchvision --out resnet50_excb.pth

writes ``resnet50_excb.pth`` (only tensors, loadable with ``torch.load(..., weights_only=True)``)
and ``resnet50_excb.json`` beside it: how to build the matching model, and the key mapping
``{exported key: key in the source checkpoint}``. The backbone is read with
:func:`excb.checkpoint_formats.load_backbone` (any format it understands, loaded strictly),
so the export holds exactly the weights every evaluation stage uses.

Targets:

* ``torchvision`` (ResNets): ``torchvision.models.resnet50()`` loads the file with
  ``strict=True``. torchvision's constructor always has a classifier, so the export carries
  ``fc.weight`` / ``fc.bias`` of ``num_classes`` (default 1000) rows set to **zero** — not
  pretrained, a placeholder to replace for your task (``num_classes=0`` leaves fc out; then set
  ``model.fc = torch.nn.Identity()`` before loading).
* ``timm`` (ResNets and ViTs): ``timm.create_model(name, num_classes=0, ...)`` loads it with
  ``strict=True``; timm's ResNets use torchvision's parameter names.

A CIFAR-style small stem (``backbone.stem: small``, the 32 px presets) has a 3x3/1 ``conv1`` and
no max-pool; neither library builds it by name, so the JSON's ``build`` line swaps the two
modules before loading. Both files are written atomically.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

from excb import ExcbError
from excb.io import atomic_torch_save, atomic_write_json, sha256_file

TARGETS = ("torchvision", "timm")
EXPORT_FORMAT = "excb-bench-export"


def _is_resnet(arch: str) -> bool:
    return arch.startswith("resnet")


def _torchvision_build(arch: str, kwargs: Dict[str, Any], num_classes: int) -> Tuple[str, str]:
    """(python statement that builds the model, what to do before ``load_state_dict``)."""
    if not _is_resnet(arch):
        raise ExcbError(f"export --to torchvision: '{arch}' has no torchvision counterpart with the same weights "
                        f"(torchvision has no ViT-S and names ViT weights differently); use --to timm")
    args = f"num_classes={num_classes}" if num_classes and num_classes != 1000 else ""
    build = f"model = torchvision.models.{arch}({args})"
    if kwargs.get("stem") == "small":
        build += ("; model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)"
                  "; model.maxpool = torch.nn.Identity()")
    if not num_classes:
        build += "; model.fc = torch.nn.Identity()"
    return build, f"model.load_state_dict(torch.load(FILE, weights_only=True), strict=True)"


def _timm_build(arch: str, kwargs: Dict[str, Any], num_classes: int) -> Tuple[str, str]:
    extra = ""
    if not _is_resnet(arch):
        # the image size fixes pos_embed's shape; the patch size, where it is not in the name
        if kwargs.get("img_size"):
            extra += f", img_size={int(kwargs['img_size'])}"
        if kwargs.get("patch_size"):
            extra += f", patch_size={int(kwargs['patch_size'])}"
    build = f"model = timm.create_model({arch!r}, pretrained=False, num_classes={num_classes}{extra})"
    if _is_resnet(arch) and kwargs.get("stem") == "small":
        build += ("; model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)"
                  "; model.maxpool = torch.nn.Identity()")
    return build, "model.load_state_dict(torch.load(FILE, weights_only=True), strict=True)"


_BUILDERS: Dict[str, Callable[[str, Dict[str, Any], int], Tuple[str, str]]] = {
    "torchvision": _torchvision_build, "timm": _timm_build}


def _classifier(arch: str, feature_dim: int, num_classes: int, target: str) -> Dict[str, torch.Tensor]:
    """Zero placeholder classifier so the library's default constructor loads strictly."""
    if not num_classes:
        return {}
    name = "fc" if _is_resnet(arch) else "head"
    return {f"{name}.weight": torch.zeros(num_classes, feature_dim), f"{name}.bias": torch.zeros(num_classes)}


def _tensor_paths(obj: Any, prefix: str = "", out: Optional[Dict[int, str]] = None) -> Dict[int, str]:
    """id(tensor) -> dotted path of every tensor in a nested checkpoint (for the key mapping)."""
    out = {} if out is None else out
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            _tensor_paths(v, f"{prefix}{k}.", out)
    elif torch.is_tensor(obj):
        out.setdefault(id(obj), prefix[:-1])
    return out


def source_keys(path: Path, fmt: str, which: str, trust_pickle: bool = False) -> Dict[str, str]:
    """{backbone key (torchvision/timm name): dotted key in the source file} for a registered format."""
    from excb.checkpoint_formats import _FORMATS, read_checkpoint

    obj = read_checkpoint(path, trust_pickle=trust_pickle)
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    _, sd = _FORMATS[fmt].to_backbone_state(obj, which)
    where = _tensor_paths(obj)
    return {k: where.get(id(v), k) for k, v in sd.items()}


def export_backbone(checkpoint: str | Path, out: str | Path, to: str = "torchvision", which: str = "teacher",
                    format: str = "auto", arch: Optional[str] = None, num_classes: Optional[int] = None,
                    trust_pickle: bool = False) -> Dict[str, Any]:
    """Write the backbone of ``checkpoint`` to ``out`` (+ ``<out stem>.json``); returns the JSON record.

    ``num_classes`` is the zero classifier's size (default 1000 for torchvision, 0 = none for timm).
    """
    from excb.checkpoint_formats import load_backbone

    if to not in TARGETS:
        raise ExcbError(f"export --to: unknown target '{to}'; use one of {', '.join(TARGETS)}")
    out = Path(out)
    if out.suffix == ".json":
        raise ExcbError(f"export --out {out}: the weights file must not end in .json (the key mapping is written "
                        f"beside it as <name>.json); use e.g. {out.with_suffix('.pth')}")
    if out.is_dir():
        raise ExcbError(f"export --out {out}: is a directory; give a file name, e.g. {out / 'backbone.pth'}")
    if num_classes is None:
        num_classes = 1000 if to == "torchvision" else 0
    if num_classes < 0:
        raise ExcbError(f"export --num-classes: must be >= 0, got {num_classes}")
    model, feature_dim, info = load_backbone(checkpoint, format=format, which=which, arch=arch, trust_pickle=trust_pickle)
    name, kwargs = info["arch"], dict(info["kwargs"])
    build, load = _BUILDERS[to](name, kwargs, num_classes)   # refuses impossible targets before writing
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    keymap = source_keys(Path(checkpoint), info["format"], which, trust_pickle)
    fc = _classifier(name, feature_dim, num_classes, to)
    state.update(fc)
    atomic_torch_save(out, state)
    record = {
        "format": EXPORT_FORMAT, "version": 1, "target": to, "arch": name, "build_kwargs": kwargs,
        "feature_dim": feature_dim, "file": out.name, "sha256": sha256_file(out),
        "build": build, "load": load.replace("FILE", repr(str(out.name))),
        "classifier": ({"keys": sorted(fc), "num_classes": num_classes,
                        "note": "zero placeholder, not pretrained: replace it for your task"} if fc else None),
        "source": {"path": str(checkpoint), "sha256": info["sha256"], "format": info["format"],
                   "which": info["which"]},
        "key_map": {k: keymap.get(k, k) for k in state if k not in fc},
    }
    atomic_write_json(out.with_suffix(".json"), record)
    return record


# ----------------------------------------------------------------------------- command line
def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--checkpoint", required=True, help="checkpoint file (ours or any format `excb-bench formats` lists)")
    p.add_argument("--which", default="teacher", choices=["teacher", "student"],
                   help="network of a teacher/student checkpoint (default teacher, the one evaluations use)")
    p.add_argument("--to", required=True, choices=list(TARGETS), help="library whose model loads the file strictly")
    p.add_argument("--out", required=True, help="output weights file, e.g. resnet50_excb.pth (the key mapping goes "
                                                "to resnet50_excb.json beside it)")
    p.add_argument("--format", default="auto", help="source checkpoint format (default auto-detect)")
    p.add_argument("--arch", help="backbone architecture if it cannot be inferred (e.g. resnet50)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="rows of the zero placeholder classifier (default 1000 for torchvision so resnet50() loads "
                        "strictly; 0 for timm = build with num_classes=0)")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling (executes code from the file)")
    return p


def main(args: argparse.Namespace) -> int:
    rec = export_backbone(args.checkpoint, args.out, to=args.to, which=args.which, format=args.format, arch=args.arch,
                          num_classes=args.num_classes, trust_pickle=args.trust_checkpoint)
    out = Path(args.out)
    print(f"[excb] exported {rec['source']['which'] or 'the'} backbone ({rec['arch']}, {len(rec['key_map'])} tensors) "
          f"to {out}; key mapping and loading code in {out.with_suffix('.json')}")
    print(f"[excb]   {rec['build']}")
    print(f"[excb]   {rec['load']}")
    return 0
