"""Checkpoint formats: load a backbone from our checkpoints or anybody else's.

    model, feature_dim, info = load_backbone("dino_resnet50_pretrain.pth")            # auto-detect
    model, feature_dim, info = load_backbone("ckpt.pth", format="mocov3", arch="resnet50")

One function, :func:`load_backbone`, is the only way a stage obtains a pretrained backbone.
It (1) reads the file safely, (2) finds the layout in a registry of formats (or uses the
one the user names), (3) maps the keys to torchvision / timm names, (4) infers the
architecture from the tensors unless ``arch`` is given, builds it with
:func:`excb.backbones.create_backbone` and (5) loads it strictly.

Strictness: after mapping, the only keys allowed to be missing or unexpected are the
classifier's (``fc.*``, ``head.*``). Anything else is an :class:`~excb.ExcbError` listing
the keys — a silently half-loaded backbone gives plausible-looking but wrong numbers.

Pickle safety (PyTorch >= 2.6 defaults ``torch.load`` to ``weights_only=True``): files are
read by :func:`excb.safe_read.read_torch_file` (the project's one reader) with
``weights_only=True`` and a small allow-list of data-only classes that real SSL checkpoints
contain:

* ``argparse.Namespace`` — DINO, the authors' ExCB release and many others pickle their
  command-line arguments. Unpickling a Namespace only sets attributes on an empty object,
  and its attribute values still go through the restricted unpickler, so no code runs.
* numpy scalars, dtypes and arrays (``best_acc1`` and the like stored as ``np.float64``).

Anything else that needs a full unpickle (a custom class, a Lightning/omegaconf object, a
pickled ``nn.Module``) is refused, naming the offending globals, unless the caller passes
``trust_pickle=True`` (CLI: ``--trust-checkpoint``): a full unpickle can execute arbitrary
code from the file, so it must be an explicit decision about a file the user trusts.

Formats are registered with :func:`register_format`; each has ``detect(obj) -> bool``
(used by ``format="auto"``, first match in registration order, specific layouts before
the plain state dicts) and ``to_backbone_state(obj, which) -> (arch_guess, state_dict)``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from excb import ExcbError
from excb.backbones import create_backbone
from excb.finite import require_finite
from excb.io import sha256_file

StateDict = Dict[str, torch.Tensor]
WHICH = ("teacher", "student")
# keys of a classification head: the only ones allowed to be missing/unexpected after mapping
_CLASSIFIER = re.compile(r"^(fc|head)(\.|$)")


class FormatMismatch(Exception):
    """Raised by a format's ``to_backbone_state`` when the object does not have its layout."""


# ----------------------------------------------------------------------------- registry
@dataclass
class CheckpointFormat:
    name: str
    description: str
    detect: Callable[[Any], bool]
    to_backbone_state: Callable[[Any, str], Tuple[Optional[str], StateDict]]
    # build kwargs recorded in the checkpoint (ours); inferred from tensors otherwise
    build_kwargs: Callable[[Any], Dict[str, Any]] = lambda obj: {}
    # True if the file holds a teacher and a student (then ``which`` matters)
    two_networks: Callable[[Any], bool] = lambda obj: False


_FORMATS: Dict[str, CheckpointFormat] = {}


def register_format(name: str, description: str):
    """Class decorator: the class provides static ``detect`` and ``to_backbone_state``
    (optionally ``build_kwargs`` and ``two_networks``). Registration order is the
    auto-detection priority."""

    def deco(cls):
        fmt = CheckpointFormat(name, description, cls.detect, cls.to_backbone_state)
        if hasattr(cls, "build_kwargs"):
            fmt.build_kwargs = cls.build_kwargs
        if hasattr(cls, "two_networks"):
            fmt.two_networks = cls.two_networks
        _FORMATS[name] = fmt
        cls.format = fmt
        return cls

    return deco


def list_formats() -> List[str]:
    """``"name: description"`` for every registered format, in auto-detection order."""
    return [f"{f.name}: {f.description}" for f in _FORMATS.values()]


def format_names() -> List[str]:
    return list(_FORMATS)


def detect_format(obj: Any) -> Optional[str]:
    """Name of the first registered format whose ``detect`` accepts ``obj``, else None."""
    for f in _FORMATS.values():
        try:
            if f.detect(obj):
                return f.name
        except Exception:  # noqa: BLE001 - a detector must never break auto-detection
            continue
    return None


# ----------------------------------------------------------------------------- key helpers
def _is_state_dict(d: Any) -> bool:
    return isinstance(d, Mapping) and len(d) > 0 and all(isinstance(k, str) for k in d) and \
        sum(torch.is_tensor(v) for v in d.values()) >= max(1, len(d) // 2)


def _strip(sd: Mapping[str, Any], prefix: str) -> StateDict:
    """Entries under ``prefix`` with the prefix removed (tensors only)."""
    n = len(prefix)
    return {k[n:]: v for k, v in sd.items() if k.startswith(prefix) and torch.is_tensor(v)}


def _has_prefix(sd: Mapping[str, Any], prefix: str) -> bool:
    return any(isinstance(k, str) and k.startswith(prefix) for k in sd)


def _unwrap_module(sd: Mapping[str, Any]) -> Dict[str, Any]:
    """Drop a DistributedDataParallel ``module.`` prefix if every key carries it."""
    if sd and all(isinstance(k, str) and k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _drop(sd: Mapping[str, Any], *prefixes: str) -> StateDict:
    return {k: v for k, v in sd.items() if not k.startswith(prefixes) and torch.is_tensor(v)}


def _get_dict(obj: Any, key: str) -> Dict[str, Any]:
    if not isinstance(obj, Mapping) or not isinstance(obj.get(key), Mapping):
        raise FormatMismatch(f"no '{key}' dict at the top level")
    return obj[key]


def _plain_state(obj: Any) -> Dict[str, Any]:
    """A flat state dict, possibly wrapped in ``state_dict``/``model`` and/or ``module.``."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if _is_state_dict(obj.get(key)):
                return _unwrap_module(obj[key])
        if _is_state_dict(obj):
            return _unwrap_module(obj)
    raise FormatMismatch("not a flat state dict (nor one under 'state_dict'/'model')")


def _pick(obj: Any, which: str) -> Dict[str, Any]:
    if not isinstance(obj, Mapping) or not isinstance(obj.get(which), Mapping):
        have = [k for k in WHICH if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping)]
        raise FormatMismatch(f"no '{which}' network (has: {', '.join(have) or 'neither teacher nor student'})")
    return _unwrap_module(obj[which])


def _teacher_student(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(obj.get(k), Mapping) for k in WHICH)


def _resnet_root(sd: Mapping[str, Any]) -> bool:
    return "conv1.weight" in sd and _has_prefix(sd, "layer1.")


def _vit_root(sd: Mapping[str, Any]) -> bool:
    return ("cls_token" in sd or "patch_embed.proj.weight" in sd) and _has_prefix(sd, "blocks.")


def _backbone_root(sd: Mapping[str, Any]) -> bool:
    return _resnet_root(sd) or _vit_root(sd)


def _nonempty(sd: StateDict, what: str) -> StateDict:
    if not sd:
        raise FormatMismatch(f"no backbone tensors found under {what}")
    return sd


# ----------------------------------------------------------------------------- formats
@register_format("excb-bench", "our pretraining checkpoints (format tag 'excb-bench'; teacher or student)")
class _ExcbBench:
    @staticmethod
    def detect(obj: Any) -> bool:
        return isinstance(obj, Mapping) and obj.get("format") == "excb-bench"

    @staticmethod
    def to_backbone_state(obj: Any, which: str):
        sd = _strip(_pick(obj, which), "backbone.")
        bb = obj.get("backbone") if isinstance(obj.get("backbone"), Mapping) else {}
        return bb.get("name"), _nonempty(sd, f"'{which}' 'backbone.*'")

    @staticmethod
    def build_kwargs(obj: Any) -> Dict[str, Any]:
        bb = obj.get("backbone") if isinstance(obj.get("backbone"), Mapping) else {}
        return dict(bb.get("kwargs") or {})

    two_networks = staticmethod(lambda obj: True)


@register_format("excb-official", "the authors' ExCB release: student/teacher with backbone.* and classifier.*")
class _ExcbOfficial:
    @staticmethod
    def detect(obj: Any) -> bool:
        if not _teacher_student(obj):
            return False
        sd = _unwrap_module(obj["teacher"])
        return _has_prefix(sd, "backbone.") and _has_prefix(sd, "classifier.")

    @staticmethod
    def to_backbone_state(obj: Any, which: str):
        return None, _nonempty(_strip(_pick(obj, which), "backbone."), f"'{which}' 'backbone.*'")

    two_networks = staticmethod(lambda obj: True)


@register_format("dino", "DINO: full checkpoint (teacher/student, backbone.* [+ head.*]) or a bare backbone file")
class _Dino:
    @staticmethod
    def detect(obj: Any) -> bool:
        # bare DINO backbones are plain torchvision/timm state dicts: auto-detect names those
        if not _teacher_student(obj):
            return False
        sd = _unwrap_module(obj["teacher"])
        # head.* may have been stripped (teacher/student files that keep only backbone.*)
        return _has_prefix(sd, "backbone.") and all(str(k).startswith(("backbone.", "head.")) for k in sd)

    @staticmethod
    def to_backbone_state(obj: Any, which: str):
        if _teacher_student(obj):
            return None, _nonempty(_strip(_pick(obj, which), "backbone."), f"'{which}' 'backbone.*'")
        sd = _plain_state(obj)
        if _has_prefix(sd, "backbone."):
            sd = _strip(sd, "backbone.")
        if not _backbone_root(sd):
            raise FormatMismatch("neither teacher/student nor a bare ResNet/ViT backbone")
        return None, sd

    two_networks = staticmethod(_teacher_student)


def _under_state_dict(obj: Any, prefixes: Tuple[str, ...]) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping) and \
        any(_has_prefix(obj["state_dict"], p) for p in prefixes)


@register_format("mocov2", "MoCo v1/v2: state_dict with module.encoder_q.* (fc head dropped)")
class _MocoV2:
    @staticmethod
    def detect(obj: Any) -> bool:
        return _under_state_dict(obj, ("module.encoder_q.", "encoder_q."))

    @staticmethod
    def to_backbone_state(obj: Any, which: str):
        sd = _unwrap_module(_get_dict(obj, "state_dict"))
        return None, _nonempty(_drop(_strip(sd, "encoder_q."), "fc."), "'state_dict' 'module.encoder_q.*'")


@register_format("mocov3", "MoCo v3: state_dict with module.base_encoder.* (fc/head, momentum encoder, predictor dropped)")
class _MocoV3:
    @staticmethod
    def detect(obj: Any) -> bool:
        return _under_state_dict(obj, ("module.base_encoder.", "base_encoder."))

    @staticmethod
    def to_backbone_state(obj: Any, which: str):
        sd = _unwrap_module(_get_dict(obj, "state_dict"))
        return None, _nonempty(_drop(_strip(sd, "base_encoder."), "fc.", "head."),
                               "'state_dict' 'module.base_encoder.*'")


@register_format("simsiam", "SimSiam: state_dict with module.encoder.* (projector fc.* and predictor dropped)")
class _SimSiam:
    @staticmethod
    def detect(obj: Any) -> bool:
        return _under_state_dict(obj, ("module.encoder.", "encoder."))

    @staticmethod
    def to_backbone_state(obj: Any, which: str):
        sd = _unwrap_module(_get_dict(obj, "state_dict"))
        return None, _nonempty(_drop(_strip(sd, "encoder."), "fc."), "'state_dict' 'module.encoder.*'")


def _vissl_trunk(obj: Any) -> Dict[str, Any]:
    try:
        trunk = obj["classy_state_dict"]["base_model"]["model"]["trunk"]
    except (KeyError, TypeError) as e:
        raise FormatMismatch("no classy_state_dict.base_model.model.trunk") from e
    if not isinstance(trunk, Mapping):
        raise FormatMismatch("classy_state_dict.base_model.model.trunk is not a dict")
    return _unwrap_module(trunk)


@register_format("vissl", "VISSL: classy_state_dict.base_model.model.trunk with _feature_blocks.*")
class _Vissl:
    @staticmethod
    def detect(obj: Any) -> bool:
        return isinstance(obj, Mapping) and "classy_state_dict" in obj and \
            _has_prefix(_vissl_trunk(obj), "_feature_blocks.")

    @staticmethod
    def to_backbone_state(obj: Any, which: str):
        return None, _nonempty(_strip(_vissl_trunk(obj), "_feature_blocks."), "trunk '_feature_blocks.*'")


@register_format("solo-learn", "solo-learn (Lightning): state_dict with backbone.* plus projector/classifier")
class _SoloLearn:
    @staticmethod
    def detect(obj: Any) -> bool:
        return isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping) and \
            _backbone_root(_strip(_unwrap_module(obj["state_dict"]), "backbone."))

    @staticmethod
    def to_backbone_state(obj: Any, which: str):
        sd = _unwrap_module(_get_dict(obj, "state_dict"))
        return None, _nonempty(_strip(sd, "backbone."), "'state_dict' 'backbone.*'")


@register_format("swav", "SwAV / DeepCluster-v2: module.* backbone with projection_head.* and prototypes.*")
class _Swav:
    @staticmethod
    def detect(obj: Any) -> bool:
        try:
            sd = _plain_state(obj)
        except FormatMismatch:
            return False
        return _resnet_root(sd) and (_has_prefix(sd, "projection_head.") or _has_prefix(sd, "prototypes."))

    @staticmethod
    def to_backbone_state(obj: Any, which: str):
        sd = _drop(_plain_state(obj), "projection_head.", "prototypes.")
        return None, _nonempty(sd, "the root (after 'module.')")


@register_format("torchvision", "plain torchvision ResNet state dict (optionally under state_dict/model, module.)")
class _Torchvision:
    @staticmethod
    def detect(obj: Any) -> bool:
        try:
            return _resnet_root(_plain_state(obj))
        except FormatMismatch:
            return False

    @staticmethod
    def to_backbone_state(obj: Any, which: str):
        sd = _plain_state(obj)
        if not _resnet_root(sd):
            raise FormatMismatch("no conv1.weight/layer1.* at the root (nor under state_dict/model)")
        return None, sd


@register_format("timm", "plain timm ViT state dict (optionally under state_dict/model, module.)")
class _Timm:
    @staticmethod
    def detect(obj: Any) -> bool:
        try:
            return _vit_root(_plain_state(obj))
        except FormatMismatch:
            return False

    @staticmethod
    def to_backbone_state(obj: Any, which: str):
        sd = _plain_state(obj)
        if not _vit_root(sd):
            raise FormatMismatch("no cls_token/patch_embed/blocks.* at the root (nor under state_dict/model)")
        return None, sd


# ----------------------------------------------------------------------------- architecture
_RESNET_DEPTHS = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
                  ("bottleneck", (3, 4, 6, 3)): "resnet50", ("bottleneck", (3, 4, 23, 3)): "resnet101",
                  ("bottleneck", (3, 8, 36, 3)): "resnet152"}
_VIT_SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1280: "huge"}


def _infer_resnet(sd: Mapping[str, torch.Tensor]) -> Tuple[str, Dict[str, Any]]:
    kind = "bottleneck" if "layer1.0.conv3.weight" in sd else "basic"
    blocks = []
    for i in range(1, 5):
        idx = {int(m.group(1)) for k in sd for m in [re.match(rf"layer{i}\.(\d+)\.", k)] if m}
        blocks.append(max(idx) + 1 if idx else 0)
    name = _RESNET_DEPTHS.get((kind, tuple(blocks)))
    if name is None:
        # a block is missing (or extra): name the smallest known ResNet that covers what is
        # there, so the strict load that follows lists exactly the missing keys
        covering = [(sum(d), n) for (k, d), n in _RESNET_DEPTHS.items()
                    if k == kind and all(b <= c for b, c in zip(blocks, d))]
        name = min(covering)[1] if covering else f"resnet(<{kind}> {'-'.join(map(str, blocks))})"
    width = sd["layer1.0.conv1.weight"].shape[0] if "layer1.0.conv1.weight" in sd else 64
    if kind == "bottleneck" and width != 64:  # wide ResNets double the inner width
        name = f"{name} (inner width {width}, wide?)"
    kwargs = {"stem": "small" if sd["conv1.weight"].shape[-1] == 3 else "standard"}
    return name, kwargs


def _infer_vit(sd: Mapping[str, torch.Tensor]) -> Tuple[str, Dict[str, Any]]:
    w = sd["patch_embed.proj.weight"]
    dim, patch = int(w.shape[0]), int(w.shape[-1])
    depth = 1 + max(int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m)
    size = _VIT_SIZES.get(dim)
    kwargs: Dict[str, Any] = {}
    if "pos_embed" in sd:
        n_tok = sd["pos_embed"].shape[1] - (1 if "cls_token" in sd else 0)
        grid = int(round(math.sqrt(n_tok)))
        if grid * grid == n_tok:
            kwargs["img_size"] = grid * patch
    if size is None:
        return f"vit(embed dim {dim}, depth {depth}, patch {patch})", kwargs
    name = f"vit_{size}_patch{patch}_224"
    import timm

    if name not in timm.list_models(name):
        name = f"vit_{size}_patch16_224"
        kwargs["patch_size"] = patch
    return name, kwargs


def infer_arch(sd: Mapping[str, torch.Tensor]) -> Optional[Tuple[str, Dict[str, Any]]]:
    """``(create_backbone name, kwargs)`` read off a torchvision/timm-named state dict, or None.

    Names that ``create_backbone`` does not know (e.g. a wide ResNet) come back descriptive,
    so the error that follows tells the user what the file holds."""
    try:
        if _resnet_root(sd):
            return _infer_resnet(sd)
        if "patch_embed.proj.weight" in sd and _has_prefix(sd, "blocks."):
            return _infer_vit(sd)
    except (KeyError, ValueError, IndexError, AttributeError):
        return None
    return None


# ----------------------------------------------------------------------------- reading
def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> Any:
    """A checkpoint on the CPU, read by :func:`excb.safe_read.read_torch_file` (weights-only; a file
    needing a full unpickle is refused, naming its globals, unless ``trust_pickle``)."""
    from excb.safe_read import read_torch_file

    return read_torch_file(path, trust=trust_pickle, what="PyTorch checkpoint")


# ----------------------------------------------------------------------------- loading
def which_part(fmt: CheckpointFormat, obj: Any, which: str) -> str:
    """How messages name the network read from a checkpoint ("teacher backbone" / "backbone")."""
    return f"{which} backbone" if fmt.two_networks(obj) else "backbone"


def _summarise(keys: List[str], limit: int = 8, group: bool = True) -> str:
    """``"N [a.{x,y}, b.z, ... (+M more)]"``: keys grouped by parent module, long lists cut."""
    keys = sorted(keys)
    groups: Dict[str, List[str]] = {}
    for k in keys:
        parent, _, leaf = k.rpartition(".") if group else ("", "", k)
        groups.setdefault(parent, []).append(leaf)
    items = [(f"{p}." if p else "") + (f"{{{','.join(ls)}}}" if len(ls) > 1 else ls[0]) for p, ls in groups.items()]
    more = sum(len(ls) for ls in list(groups.values())[limit:])
    return f"{len(keys)} [{', '.join(items[:limit])}{f', ... (+{more} more)' if more else ''}]"


def _load_strict(model: nn.Module, sd: StateDict, path: Path, fmt: str, arch: str) -> List[str]:
    """Load ``sd`` into ``model``; return the classifier keys that were allowed to differ."""
    own = model.state_dict()
    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        raise ExcbError(f"{path}: {fmt} checkpoint does not fit {arch}: shape mismatch in {_summarise(mismatched, group=False)} "
                        f"(checkpoint vs model); pass the right --arch")
    res = model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    missing = list(res.missing_keys)
    unexpected = [k for k in sd if k not in own] + list(res.unexpected_keys)
    bad_missing = [k for k in missing if not _CLASSIFIER.match(k)]
    bad_unexpected = [k for k in unexpected if not _CLASSIFIER.match(k)]
    if bad_missing or bad_unexpected:
        parts = []
        if bad_missing:
            parts.append(f"missing {_summarise(bad_missing)}")
        if bad_unexpected:
            parts.append(f"unexpected {_summarise(bad_unexpected)}")
        raise ExcbError(f"{path}: {fmt} checkpoint does not load into {arch}: " + "; ".join(parts) +
                        " (only fc.*/head.* may differ); check --format/--arch, or the file is incomplete")
    return sorted(set(missing + unexpected))


def load_backbone(path: str | Path, format: str = "auto", which: str = "teacher", arch: Optional[str] = None,
                  trust_pickle: bool = False) -> Tuple[nn.Module, int, Dict[str, Any]]:
    """Backbone of any supported checkpoint, strictly loaded, in eval mode.

    Returns ``(module, feature_dim, info)`` with ``info = {"path", "sha256", "format",
    "which", "arch", "kwargs", "n_tensors", "missing_allowed"}``; ``which`` is None for
    files that hold a single network. ``format="auto"`` detects the layout (see
    :func:`list_formats`); ``arch`` overrides the architecture read off the tensors.
    """
    path = Path(path)
    if which not in WHICH:
        raise ExcbError(f"which: unknown value '{which}'; use 'teacher' or 'student'")
    if format != "auto" and format not in _FORMATS:
        import difflib

        near = difflib.get_close_matches(format, list(_FORMATS), n=1)
        hint = f"did you mean '{near[0]}'?" if near else f"known: auto, {', '.join(_FORMATS)}"
        raise ExcbError(f"format: unknown checkpoint format '{format}'; {hint}")
    obj = read_checkpoint(path, trust_pickle=trust_pickle)
    if isinstance(obj, nn.Module):  # a pickled model (only reachable with trust_pickle)
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise ExcbError(f"{path}: not a checkpoint dict (top level is {type(obj).__name__}); "
                        f"expected a state dict or a training checkpoint")

    if format == "auto":
        name = detect_format(obj)
        if name is None:
            top = ", ".join(sorted(map(str, obj))[:10]) + (" ..." if len(obj) > 10 else "")
            raise ExcbError(f"{path}: no known checkpoint layout recognised (top-level keys: {top}); pass "
                            f"--format (one of {', '.join(_FORMATS)}) and, if needed, --arch")
    else:
        name = format
    fmt = _FORMATS[name]
    try:
        arch_guess, sd = fmt.to_backbone_state(obj, which)
    except FormatMismatch as e:
        seen = detect_format(obj)
        hint = f"it looks like '{seen}'" if seen and seen != name else "try --format auto"
        raise ExcbError(f"{path}: not a {name} checkpoint ({e}); {hint}") from e

    inferred = infer_arch(sd)
    kwargs: Dict[str, Any] = dict(inferred[1]) if inferred else {}
    kwargs.update(fmt.build_kwargs(obj))
    if arch is not None:
        build_name = arch
        kwargs.pop("patch_size", None)  # the requested name decides the patch size
    else:
        build_name = arch_guess or (inferred[0] if inferred else None)
        if build_name is None:
            raise ExcbError(f"{path}: cannot infer the architecture of this {name} checkpoint; pass --arch "
                            f"(e.g. resnet50 or vit_small_patch16_224)")
    try:
        model, feature_dim = create_backbone(build_name, **kwargs)
    except ExcbError as e:
        raise ExcbError(f"{path}: cannot build the backbone of this {name} checkpoint ({e}); pass --arch") from e
    if arch is not None and inferred is not None:
        built = infer_arch(model.state_dict())
        if built is not None and built[0] != inferred[0]:
            raise ExcbError(f"{path}: the checkpoint holds a {inferred[0]} backbone but arch='{arch}' "
                            f"({built[0]}) was requested; drop --arch or pass the matching one")
    # a diverged checkpoint embeds everything as NaN, and k-NN on NaN still "classifies" at chance
    require_finite(((k, v) for k, v in sd.items() if not _CLASSIFIER.match(k)), f"{path}: {which_part(fmt, obj, which)}",
                   "the weights diverged or the file is damaged; use an earlier checkpoint")
    allowed = _load_strict(model, sd, path, name, build_name)
    model.eval()
    info = {"path": str(path), "sha256": sha256_file(path), "format": name,
            "which": which if fmt.two_networks(obj) else None, "arch": build_name, "kwargs": kwargs,
            "n_tensors": sum(1 for k in sd if not _CLASSIFIER.match(k)), "missing_allowed": allowed}
    return model, feature_dim, info


__all__ = ["load_backbone", "list_formats", "format_names", "detect_format", "register_format", "infer_arch",
           "read_checkpoint", "CheckpointFormat", "FormatMismatch"]
