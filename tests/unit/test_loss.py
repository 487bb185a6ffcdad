"""The loss of Eq. 7 against a direct, pair-by-pair evaluation written with explicit loops."""
from __future__ import annotations

import math

import pytest
import torch

from excb.loss import excb_loss

G, L, N, K = 2, 3, 4, 5
TAU_S = 0.1


def _softmax_row(z, tau):
    e = [math.exp(v / tau) for v in z]
    s = sum(e)
    return [x / s for x in e]


def _H(p_rows, z_rows, tau):
    """Batch mean of H(a, b) = -sum_k a_k log b_k, b = softmax(z / tau), all in Python floats."""
    total = 0.0
    for a, z in zip(p_rows, z_rows):
        q = _softmax_row(z, tau)
        total += -sum(a[k] * math.log(q[k]) for k in range(len(a)))
    return total / len(p_rows)


def _eq7_reference(p_t, z_h, z_g, tau):
    """Eq. 7 with Algorithm 1's normalisation, spelled out pair by pair."""
    V = len(z_h)
    term_h = 0.0
    term_g = 0.0
    for v in range(G):                 # x' in G (teacher views)
        for w in range(V):             # x'' in G ∪ L
            if w != v:
                term_h += _H(p_t[v], z_h[w], tau)
            term_g += _H(p_t[v], z_g[w], tau)
    return 0.5 * term_h / (G + L - 1) + 0.5 * term_g / (G + L)


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    p_t = [torch.softmax(torch.randn(N, K, generator=g, dtype=torch.float64) * 3, -1) for _ in range(G)]
    z_h = [torch.rand(N, K, generator=g, dtype=torch.float64) * 2 - 1 for _ in range(G + L)]
    z_g = [torch.rand(N, K, generator=g, dtype=torch.float64) * 2 - 1 for _ in range(G + L)]
    return p_t, z_h, z_g


def _lists(ts):
    return [t.tolist() for t in ts]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pair_by_pair_eq7(seed):
    p_t, z_h, z_g = _inputs(seed)
    loss, parts = excb_loss(p_t, z_h, z_g, TAU_S)
    ref = _eq7_reference(_lists(p_t), _lists(z_h), _lists(z_g), TAU_S)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    assert loss.item() > 0  # a cross-entropy, not its negative (Algorithm 1's sign slip)
    assert 0.5 * parts["loss_h"] + 0.5 * parts["loss_g"] == pytest.approx(loss.item(), rel=1e-6)


def test_uniform_everything_gives_G_log_K():
    # every H is log K: (G(G+L-1) pairs)/(G+L-1) + (G(G+L) pairs)/(G+L), halved -> G log K
    p_t = [torch.full((N, K), 1.0 / K) for _ in range(G)]
    z = [torch.zeros(N, K) for _ in range(G + L)]
    loss, _ = excb_loss(p_t, z, z, TAU_S)
    assert loss.item() == pytest.approx(G * math.log(K), rel=1e-6)


def test_same_view_projector_pair_is_excluded():
    """Eq. 7 skips H(p_t(x'), p_s^h(x')) but keeps the same-view predictor pair."""
    p_t, z_h, z_g = _inputs(3)
    base, _ = excb_loss(p_t, z_h, z_g, TAU_S)
    z_h2 = [z.clone() for z in z_h]
    z_h2[0] = -z_h2[0]  # changes only pairs (v=1, w=0) of the projector term
    z_h3 = [z.clone() for z in z_h]
    z_h3[0] = torch.zeros_like(z_h3[0])
    a = excb_loss(p_t, z_h2, z_g, TAU_S)[0] - excb_loss(p_t, z_h3, z_g, TAU_S)[0]
    b = 0.5 * (_H(p_t[1].tolist(), z_h2[0].tolist(), TAU_S) - _H(p_t[1].tolist(), z_h3[0].tolist(), TAU_S)) / (G + L - 1)
    assert a.item() == pytest.approx(b, rel=1e-5)
    assert torch.isfinite(base)


def test_official_code_pairs():
    """Released code: projector term pairs only with the *other* global view; predictor with all."""
    p_t, z_h, z_g = _inputs(4)
    loss, _ = excb_loss(p_t, z_h, z_g, TAU_S, pairs="official-code")
    P, ZH, ZG = _lists(p_t), _lists(z_h), _lists(z_g)
    term_h = sum(_H(P[v], ZH[w], TAU_S) for v in range(G) for w in range(G) if w != v) / (G - 1)
    term_g = sum(_H(P[v], ZG[w], TAU_S) for v in range(G) for w in range(G + L)) / (G + L)
    assert loss.item() == pytest.approx(0.5 * term_h + 0.5 * term_g, rel=1e-5)
    # the locals' projector outputs are unused there
    z_h_alt = [z.clone() for z in z_h]
    z_h_alt[G + 1] = torch.zeros_like(z_h_alt[G + 1])
    assert excb_loss(p_t, z_h_alt, z_g, TAU_S, pairs="official-code")[0].item() == pytest.approx(loss.item(), rel=1e-9)
    assert excb_loss(p_t, z_h_alt, z_g, TAU_S)[0].item() != pytest.approx(excb_loss(p_t, z_h, z_g, TAU_S)[0].item(), rel=1e-9)


def test_gradient_matches_finite_difference_sign():
    """Lowering a student logit where the teacher puts mass must raise the loss."""
    p_t, z_h, z_g = _inputs(5)
    z = [t.clone().requires_grad_(True) for t in z_h]
    loss, _ = excb_loss(p_t, z, z_g, TAU_S)
    loss.backward()
    # d/dz H(p, softmax(z/tau)) = (q - p)/tau, summed over the teacher views that pair with the view
    q = torch.softmax(z_h[2] / TAU_S, -1)
    expect = sum((q - p_t[v]) / TAU_S for v in range(G)) / N * 0.5 / (G + L - 1)
    torch.testing.assert_close(z[2].grad, expect)
