"""The order of one training step (issue 11) and the released code's balancer tweaks, against
values computed by hand in this file (NumPy, float64) from the teacher's captured similarities."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import excb.train as T
from excb.balancing import create_balancer
from excb.io import JsonlLogger
from excb.model import build_models
from tiny_helpers import make_tiny_config


def _softmax(x, tau):
    x = x / tau
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _eq10(z, s):
    """B(z; s) of Eq. 10, branch by branch, for z (rows, K) and s (K,)."""
    sK = s * len(s)
    safe = np.where(sK > 0, sK, 1.0)
    return np.where(sK < 1, 1 - (1 - z) * sK, np.where(sK > 1, (1 + z) / safe - 1, z))


def _two_steps(monkeypatch, **balancer_kw):
    """Two real steps of ``train_one_epoch`` on two fixed batches; returns what the loss saw
    (p_t, s at that moment), the teacher similarities of each step and the final s."""
    K, B, m_s, tau = 16, 8, 0.5, 0.04
    cfg = make_tiny_config(**{"centroids.K": K, "batch_size": B, "balancer.momentum": m_s, "optim.warmup_epochs": 0,
                              "head.hidden_dim": 32, "head.out_dim": 16, "head.predictor_hidden_dim": 32,
                              "epochs": 1})
    torch.manual_seed(0)
    student, teacher = build_models(cfg["backbone"], cfg["head"], K)
    teacher.load_state_dict({k: v for k, v in student.state_dict().items() if not k.startswith("predictor.")})
    b = cfg["balancer"]
    balancer = create_balancer(b["name"], K, **{**{k: v for k, v in b.items() if k != "name"}, **balancer_kw})
    optimizer = T.build_optimizer(student, cfg)
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(2):
        views = [torch.randn(B, 3, 32, 32, generator=g) for _ in range(2)] + \
                [torch.randn(B, 3, 16, 16, generator=g) for _ in range(2)]
        batches.append((views, torch.zeros(B, dtype=torch.long)))
    seen, z_seen = [], []
    real_loss = T.excb_loss

    def spy_loss(p_t, *args, **kw):
        seen.append((p_t.detach().double().flatten(0, 1).numpy().copy(), balancer.s.double().numpy().copy()))
        return real_loss(p_t, *args, **kw)

    monkeypatch.setattr(T, "excb_loss", spy_loss)
    teacher.register_forward_hook(lambda m, i, o: z_seen.append(o.detach().double().flatten(0, 1).numpy().copy()))
    student.train(), teacher.train()
    T.train_one_epoch(student, student, teacher, balancer, optimizer, None, batches, T.build_schedules(cfg, 2), 0,
                      cfg, torch.device("cpu"), JsonlLogger("/dev/null", enabled=False), progress=False)
    return seen, z_seen, balancer.s.double().numpy(), (K, m_s, tau)


def test_step_balances_with_previous_s_then_updates_it(monkeypatch):
    """Hand trace of two steps (SPEC section 2): step t balances with s_{t-1}, labels are the argmax
    of the balanced output, and only then s_t = m s_{t-1} + (1 - m) counts / rows. Moving the s
    update before the balancing changes p_t at step 1 (it would no longer be a plain softmax at
    uniform s) and both p_t and s afterwards."""
    seen, z, s_final, (K, m, tau) = _two_steps(monkeypatch)
    assert len(seen) == 2 and len(z) == 2
    rows = z[0].shape[0]
    s0 = np.full(K, 1.0 / K)
    # step 1: uniform s -> B is the identity
    p1 = _softmax(z[0], tau)
    np.testing.assert_allclose(seen[0][1], s0, rtol=0, atol=1e-9)       # s the loss saw = s_0
    np.testing.assert_allclose(seen[0][0], p1, rtol=0, atol=1e-5)
    a1 = _eq10(z[0], s0).argmax(-1)
    s1 = m * s0 + (1 - m) * np.bincount(a1, minlength=K) / rows
    # step 2: balanced with s_1
    zb2 = _eq10(z[1], s1)
    np.testing.assert_allclose(seen[1][1], s1, rtol=0, atol=1e-6)
    np.testing.assert_allclose(seen[1][0], _softmax(zb2, tau), rtol=0, atol=1e-5)
    s2 = m * s1 + (1 - m) * np.bincount(zb2.argmax(-1), minlength=K) / rows
    np.testing.assert_allclose(s_final, s2, rtol=0, atol=1e-6)
    assert np.abs(s1 - s0).max() > 1e-2 and np.abs(_softmax(zb2, tau) - _softmax(z[1], tau)).max() > 1e-2


def test_the_trace_catches_an_update_moved_before_balancing(monkeypatch):
    """The mutation itself (Algorithm 1's order, s updated before the batch is balanced) fails the
    hand trace above."""
    seen, z, s_final, (K, m, tau) = _two_steps(monkeypatch, update="before")
    with pytest.raises(AssertionError):     # p_t of step 1 is no longer softmax(z_t / τ) at s_0
        np.testing.assert_allclose(seen[0][0], _softmax(z[0], tau), rtol=0, atol=1e-5)
    with pytest.raises(AssertionError):     # the loss of step 2 saw s_2, not s_1
        s0 = np.full(K, 1.0 / K)
        s1 = m * s0 + (1 - m) * np.bincount(z[0].argmax(-1), minlength=K) / z[0].shape[0]
        np.testing.assert_allclose(seen[1][1], s1, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- released-code tweaks
def test_winner_boost_and_clamp_by_hand():
    """engine/criterion.py: after B the row's winner is multiplied by 1.01 (so a negative winner
    drops, and can lose its place) and z is clamped to [-1, 1]."""
    K, tau = 4, 0.04
    bal = create_balancer("excb", K, winner_boost=0.01)
    z = torch.tensor([[-0.5, -0.2, -0.201, -0.9],      # uniform s: B = identity; -0.2 * 1.01 = -0.202
                      [0.3, 0.995, 0.1, 0.0]], dtype=torch.float64)   # 0.995 * 1.01 > 1 -> clamped
    p, assign = bal.teacher_probs(z, tau)
    zb = np.array([[-0.5, -0.202, -0.201, -0.9], [0.3, 1.0, 0.1, 0.0]])
    np.testing.assert_allclose(p.numpy(), _softmax(zb, tau), rtol=1e-9, atol=1e-12)
    assert assign.tolist() == [2, 1]
    # the paper recipe has neither
    p0, a0 = create_balancer("excb", K).teacher_probs(z, tau)
    np.testing.assert_allclose(p0.numpy(), _softmax(z.numpy(), tau), rtol=1e-6, atol=1e-9)
    assert a0.tolist() == [1, 1]


def test_zero_weight_noise_only_where_the_weight_is_zero():
    """criterion.py centering_modifiers: weight sK (undersized branch) += U(0, 1e-3) where it is
    exactly 0, i.e. for an empty cluster B(z) = 1 - (1 - z) eps instead of exactly 1."""
    K, tau = 4, 0.04
    s = torch.tensor([0.0, 0.0, 0.5, 0.5])
    z = torch.tensor([[0.2, -0.4, 0.9, 0.1]])
    plain = create_balancer("excb", K)
    plain.s.copy_(s)
    noisy = create_balancer("excb", K, zero_weight_noise=1e-3)
    noisy.s.copy_(s)
    torch.manual_seed(0)
    a, b = noisy.coefficients()
    assert float(a[0]) > 0 and float(a[1]) > 0                                 # the empty clusters got noise
    assert float(a[0]) <= 1e-3 and float(a[1]) <= 1e-3
    np.testing.assert_allclose(a[2:].numpy(), [0.5, 0.5])                      # oversized: 1/(sK) = 1/2, untouched
    zb = noisy.balanced(z, (a, b))
    w = a[:2].double().numpy()
    np.testing.assert_allclose(zb[0, :2].numpy(), 1 - (1 - z[0, :2].double().numpy()) * w, rtol=1e-6)
    assert float(zb[0, :2].max()) < 1.0
    assert torch.equal(plain.balanced(z)[0, :2], torch.ones(2))               # without noise: exactly 1


def test_centroids_frozen_during_the_first_epochs():
    """DINO's freeze_last_layer (utils.cancel_gradients_last_layer): during epoch < freeze_epochs the
    centroid layer gets no gradient, so neither SGD nor its weight decay moves it; afterwards it moves."""
    K, B = 16, 8
    cfg = make_tiny_config(**{"centroids.K": K, "batch_size": B, "centroids.freeze_epochs": 1, "epochs": 2,
                              "optim.warmup_epochs": 0, "head.hidden_dim": 32, "head.out_dim": 16,
                              "head.predictor_hidden_dim": 32})
    torch.manual_seed(0)
    student, teacher = build_models(cfg["backbone"], cfg["head"], K)
    teacher.load_state_dict({k: v for k, v in student.state_dict().items() if not k.startswith("predictor.")})
    balancer = create_balancer("excb", K)
    optimizer = T.build_optimizer(student, cfg)
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(B, 3, 32, 32, generator=g) for _ in range(2)] + \
            [torch.randn(B, 3, 16, 16, generator=g) for _ in range(2)]
    batches = [(views, torch.zeros(B, dtype=torch.long))]
    sched = T.build_schedules(cfg, 1)
    log = JsonlLogger("/dev/null", enabled=False)
    c0 = student.centroids.weight.detach().clone()
    p0 = student.projector[0].weight.detach().clone()
    T.train_one_epoch(student, student, teacher, balancer, optimizer, None, batches, sched, 0, cfg,
                      torch.device("cpu"), log, progress=False)
    assert torch.equal(student.centroids.weight, c0) and not torch.equal(student.projector[0].weight, p0)
    T.train_one_epoch(student, student, teacher, balancer, optimizer, None, batches, sched, 1, cfg,
                      torch.device("cpu"), log, progress=False)
    assert not torch.equal(student.centroids.weight, c0)
