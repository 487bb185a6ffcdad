"""torchvision ResNet -> Detectron2 weights (SPEC section 9, MoCo's detection recipe).

    module, _, info = load_backbone("checkpoint.pth")        # excb.checkpoint_formats
    d2_sd, report = convert_to_detectron2(module)
    save_detectron2_pickle("backbone_d2.pkl", d2_sd)

Name mapping (the layout of torchvision ResNets, bottleneck or basic blocks):

    conv1.weight                 -> stem.conv1.weight
    bn1.*                        -> stem.conv1.norm.*
    layer{N}.{b}.conv{K}.weight  -> res{N+1}.{b}.conv{K}.weight
    layer{N}.{b}.bn{K}.*         -> res{N+1}.{b}.conv{K}.norm.*
    layer{N}.{b}.downsample.0.*  -> res{N+1}.{b}.shortcut.*
    layer{N}.{b}.downsample.1.*  -> res{N+1}.{b}.shortcut.norm.*

Shapes are unchanged: both libraries store convolutions as [out, in, kh, kw]. The pickle is
what Detectron2's checkpointer reads for third-party weights: ``{"model": {name: ndarray},
"__author__": ..., "matching_heuristics": True}``; the heuristics let ``res5.*`` land on
``roi_heads.res5.*`` (C4: res5 is part of the box head) and ``stem``/``res2-4`` on
``backbone.*``.
"""
from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from excb import ExcbError
from excb.io import atomic_write

AUTHOR = "excb-bench"
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# prefixes that wrappers add in front of torchvision names (DDP, our checkpoints' "backbone.")
WRAPPER_PREFIXES = ("module.", "backbone.", "encoder.")
# torchvision classifier: not part of the transferred backbone
CLASSIFIER = re.compile(r"^fc(\.|$)")

StateDict = Mapping[str, torch.Tensor]

# One rule per torchvision name pattern; the first that matches decides the Detectron2 name.
_RULES: List[Tuple[re.Pattern, Callable[[re.Match], str]]] = [
    (re.compile(r"^conv1\.weight$"), lambda m: "stem.conv1.weight"),
    (re.compile(r"^bn1\.(%s)$" % "|".join(BN_SUFFIXES)), lambda m: f"stem.conv1.norm.{m[1]}"),
    (re.compile(r"^layer([1-4])\.(\d+)\.conv(\d)\.weight$"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.weight"),
    (re.compile(r"^layer([1-4])\.(\d+)\.bn(\d)\.(%s)$" % "|".join(BN_SUFFIXES)),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"),
    (re.compile(r"^layer([1-4])\.(\d+)\.downsample\.0\.weight$"),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.weight"),
    (re.compile(r"^layer([1-4])\.(\d+)\.downsample\.1\.(%s)$" % "|".join(BN_SUFFIXES)),
     lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm.{m[3]}"),
]


def detectron2_name(tv_name: str) -> Optional[str]:
    """The Detectron2 name of one torchvision ResNet tensor name, or None if no rule applies."""
    for pat, fn in _RULES:
        m = pat.match(tv_name)
        if m:
            return fn(m)
    return None


def _strip_wrappers(sd: StateDict) -> Dict[str, torch.Tensor]:
    """Drop a prefix shared by every key (``module.``, ``backbone.``), repeatedly."""
    out = dict(sd)
    changed = True
    while changed and out:
        changed = False
        for p in WRAPPER_PREFIXES:
            if all(k.startswith(p) for k in out):
                out = {k[len(p):]: v for k, v in out.items()}
                changed = True
    return out


def convert_to_detectron2(state_dict_or_module: Union[StateDict, nn.Module]) -> Tuple["OrderedDict[str, torch.Tensor]", Dict[str, Any]]:
    """Rename a torchvision ResNet's tensors to Detectron2's.

    Returns ``(d2_state_dict, report)``; ``report = {"n_in", "n_mapped", "unmapped": [...],
    "dropped": [...], "arch_hint"}``. ``unmapped`` lists every tensor that did not land on a
    Detectron2 name (the caller decides whether that is fatal; :func:`require_complete`
    makes it so); ``dropped`` lists the classifier (``fc.*``), which is intentionally not
    transferred. Tensors are detached CPU copies; the input is not modified.
    """
    if isinstance(state_dict_or_module, nn.Module):
        sd: Mapping[str, Any] = state_dict_or_module.state_dict()
    elif isinstance(state_dict_or_module, Mapping):
        sd = state_dict_or_module
    else:
        raise ExcbError(f"convert_to_detectron2: expected a state dict or an nn.Module, got "
                        f"{type(state_dict_or_module).__name__}")
    sd = _strip_wrappers(sd)
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    unmapped: List[str] = []
    dropped: List[str] = []
    for k, v in sd.items():
        if CLASSIFIER.match(k):
            dropped.append(k)
            continue
        if not isinstance(v, torch.Tensor):
            unmapped.append(k)
            continue
        name = detectron2_name(k)
        if name is None:
            unmapped.append(k)
            continue
        if name in out:  # two inputs for one target would silently overwrite
            raise ExcbError(f"convert_to_detectron2: '{k}' maps to '{name}', which another tensor already took; "
                            f"the state dict mixes two layouts")
        out[name] = v.detach().to("cpu").clone()
    report = {"n_in": len(sd), "n_mapped": len(out), "unmapped": unmapped, "dropped": dropped,
              "arch_hint": _arch_hint(out)}
    return out, report


def _arch_hint(d2_sd: Mapping[str, torch.Tensor]) -> Optional[Dict[str, Any]]:
    """Depth and block type read off the converted tensors (for the Detectron2 config)."""
    blocks = {}
    for k in d2_sd:
        m = re.match(r"^res([2-5])\.(\d+)\.", k)
        if m:
            blocks[int(m[1])] = max(blocks.get(int(m[1]), 0), int(m[2]) + 1)
    if not blocks:
        return None
    bottleneck = any(k.endswith(".conv3.weight") for k in d2_sd)
    counts = tuple(blocks.get(i, 0) for i in (2, 3, 4, 5))
    depth = {(2, 2, 2, 2, False): 18, (3, 4, 6, 3, False): 34, (3, 4, 6, 3, True): 50,
             (3, 4, 23, 3, True): 101, (3, 8, 36, 3, True): 152}.get(counts + (bottleneck,))
    stem = d2_sd.get("stem.conv1.weight")
    last = d2_sd.get("res2.0.conv3.weight" if bottleneck else "res2.0.conv2.weight")
    return {"depth": depth, "blocks": list(counts), "bottleneck": bottleneck,
            "stem_kernel": int(stem.shape[-1]) if stem is not None else None,
            "res2_out_channels": int(last.shape[0]) if last is not None else None}


def require_complete(report: Dict[str, Any], source: str = "backbone") -> None:
    """Refuse a conversion that left tensors behind, and a stem Detectron2 cannot hold."""
    if report["unmapped"]:
        names = ", ".join(report["unmapped"][:6]) + (" ..." if len(report["unmapped"]) > 6 else "")
        raise ExcbError(f"{source}: {len(report['unmapped'])} tensor(s) have no Detectron2 name ({names}); "
                        f"only torchvision ResNets convert (ViT backbones are not supported by the C4 protocol)")
    hint = report.get("arch_hint") or {}
    if report["n_mapped"] == 0 or not hint:
        raise ExcbError(f"{source}: no ResNet tensors found to convert; pass a ResNet checkpoint")
    if hint.get("stem_kernel") not in (None, 7):
        raise ExcbError(f"{source}: the stem is a {hint['stem_kernel']}x{hint['stem_kernel']} conv "
                        f"(backbone stem='small'); Detectron2's ResNet needs the standard 7x7 stem")


def to_numpy_state(d2_sd: Mapping[str, torch.Tensor]) -> "OrderedDict[str, np.ndarray]":
    return OrderedDict((k, v.detach().cpu().numpy()) for k, v in d2_sd.items())


def save_detectron2_pickle(path: Union[str, Path], d2_sd: Mapping[str, Any]) -> Path:
    """Write the Detectron2 third-party weights pickle atomically (numpy arrays, heuristics on)."""
    model = OrderedDict((k, v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
                        for k, v in d2_sd.items())
    obj = {"model": model, "__author__": AUTHOR, "matching_heuristics": True}
    return atomic_write(path, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL))


def load_detectron2_pickle(path: Union[str, Path]) -> Dict[str, Any]:
    """Read back a pickle written by :func:`save_detectron2_pickle`: containers and numpy arrays only
    (restricted unpickler; a file asking for anything else is refused, naming it)."""
    from excb.safe_read import read_plain_pickle

    return read_plain_pickle(path, what="Detectron2 weights pickle")


def convert_checkpoint(path: Union[str, Path], out_path: Union[str, Path], format: str = "auto",
                       which: str = "teacher", arch: Optional[str] = None,
                       trust_pickle: bool = False) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Load a backbone through the checkpoint registry, convert it and write the pickle.

    Returns ``(report, info)`` where ``info`` is :func:`excb.checkpoint_formats.load_backbone`'s.
    """
    # lazy: the registry is only needed when a file is converted (the converter itself is not)
    from excb.checkpoint_formats import load_backbone

    module, _dim, info = load_backbone(str(path), format=format, which=which, arch=arch, trust_pickle=trust_pickle)
    d2_sd, report = convert_to_detectron2(module)
    require_complete(report, str(path))
    save_detectron2_pickle(out_path, d2_sd)
    return report, dict(info or {})


__all__ = ["convert_to_detectron2", "detectron2_name", "save_detectron2_pickle", "load_detectron2_pickle",
           "convert_checkpoint", "require_complete", "to_numpy_state", "AUTHOR"]
