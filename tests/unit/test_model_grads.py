"""Where gradients flow (SPEC section 1) and the teacher's EMA update."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from excb.balancing import create_balancer
from excb.loss import excb_loss
from excb.model import ExCBStudent, ExCBTeacher, build_models

G, L, N, K = 2, 2, 6, 16
HEAD = {"hidden_dim": 32, "out_dim": 16, "predictor_hidden_dim": 32}


class TinyBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3))


def _models(seed=0):
    torch.manual_seed(seed)
    student = ExCBStudent(TinyBackbone(), 8, K, HEAD)
    return student, ExCBTeacher(student)


def _views(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(N, 3, 12, 12, generator=g) for _ in range(G)] + \
           [torch.randn(N, 3, 6, 6, generator=g) for _ in range(L)]


def _grad(p):
    return torch.zeros_like(p) if p.grad is None else p.grad


def _nonzero(p):
    return p.grad is not None and p.grad.abs().sum().item() > 0


def test_full_loss_no_gradient_into_teacher_but_into_centroids():
    student, teacher = _models()
    views = _views()
    z_t = teacher(views[:G]).flatten(0, 1)
    assert not z_t.requires_grad
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not any(n.startswith("predictor") for n, _ in teacher.named_parameters())
    p_t, _ = create_balancer("excb", K).teacher_probs(z_t, 0.04)
    z_h, z_g = student(views, G)
    loss, _ = excb_loss(p_t.chunk(G), z_h, z_g, 0.1)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert _nonzero(student.centroids.weight)
    for name in ("backbone.conv.weight", "projector.0.weight", "predictor.0.weight"):
        assert _nonzero(dict(student.named_parameters())[name]), name


def test_local_crops_do_not_move_centroids():
    student, _ = _models()
    z_h, _ = student(_views(), G)
    sum(z.sum() for z in z_h[G:]).backward()  # only the local views' projector outputs
    assert _grad(student.centroids.weight).abs().max().item() == 0.0
    assert _nonzero(student.projector[0].weight) and _nonzero(student.backbone.conv.weight)


def test_local_crops_move_centroids_when_stop_grad_disabled():
    # the same probe detects a flow when there is one (the test above could fail)
    student, _ = _models()
    z_h, _ = student(_views(), G, local_stop_grad=False)
    sum(z.sum() for z in z_h[G:]).backward()
    assert _nonzero(student.centroids.weight)


def test_predictor_path_does_not_move_centroids():
    student, _ = _models()
    _, z_g = student(_views(), G)
    sum((z ** 2).sum() for z in z_g).backward()  # loss of z_g only, all views
    assert _grad(student.centroids.weight).abs().max().item() == 0.0
    assert _nonzero(student.predictor[0].weight) and _nonzero(student.predictor[-1].weight)
    assert _nonzero(student.projector[0].weight)


def test_global_projector_path_moves_centroids():
    student, _ = _models()
    z_h, _ = student(_views(), G)
    sum((z ** 2).sum() for z in z_h[:G]).backward()
    assert _nonzero(student.centroids.weight)


def test_teacher_starts_as_copy_and_ema_is_exact():
    student, teacher = _models()
    s_params = dict(student.named_parameters())
    for name, p in teacher.named_parameters():
        assert torch.equal(p, s_params[name]), name
    # move the student, keep a copy of the teacher
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    m = 0.9
    teacher.ema_update(student, m)
    names = [n for n, _ in teacher.named_parameters()]
    assert any(n.startswith("backbone.") for n in names)
    assert any(n.startswith("projector.") for n in names)
    assert "centroids.weight" in names
    for name, p in teacher.named_parameters():
        expected = m * before[name].double() + (1 - m) * s_params[name].detach().double()
        torch.testing.assert_close(p.double(), expected, rtol=1e-6, atol=1e-7)
        assert not torch.equal(p, before[name])
    # m = 1 leaves the teacher untouched; m = 0 copies the student
    snap = {n: p.clone() for n, p in teacher.named_parameters()}
    teacher.ema_update(student, 1.0)
    assert all(torch.equal(p, snap[n]) for n, p in teacher.named_parameters())
    teacher.ema_update(student, 0.0)
    assert all(torch.equal(p, s_params[n]) for n, p in teacher.named_parameters())


def test_views_are_returned_per_view_in_order():
    """Per-view chunks must line up with the input views (globals first, then locals)."""
    student, teacher = _models()
    student.eval()
    teacher.eval()
    views = _views()
    z_h, z_g = student(views, G)
    assert len(z_h) == len(z_g) == G + L and all(z.shape == (N, K) for z in z_h)
    for i, v in enumerate(views):
        zh_i, _ = student([v, v], 2)  # the same view alone (eval mode: no batch statistics)
        torch.testing.assert_close(z_h[i], zh_i[0], rtol=1e-5, atol=1e-6)
    zt = teacher(views[:G])
    torch.testing.assert_close(zt[1], teacher([views[1]])[0], rtol=1e-5, atol=1e-6)
    assert zt[0].abs().max() <= 1 + 1e-6  # cosine similarities


def test_build_models_resnet18_keys():
    student, teacher = build_models({"name": "resnet18"}, HEAD, K)
    keys = set(teacher.state_dict())
    assert "backbone.conv1.weight" in keys and "backbone.layer4.1.bn2.running_var" in keys
    assert "centroids.weight" in keys and not any(k.startswith("predictor") for k in keys)
    assert any(k.startswith("predictor.") for k in student.state_dict())
