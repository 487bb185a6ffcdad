"""ExCB balancing: the operator B of Eq. 10 and the size estimate s of Eq. 8-9, by hand.

Every expected value below is written out from the equations with plain Python floats,
independently of ``excb.balancing``.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from excb import ExcbError
from excb.balancing import balance_operator, create_balancer, list_balancers


def _t(x):
    return torch.tensor(x, dtype=torch.float64)


# ----------------------------------------------------------------------------- Eq. 10
def test_operator_each_regime_by_hand():
    # K = 4, s = (0, 0.1, 0.25, 0.65): s = 0, s < 1/K, s = 1/K, s > 1/K
    s = torch.tensor([0.0, 0.1, 0.25, 0.65])
    z = _t([[0.2, -0.4, 0.3, 0.5]])
    expected = [
        1.0,                      # s = 0:     1 - (1 - 0.2)·0              -> pushed to 1
        1.0 - (1.0 + 0.4) * 0.4,  # sK = 0.4:  1 - (1 - (-0.4))·0.4 = 0.44
        0.3,                      # sK = 1:    identity
        (1.0 + 0.5) / 2.6 - 1.0,  # sK = 2.6:  (1 + 0.5)/2.6 - 1 = -0.4230769...
    ]
    assert expected[1] == pytest.approx(0.44)
    assert expected[3] == pytest.approx(-0.42307692307)
    out = balance_operator(z, s)
    assert out.shape == z.shape
    torch.testing.assert_close(out[0], _t(expected), rtol=1e-6, atol=1e-7)


def test_operator_at_s_equal_one():
    # all mass on cluster 0 (sK = K = 4): (1 + z)/4 - 1; the empty clusters go to 1
    s = torch.tensor([1.0, 0.0, 0.0, 0.0])
    z = _t([[0.2, -0.9, 0.0, 0.7], [1.0, 1.0, -1.0, -1.0], [-1.0, 0.5, 0.5, 0.5]])
    out = balance_operator(z, s)
    torch.testing.assert_close(out[:, 0], _t([1.2 / 4 - 1, 2.0 / 4 - 1, -1.0]), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out[:, 1:], torch.ones(3, 3, dtype=torch.float64))


def test_operator_identity_at_uniform_and_range_preserved():
    K = 8
    z = torch.rand(16, K, dtype=torch.float64) * 2 - 1
    torch.testing.assert_close(balance_operator(z, torch.full((K,), 1.0 / K)), z)
    # any s keeps similarities inside [-1, 1] and is monotone in z per cluster
    s = torch.distributions.Dirichlet(torch.ones(K)).sample()
    out = balance_operator(z, s)
    assert out.min() >= -1 - 1e-9 and out.max() <= 1 + 1e-9
    z2 = (z + 0.05).clamp(max=1)
    assert (balance_operator(z2, s) >= out - 1e-9).all()


def test_operator_quadratic_variant():
    # Appendix B: 1 - (1 - z)(sK)^2 for undersized clusters; oversized unchanged
    s = torch.tensor([0.0, 0.1, 0.25, 0.65])
    z = _t([[0.2, -0.4, 0.3, 0.5]])
    expected = [1.0, 1.0 - 1.4 * 0.4 ** 2, 0.3, 1.5 / 2.6 - 1.0]
    assert expected[1] == pytest.approx(0.776)
    torch.testing.assert_close(balance_operator(z, s, "quadratic")[0], _t(expected), rtol=1e-6, atol=1e-7)
    with pytest.raises(ExcbError, match="variant"):
        balance_operator(z, s, "cubic")


def test_undersized_cluster_wins_after_balancing():
    """The point of Eq. 10: an undersized cluster beats a slightly more similar oversized one."""
    s = torch.tensor([0.4, 0.1, 0.25, 0.25])  # sK = 1.6, 0.4, 1, 1
    z = _t([[0.6, 0.5, 0.0, 0.0]])
    out = balance_operator(z, s)
    assert out[0, 0].item() == pytest.approx(1.6 / 1.6 - 1.0, abs=1e-6)  # 0.0
    assert out[0, 1].item() == pytest.approx(1.0 - 0.5 * 0.4, abs=1e-6)  # 0.8
    assert out[0].argmax().item() == 1


# ----------------------------------------------------------------------------- Eq. 8-9
def _rows(assign, K, margin=0.5):
    """Similarity rows whose argmax (raw, and balanced at uniform s) is ``assign``."""
    z = torch.zeros(len(assign), K)
    for r, k in enumerate(assign):
        z[r, k] = margin
    return z


def test_s_starts_uniform_and_first_update_by_hand():
    K, m = 4, 0.999
    bal = create_balancer("excb", K, momentum=m)
    assert torch.equal(bal.s, torch.full((K,), 0.25))
    z = _rows([0, 0, 0, 1, 2, 0], K)
    p, assign = bal.teacher_probs(z, 0.04)
    assert assign.tolist() == [0, 0, 0, 1, 2, 0]
    # at s = 1/K the operator is the identity: p_t = softmax(z / tau_t)
    torch.testing.assert_close(p, F.softmax(z / 0.04, dim=-1))
    bal.update(z, assign)
    # Eq. 8: s_B = counts / rows = (4, 1, 1, 0) / 6;  Eq. 9: s = m·s + (1-m)·s_B
    expected = [m * 0.25 + (1 - m) * c / 6 for c in (4, 1, 1, 0)]
    assert expected[0] == pytest.approx(0.250416666667)
    torch.testing.assert_close(bal.s.double(), _t(expected), rtol=1e-6, atol=1e-9)
    assert bal.s.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_s_second_step_counts_balanced_argmax():
    """Eq. 8 counts argmax of the *balanced* output: after step 1 a near-tie flips."""
    K, m = 4, 0.5
    bal = create_balancer("excb", K, momentum=m)
    z1 = _rows([0, 0, 0, 1], K)
    bal.update(z1, bal.teacher_probs(z1, 0.04)[1])
    s1 = [m * 0.25 + (1 - m) * c / 4 for c in (3, 1, 0, 0)]  # (0.5, 0.25, 0.125, 0.125)
    torch.testing.assert_close(bal.s.double(), _t(s1))
    # row: cluster 0 slightly more similar than cluster 2, but cluster 0 is oversized
    z2 = torch.tensor([[0.5, 0.0, 0.45, 0.0], [0.0, 0.9, 0.0, 0.1]])
    # by hand, sK = (2, 1, 0.5, 0.5):
    zb = [[(1 + 0.5) / 2 - 1, 0.0, 1 - (1 - 0.45) * 0.5, 1 - (1 - 0.0) * 0.5],   # (-0.25, 0, 0.725, 0.5)
          [(1 + 0.0) / 2 - 1, 0.9, 1 - (1 - 0.0) * 0.5, 1 - (1 - 0.1) * 0.5]]    # (-0.5, 0.9, 0.5, 0.55)
    p, assign = bal.teacher_probs(z2, 0.04)
    assert assign.tolist() == [2, 1]
    expected_p = [[math.exp(v / 0.04) / sum(math.exp(u / 0.04) for u in row) for v in row] for row in zb]
    torch.testing.assert_close(p.double(), _t(expected_p), rtol=1e-5, atol=1e-7)
    bal.update(z2, assign)
    s2 = [m * s1[k] + (1 - m) * c / 2 for k, c in enumerate((0, 1, 1, 0))]  # (0.25, 0.375, 0.3125, 0.0625)
    torch.testing.assert_close(bal.s.double(), _t(s2))


def test_raw_argmax_and_update_before_options():
    K, m = 4, 0.5
    raw = create_balancer("excb", K, momentum=m, assign_from="raw")
    z1 = _rows([0, 0, 0, 1], K)
    raw.update(z1, raw.teacher_probs(z1, 0.04)[1])
    z2 = torch.tensor([[0.5, 0.0, 0.45, 0.0]])
    _, a = raw.teacher_probs(z2, 0.04)
    assert a.tolist() == [0]  # Algorithm 1: argmax of the raw z_t

    before = create_balancer("excb", K, momentum=m, update="before")
    z = _rows([0, 0, 0, 1], K)
    p, _ = before.teacher_probs(z, 0.04)
    # s was updated with this batch *before* balancing it: s = (0.5, 0.25, 0.125, 0.125)
    torch.testing.assert_close(before.s.double(), _t([0.5, 0.25, 0.125, 0.125]))
    s_before = before.s.clone()
    before.update(z, None)  # a no-op in this mode
    assert torch.equal(before.s, s_before)
    torch.testing.assert_close(p, F.softmax(balance_operator(z, before.s) / 0.04, dim=-1))

    with pytest.raises(ExcbError, match="assign_from"):
        create_balancer("excb", K, assign_from="soft")


def test_s_stays_fp32_and_distribution():
    bal = create_balancer("excb", 65536)
    assert bal.s.dtype == torch.float32
    z = torch.randn(64, 65536).clamp(-1, 1)
    for _ in range(3):
        bal.update(z, bal.teacher_probs(z, 0.04)[1])
    assert bal.s.sum().item() == pytest.approx(1.0, abs=1e-4)
    assert (bal.s >= 0).all()


# ----------------------------------------------------------------------------- other balancers
def test_registry_and_unknown_name():
    assert {"excb", "dino-centering", "sinkhorn", "none"} <= set(list_balancers())
    with pytest.raises(ExcbError, match="did you mean|use one of"):
        create_balancer("exbc", 8)


def test_none_is_plain_softmax():
    z = torch.randn(5, 6)
    p, a = create_balancer("none", 6).teacher_probs(z, 0.1)
    torch.testing.assert_close(p, F.softmax(z / 0.1, dim=-1))
    assert torch.equal(a, z.argmax(-1))


def test_dino_centering_by_hand():
    bal = create_balancer("dino-centering", 3, center_momentum=0.9)
    z = torch.tensor([[0.3, 0.0, -0.3], [0.1, 0.2, 0.3]])
    p, _ = bal.teacher_probs(z, 0.04)
    torch.testing.assert_close(p, F.softmax(z / 0.04, dim=-1))  # centre starts at 0
    bal.update(z, None)
    # centre = 0.9·0 + 0.1·mean_rows(z) = 0.1·(0.2, 0.1, 0.0)
    torch.testing.assert_close(bal.center, torch.tensor([0.02, 0.01, 0.0]))
    p2, _ = bal.teacher_probs(z, 0.04)
    torch.testing.assert_close(p2, F.softmax((z - torch.tensor([0.02, 0.01, 0.0])) / 0.04, dim=-1))


def test_sinkhorn_rows_sum_to_one_and_columns_even_out():
    torch.manual_seed(0)
    K, B = 8, 64
    # a strongly unbalanced batch: most rows prefer cluster 0
    z = (torch.randn(B, K) * 0.1).clamp(-1, 1)
    z[:, 0] += 0.5
    plain = F.softmax(z / 0.05, dim=-1)
    bal = create_balancer("sinkhorn", K, sinkhorn_iters=3, sinkhorn_eps=0.05)
    p, a = bal.teacher_probs(z, 0.04)
    torch.testing.assert_close(p.sum(1), torch.ones(B), rtol=1e-5, atol=1e-5)
    # per-cluster mass: B/K each after the iterations (near-uniform), unlike the plain softmax
    col = p.sum(0) / (B / K)
    assert (col - 1).abs().max() < 0.3, col
    assert (plain.sum(0) / (B / K)).max() > 4
    # more iterations converge to the exact equipartition
    p20, _ = create_balancer("sinkhorn", K, sinkhorn_iters=20, sinkhorn_eps=0.05).teacher_probs(z, 0.04)
    torch.testing.assert_close(p20.sum(1), torch.ones(B), rtol=1e-5, atol=1e-5)
    assert (p20.sum(0) / (B / K) - 1).abs().max() < 0.01
    assert torch.equal(a, p.argmax(-1))
    assert len(set(a.tolist())) > K // 2
