"""Backbone registry: a name maps to a factory returning a module that outputs pooled features.

* torchvision ResNets (``resnet18``, ``resnet34``, ``resnet50``): ``fc`` replaced by
  ``Identity`` so the output is the pooled 512/2048-d vector and the state dict keeps
  torchvision's names (what third-party checkpoints and Detectron2 conversion expect).
  ``stem="small"`` swaps the 7x7/2 conv + max-pool for a 3x3/1 conv (CIFAR-style), for
  small images.
* any timm ViT (``vit_small_patch16_224`` is ViT-S/16): ``num_classes=0`` and CLS-token
  pooling, ``dynamic_img_size`` so local crops of another size work (DINO interpolates the
  position embeddings the same way).

Every returned module carries ``feature_dim`` and ``arch`` attributes.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import torch
from torch import nn

from excb import ExcbError

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}

RESNET_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048}


def register_backbone(name: str):
    def deco(fn):
        _REGISTRY[name] = fn
        return fn

    return deco


def _make_resnet(arch: str, stem: str = "standard", zero_init_residual: bool = False, **_: object) -> nn.Module:
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None, zero_init_residual=zero_init_residual)
    if stem == "small":
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif stem != "standard":
        raise ExcbError(f"backbone.stem: unknown value '{stem}'; use 'standard' or 'small'")
    model.fc = nn.Identity()
    model.feature_dim = RESNET_DIMS[arch]
    model.arch = arch
    return model


for _arch in RESNET_DIMS:
    register_backbone(_arch)(lambda _a=_arch, **kw: _make_resnet(_a, **kw))


def _make_timm_vit(name: str, img_size: int = 224, patch_size: int = 0, drop_path_rate: float = 0.1, **_: object) -> nn.Module:
    try:
        import timm
    except ImportError as e:  # pragma: no cover - timm is a dependency
        raise ExcbError("timm is required for ViT backbones: pip install timm") from e
    kwargs = dict(pretrained=False, num_classes=0, global_pool="token", img_size=img_size,
                  dynamic_img_size=True, drop_path_rate=drop_path_rate)
    if patch_size:
        kwargs["patch_size"] = patch_size
    try:
        model = timm.create_model(name, **kwargs)
    except RuntimeError as e:
        raise ExcbError(f"backbone.name: timm does not know '{name}' ({e}); see timm.list_models('vit_*')") from e
    model.feature_dim = model.num_features
    model.arch = name
    return model


def is_vit(name: str) -> bool:
    return name.startswith(("vit_", "deit", "eva", "beit"))


def list_backbones() -> list:
    return sorted(_REGISTRY) + ["<any timm ViT, e.g. vit_small_patch16_224>"]


def create_backbone(name: str, **kwargs) -> Tuple[nn.Module, int]:
    """Build a randomly initialised backbone. Returns ``(module, feature_dim)``."""
    if name in _REGISTRY:
        m = _REGISTRY[name](**kwargs)
    elif is_vit(name):
        m = _make_timm_vit(name, **kwargs)
    else:
        import difflib

        near = difflib.get_close_matches(name, list(_REGISTRY) + ["vit_small_patch16_224"], n=1)
        hint = f"; did you mean '{near[0]}'?" if near else f"; known: {', '.join(list_backbones())}"
        raise ExcbError(f"backbone.name: unknown backbone '{name}'{hint}")
    return m, m.feature_dim


@torch.no_grad()
def vit_last_blocks_cls(model: nn.Module, x: torch.Tensor, n: int = 4) -> torch.Tensor:
    """Concatenated (normed) CLS tokens of the last ``n`` blocks — DINO's ViT linear protocol."""
    x = model.patch_embed(x)
    x = model._pos_embed(x)
    x = model.patch_drop(x) if hasattr(model, "patch_drop") else x
    x = model.norm_pre(x) if hasattr(model, "norm_pre") else x
    outs = []
    nb = len(model.blocks)
    for i, blk in enumerate(model.blocks):
        x = blk(x)
        if i >= nb - n:
            outs.append(model.norm(x)[:, 0])
    return torch.cat(outs, dim=-1)
