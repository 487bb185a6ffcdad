"""Student and teacher networks (SPEC section 1).

student:  z_h = q(h(f(x)))            centroids detached for local crops
          z_g = q̄(g(h(f(x))))         centroids always detached (the predictor never moves them)
teacher:  z_t = q_t(h_t(f_t(x)))      global views only, no gradient, EMA of f, h, q
"""
from __future__ import annotations

import copy
from itertools import groupby
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from excb.backbones import create_backbone
from excb.heads import CentroidLayer, centroid_precision, cosine_logits, mlp

HEAD_DEFAULTS: Dict[str, Any] = {
    "hidden_dim": 2048,
    "out_dim": 256,
    # The paper counts *hidden* layers, as DINO (SPEC section 1): h is a "2-layer MLP" = 3 Linear
    # layers (2048 -> 2048 -> 2048 -> 256), g a "1-layer MLP" = 2 Linear (256 -> 2048 -> 256).
    "hidden_layers": 2,
    "norm": "bn",           # "bn" (ResNet recipes) or "none" (ViT, as DINO's head)
    "act": "relu",
    "init": "torch",        # "torch" default init | "trunc_normal" (std 0.02: DINO's head, the released code)
    "predictor": True,      # False: no g and no predictor term in the loss (Table 8, first row)
    "predictor_hidden_dim": 2048,
    "predictor_hidden_layers": 1,
    "predictor_norm_input": False,  # official code: BN on the predictor input
}


def _forward_backbone(backbone: nn.Module, views: Sequence[torch.Tensor]) -> torch.Tensor:
    """One backbone call per run of equally-sized views (DINO's multi-crop batching)."""
    feats = []
    start = 0
    for _, grp in groupby(views, key=lambda v: tuple(v.shape[-2:])):
        n = len(list(grp))
        x = torch.cat(list(views[start:start + n]))
        feats.append(backbone(x))
        start += n
    return torch.cat(feats)


class ExCBStudent(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, num_clusters: int, head: Dict[str, Any]):
        super().__init__()
        head = {**HEAD_DEFAULTS, **head}
        self.backbone = backbone
        self.projector = mlp(feature_dim, head["hidden_dim"], head["out_dim"], head["hidden_layers"], head["norm"],
                             head["act"], init=head["init"])
        self.predictor: Optional[nn.Module] = None
        if head["predictor"]:
            self.predictor = mlp(head["out_dim"], head["predictor_hidden_dim"], head["out_dim"],
                                 head["predictor_hidden_layers"], head["norm"], head["act"],
                                 norm_input=head["predictor_norm_input"], init=head["init"])
        self.centroids = CentroidLayer(head["out_dim"], num_clusters)

    def forward(self, views: Sequence[torch.Tensor], n_global: int, local_stop_grad: bool = True
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Returns ``z_h`` and ``z_g`` as (V, B, K) tensors (globals first); ``z_g`` is None without
        a predictor."""
        b, V = views[0].shape[0], len(views)
        h = self.projector(_forward_backbone(self.backbone, views))
        g = self.predictor(h) if self.predictor is not None else None   # still under autocast
        with centroid_precision():
            w = self.centroids.normalized_weight()          # once per step, shared by all views
            # local crops see the centroids but do not move them (stop-gradient)
            z_h = cosine_logits(h, w, n_global * b if local_stop_grad else None)
            z_g = None if g is None else cosine_logits(g, w.detach()).view(V, b, -1)   # never moves them
        return z_h.view(V, b, -1), z_g


class ExCBTeacher(nn.Module):
    def __init__(self, student: ExCBStudent):
        super().__init__()
        self.backbone = copy.deepcopy(student.backbone)
        self.projector = copy.deepcopy(student.projector)
        self.centroids = copy.deepcopy(student.centroids)
        for p in self.parameters():
            p.requires_grad_(False)
        disable_stochastic_depth(self.backbone)   # DINO's teacher ViT is built without drop-path

    @torch.no_grad()
    def forward(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """(V, B, K) cosine similarities of the views to the teacher's centroids."""
        h = self.projector(_forward_backbone(self.backbone, views))
        with centroid_precision():
            z = self.centroids(h)
        return z.view(len(views), views[0].shape[0], -1)

    @torch.no_grad()
    def ema_update(self, student: ExCBStudent, m: float) -> None:
        """θ_t <- m θ_t + (1-m) θ_s for backbone, projector and centroids."""
        s_params = dict(student.named_parameters())
        t_list, s_list = [], []
        for name, p in self.named_parameters():
            t_list.append(p.data)
            s_list.append(s_params[name].detach().data)
        torch._foreach_lerp_(t_list, s_list, 1.0 - m)   # one pass: t + (1-m)(s - t)


def disable_stochastic_depth(module: nn.Module) -> int:
    """Set every stochastic-depth (drop-path) rate inside ``module`` to 0; returns how many.

    DINO builds its teacher without drop-path (main_dino.py: ``vits.__dict__[arch](patch_size=...)``
    for the teacher, ``drop_path_rate`` only for the student), and so does the ExCB release
    (``VisionTransformer(teacher=True)`` sets it to 0). A deep copy of the student would keep it."""
    n = 0
    for m in module.modules():
        if type(m).__name__ == "DropPath" and hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
            n += 1
    return n


def build_models(backbone_cfg: Dict[str, Any], head_cfg: Dict[str, Any], num_clusters: int
                 ) -> Tuple[ExCBStudent, ExCBTeacher]:
    kwargs = {k: v for k, v in backbone_cfg.items() if k != "name"}
    backbone, dim = create_backbone(backbone_cfg["name"], **kwargs)
    student = ExCBStudent(backbone, dim, num_clusters, head_cfg)
    teacher = ExCBTeacher(student)
    return student, teacher
