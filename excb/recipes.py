"""``recipe: paper`` (default) and ``recipe: official-code`` (SPEC section 8).

Every way the authors' released code (github ManiadisG/ExCB, commit 7750bd5) departs from the
paper is a named config key whose default is the paper's value. ``recipe: official-code`` gives
each of those keys the released code's value — unless the config already sets the key to
something other than the paper default, which then wins. (To mix the other way — the paper with
one released behaviour — keep ``recipe: paper`` and set that key.) The resolved values are what
``results.json`` records under ``protocol``.

Backbone-specific released values that differ from a paper YAML's explicit setting (ViT: no
gradient clipping, no lr floor other than the factor, centroid wd 10x -> 1x on top of DINO's) are
set in ``configs/pretrain/vit_s16_official_code.yaml``.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Tuple

from excb import ExcbError
from excb.config import get_dotted, set_dotted

RECIPES = ("paper", "official-code")

# key -> the released code's value (file of ManiadisG/ExCB@7750bd5 where it is set)
OFFICIAL_CODE: Dict[str, Any] = {
    "loss.pairs": "official-code",                   # Trainer.unroll_batch matches (locals' h unused)
    "loss.normalization": "pair-mean",               # criterion.py: total_loss / loss_view_count
    "head.init": "trunc_normal",                     # architectures/layers.py MLP._init_weights
    "head.predictor_norm_input": True,               # predictor_activation: bn
    "backbone.zero_init_residual": True,             # architectures/backbones/resnet.py default
    "optim.min_lr_factor": 1.0e-4,                   # lr_min_factor
    "centroids.weight_decay_schedule": "base_x10_to_x1",   # centroid_adjustments: wdx10c1
    "centroids.init": "kmeans",                      # init_centroids: True, clustering_samples 500000
    "augment.blur_probs": [0.0, 0.9, 0.0],           # GaussianBlur applies 1 - p; locals get p_blur[0] = 1
    "augment.blur_kernel": 9,                        # T.GaussianBlur(kernel_size=9)
    "augment.global_min_scale_schedule": [0.26, 0.14],   # crop_min_scale -> crop_min_scale_final
    "augment.local_scale_follows_global": True,      # mini crops: scale=(0.05, crop_min_scale)
    "balancer.winner_boost": 0.01,                   # criterion.py centering: bt = 1 + 0.01 one_hot
    "balancer.zero_weight_noise": 1.0e-3,            # criterion.py centering_modifiers
}

# keys with a fixed set of values, checked with a one-line error (the config layer checks types only)
CHOICES: Dict[str, Tuple[str, ...]] = {
    "recipe": RECIPES,
    "head.init": ("torch", "trunc_normal"),
    "optim.clip_mode": ("per-param", "global"),
    "centroids.weight_decay_schedule": ("own", "base", "base_x10_to_x1"),
    "centroids.init": ("random", "kmeans"),
}


def validate_recipe_keys(cfg: Dict[str, Any], source: str = "config") -> None:
    for key, allowed in CHOICES.items():
        v = get_dotted(cfg, key)
        if v is not None and v not in allowed:
            raise ExcbError(f"{source}: key '{key}' must be one of {', '.join(map(repr, allowed))}, got {v!r}")


def apply_recipe(cfg: Dict[str, Any], defaults: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """``cfg`` with the recipe's values for every recipe key left at its paper default; returns the
    new config and the keys it changed."""
    if cfg.get("recipe", "paper") != "official-code":
        return cfg, []
    out = copy.deepcopy(cfg)
    changed = []
    for key, value in OFFICIAL_CODE.items():
        if get_dotted(out, key) == get_dotted(defaults, key) and get_dotted(out, key) != value:
            set_dotted(out, key, copy.deepcopy(value))
            changed.append(key)
    return out, changed
