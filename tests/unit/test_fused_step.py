"""The library's fused K-wide code equals the literal formulas (values and gradients):
Eq. 7 (excb_loss vs excb_loss_reference), the centroid products with the local-crop
stop-gradient, Eq. 10 + sharpening in row blocks, and a whole training step."""
from __future__ import annotations

import copy

import pytest
import torch

import excb.balancing as balancing
import excb.loss as loss_mod
from benchmarks.perf.reference_step import patched, student_forward_literal, teacher_probs_literal
from excb.balancing import balance_coefficients, balance_operator, create_balancer
from excb.loss import excb_loss, excb_loss_reference
from excb.model import build_models


@pytest.fixture(params=[False, True], ids=["one-block", "tiny-blocks"])
def blocks(request, monkeypatch):
    """Run each test with the default block size and with 1-2 rows per block (exercises the loops)."""
    if request.param:
        monkeypatch.setattr(loss_mod, "_BLOCK_ELEMS", {"cpu": 40})
        monkeypatch.setattr(balancing, "_BLOCK_ELEMS", {"cpu": 40})
    return request.param


@pytest.mark.parametrize("pairs", ["eq7", "official-code"])
def test_fused_loss_equals_eq7_value_and_gradient(pairs, blocks):
    torch.manual_seed(0)
    G, V, B, K = 2, 5, 3, 17
    P = torch.softmax(torch.randn(G, B, K, dtype=torch.float64) * 3, -1)
    zh = (torch.rand(V, B, K, dtype=torch.float64) * 2 - 1).requires_grad_()
    zg = (torch.rand(V, B, K, dtype=torch.float64) * 2 - 1).requires_grad_()
    l1, parts1 = excb_loss_reference(P.unbind(0), zh.unbind(0), zg.unbind(0), 0.1, pairs)
    g1 = torch.autograd.grad(l1, (zh, zg), allow_unused=True)
    l2, parts2 = excb_loss(P, zh, zg, 0.1, pairs)
    g2 = torch.autograd.grad(l2, (zh, zg), allow_unused=True)
    assert float(l2.detach()) == pytest.approx(float(l1.detach()), rel=1e-6)
    assert parts2["loss_h"] == pytest.approx(parts1["loss_h"], rel=1e-6)
    assert parts2["loss_g"] == pytest.approx(parts1["loss_g"], rel=1e-6)
    for a, b in zip(g1, g2):
        a = torch.zeros_like(zh) if a is None else a
        torch.testing.assert_close(b.double(), a, rtol=1e-5, atol=1e-7)
    if pairs == "official-code":   # the locals' projector outputs are unused
        assert float(g2[0][G:].abs().max()) == 0.0


def test_fused_loss_hand_computed_two_views():
    # G = V = 2, B = 1, K = 2: L = 1/2 H(p1, s(zh2)) + 1/2 H(p2, s(zh1)) over 1 pair each, and
    # the predictor path 1/2 * (1/2) sum_v sum_w H(p_v, s(zg_w)).
    p = torch.tensor([[[0.75, 0.25]], [[0.5, 0.5]]], dtype=torch.float64)
    zh = torch.tensor([[[0.0, 0.1]], [[0.2, 0.0]]], dtype=torch.float64)
    zg = torch.zeros(2, 1, 2, dtype=torch.float64)
    tau = 0.1
    import math

    def H(q, z):   # -sum q log softmax(z/τ)
        lse = math.log(sum(math.exp(x / tau) for x in z))
        return -sum(qi * (zi / tau - lse) for qi, zi in zip(q, z))

    loss_h = H([0.75, 0.25], [0.2, 0.0]) + H([0.5, 0.5], [0.0, 0.1])      # / (V - 1) = 1
    loss_g = 4 * math.log(2) / 2                                          # zg = 0: every H is log 2
    loss, parts = excb_loss(p, zh, zg, tau)
    assert parts["loss_h"] == pytest.approx(loss_h, rel=1e-12)
    assert parts["loss_g"] == pytest.approx(loss_g, rel=1e-12)
    assert float(loss) == pytest.approx(0.5 * loss_h + 0.5 * loss_g, rel=1e-12)


def test_fused_loss_accepts_lists_and_bf16():
    torch.manual_seed(1)
    P = torch.softmax(torch.randn(2, 4, 9), -1)
    z = torch.rand(4, 4, 9) * 2 - 1
    a, _ = excb_loss(list(P), list(z), list(z), 0.1)
    b, _ = excb_loss(P, z.bfloat16(), z.bfloat16(), 0.1)
    assert float(a) == pytest.approx(float(excb_loss_reference(P, z, z, 0.1)[0]), rel=1e-6)
    assert float(b) == pytest.approx(float(a), rel=2e-2)


def test_student_forward_equals_literal_values_and_gradients():
    torch.manual_seed(0)
    st, _ = build_models({"name": "resnet18"}, {"hidden_dim": 32, "out_dim": 8, "predictor_hidden_dim": 32}, 11)
    st2 = copy.deepcopy(st)
    views = [torch.randn(2, 3, 32, 32) for _ in range(2)] + [torch.randn(2, 3, 16, 16) for _ in range(2)]
    w = torch.randn(4, 2, 11)
    for local_stop_grad in (True, False):
        st.zero_grad(), st2.zero_grad()
        zh, zg = st(views, 2, local_stop_grad)
        ((zh * w).sum() + (zg ** 2).sum()).backward()
        zh2, zg2 = student_forward_literal(st2, views, 2, local_stop_grad)
        ((zh2 * w).sum() + (zg2 ** 2).sum()).backward()
        torch.testing.assert_close(zh, zh2, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(zg, zg2, rtol=1e-5, atol=1e-6)
        for (n, p), (_, p2) in zip(st.named_parameters(), st2.named_parameters()):
            if p2.grad is not None:
                scale = float(p2.grad.abs().max()) + 1e-6
                assert float((p.grad - p2.grad).abs().max()) <= 1e-4 * scale, (n, local_stop_grad)


@pytest.mark.parametrize("variant", ["linear", "quadratic"])
def test_blocked_teacher_probs_equal_eq10(variant, blocks):
    K = 32   # a power of two: s = 1/K is exact, so sK = 1 hits the identity branch exactly
    bal = create_balancer("excb", K, variant=variant)
    torch.manual_seed(1)
    s = torch.softmax(torch.randn(K) * 2, 0)
    s[3] = 1.0 / K   # exactly an equal share: the identity branch
    s[5] = 0.0       # an empty cluster: pushed to 1
    bal.s.copy_(s)
    z = torch.rand(9, K) * 2 - 1
    p1, a1 = teacher_probs_literal(bal, z, 0.04)
    p2, a2 = bal.teacher_probs(z, 0.04)
    torch.testing.assert_close(p2, p1, rtol=1e-5, atol=1e-6)
    assert torch.equal(a1, a2)
    # the operator itself: coefficients reproduce Eq. 10 and keep fp64 in fp64
    a, b = balance_coefficients(s.double(), variant, torch.float64)
    assert float(a[5]) == 0.0 and float(b[5]) == 1.0 and float(a[3]) == 1.0 and float(b[3]) == 0.0
    assert balance_operator(z.double(), s).dtype == torch.float64


def test_raw_assignment_in_blocks_is_raw_argmax(blocks):
    K = 16
    bal = create_balancer("excb", K, assign_from="raw")
    bal.s.copy_(torch.softmax(torch.randn(K) * 3, 0))
    z = torch.rand(7, K) * 2 - 1
    _, a = bal.teacher_probs(z, 0.04)
    assert torch.equal(a, z.argmax(-1))


def test_training_step_equals_literal_step():
    """Two real steps through train_one_epoch: fused library code vs the literal formulas."""
    from benchmarks.perf.bench_step import QUICK, StepSetup, make_cfg

    torch.manual_seed(0)
    # contiguous layout: with channels_last, oneDNN picks kernels by the gradient's layout, and the two
    # paths' rounding-level differences grow through batch-4 BN to ~1e-4 in two steps (not the formulas)
    s = dict(QUICK, steps=2)
    a = StepSetup(s, {**make_cfg(s), "channels_last": False})
    b = copy.deepcopy(a)
    a.excb_steps()
    with patched():
        b.excb_steps()
    for (n, p), (_, q) in zip(a.student.named_parameters(), b.student.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=n)
    torch.testing.assert_close(a.balancer.s, b.balancer.s, rtol=1e-5, atol=1e-8)


def test_step_under_bf16_autocast_matches_literal_step():
    """The GPU recipe runs backbone and heads under bf16 autocast and the centroid products in fp32
    (issue 11); the custom autograd code must accept bf16 activations (CPU autocast here) and match
    the literal formulas run under the same autocast (bf16 vs fp32 backbones differ by far more on a
    random tiny net, so compare like with like)."""
    torch.manual_seed(0)
    st, te = build_models({"name": "resnet18"}, {"hidden_dim": 32, "out_dim": 8, "predictor_hidden_dim": 32}, 64)
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)] + [torch.randn(4, 3, 16, 16) for _ in range(2)]
    bal = create_balancer("excb", 64)
    grads = []
    for fused in (True, False):
        model = copy.deepcopy(st)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z_t = te(views[:2]).flatten(0, 1).float()
            p_t, _ = bal.teacher_probs(z_t, 0.04)
            if fused:
                z_h, z_g = model(views, 2)
                loss, _ = excb_loss(p_t.view(2, 4, -1), z_h, z_g, 0.1)
            else:
                z_h, z_g = student_forward_literal(model, views, 2)
                loss, _ = excb_loss_reference(list(p_t.view(2, 4, -1)), list(z_h), list(z_g), 0.1)
        assert z_h.dtype == torch.float32 and z_g.dtype == torch.float32 and torch.isfinite(loss)
        loss.backward()
        grads.append((model.centroids.weight.grad, model.backbone.conv1.weight.grad))
    for a, b in zip(*grads):
        assert a.dtype == torch.float32
        assert float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)) > 0.999


def test_unit_rows_equals_f_normalize_values_and_gradients():
    from excb.heads import unit_rows

    torch.manual_seed(3)
    x = torch.randn(40, 7, dtype=torch.float64)
    x[3] = 0.0          # a zero row: F.normalize gives 0, gradient g / eps
    x[4] *= 1e-13       # below eps: the linear branch
    g = torch.randn(40, 7, dtype=torch.float64)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.nn.functional.normalize(a, dim=-1).backward(g)
    out = unit_rows(b)
    out.backward(g)
    torch.testing.assert_close(out, torch.nn.functional.normalize(x, dim=-1))
    torch.testing.assert_close(b.grad, a.grad)
    assert torch.autograd.gradcheck(unit_rows, (torch.randn(5, 4, dtype=torch.float64, requires_grad=True),))


@pytest.mark.parametrize("K", [1024, 4096, 1000])
def test_row_argmax_equals_torch_argmax_including_ties(K):
    from excb.balancing import row_argmax

    torch.manual_seed(K)
    x = torch.randint(0, 5, (64, K)).float()          # many ties: first maximum must win
    x[0] = 1.0                                         # the whole row tied
    x[1, -1] = 10.0                                    # maximum in the last column
    x[2, 127] = x[2, 128] = 10.0                       # tie across a group boundary
    x[3] = -torch.arange(K, dtype=torch.float32)       # maximum at column 0
    assert torch.equal(row_argmax(x), x.argmax(dim=-1))
    y = torch.randn(7, K)
    assert torch.equal(row_argmax(y), y.argmax(dim=-1))


@pytest.mark.parametrize("update", ["after", "before"])
def test_balanced_argmax_equals_argmax_of_operator(update, blocks):
    K = 1024
    bal = create_balancer("excb", K, update=update)
    torch.manual_seed(2)
    bal.s.copy_(torch.softmax(torch.randn(K) * 2, 0))
    z = torch.rand(37, K) * 2 - 1
    assert torch.equal(bal.balanced_argmax(z), balance_operator(z, bal.s).argmax(-1))
