"""k-NN weighted vote against a brute-force evaluation, hand-computed cases, odd sizes."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from benchmarks.knn import exact_topk, knn_classify, knn_metrics
from excb import ExcbError


def brute_force_rank(train_f, train_y, q, k, T, C):
    """Class scores of DINO's vote, one test sample at a time, in plain Python."""
    tn = [v / v.norm() for v in train_f.double()]
    qn = q.double() / q.double().norm()
    sims = sorted(((float(qn @ t), int(y)) for t, y in zip(tn, train_y)), key=lambda s: -s[0])
    votes = [0.0] * C
    for s, y in sims[:min(k, len(sims))]:
        votes[y] += math.exp(s / T)
    return sorted(range(C), key=lambda c: -votes[c]), sum(v > 0 for v in votes)


@pytest.mark.parametrize("n_train,n_test,C", [(30, 7, 6), (250, 130, 10), (4, 3, 3)])
def test_matches_brute_force(n_train, n_test, C):
    g = torch.Generator().manual_seed(n_train)
    train_f = torch.randn(n_train, 8, generator=g)
    train_y = torch.randint(0, C, (n_train,), generator=g)
    train_y[:C] = torch.arange(C)  # every class present
    test_f = torch.randn(n_test, 8, generator=g)
    ks = [1, 3, 10, 20, 100, 200]   # larger than the bank for small n_train: clamped
    preds = knn_classify(train_f, train_y, test_f, ks, T=0.07, num_classes=C, chunk=4)
    for k in ks:
        assert preds[k].shape == (n_test, min(5, C))
        for i in range(n_test):
            ref, n_voted = brute_force_rank(train_f, train_y, test_f[i], k, 0.07, C)
            # classes without votes are all-zero ties (any order); compare the voted ones
            got = preds[k][i].tolist()
            m = min(len(got), n_voted)
            assert got[:m] == ref[:m], (k, i)


def test_weighted_vote_beats_majority_by_hand():
    # one very close class-0 neighbour vs two farther class-1 neighbours:
    # exp(1/0.07) > 2 exp(0.8/0.07) (ratio exp(0.2/0.07) ~ 17), so class 0 wins although 2 of 3 vote 1
    q = torch.tensor([[1.0, 0.0]])
    c = 0.8
    s = math.sqrt(1 - c * c)
    train = torch.tensor([[1.0, 0.0], [c, s], [c, -s], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 1])
    assert knn_classify(train, labels, q, [3], T=0.07, num_classes=2)[3][0, 0] == 0
    # at a high temperature the weights flatten and the majority wins
    assert knn_classify(train, labels, q, [3], T=10.0, num_classes=2)[3][0, 0] == 1
    # k = 1: nearest neighbour only
    assert knn_classify(train, labels, -q, [1], T=0.07, num_classes=2)[1][0, 0] == 1


def test_chunking_and_feature_scale_do_not_change_predictions():
    g = torch.Generator().manual_seed(0)
    tr, y, te = torch.randn(50, 6, generator=g), torch.randint(0, 5, (50,), generator=g), torch.randn(13, 6, generator=g)
    a = knn_classify(tr, y, te, [5, 20], num_classes=5, chunk=1)
    b = knn_classify(tr * 7.0, y, te * 0.1, [5, 20], num_classes=5, chunk=1000)
    for k in a:
        assert torch.equal(a[k], b[k])


def test_top5_only_where_meaningful():
    g = torch.Generator().manual_seed(1)
    tr, y, te = torch.randn(40, 4, generator=g), torch.randint(0, 6, (40,), generator=g), torch.randn(5, 4, generator=g)
    ty = torch.randint(0, 6, (5,), generator=g)
    m = knn_metrics(knn_classify(tr, y, te, [3, 20], num_classes=6), ty, n_train=40, num_classes=6)
    assert "top5_k3" not in m and "top5_k20" in m and "top1_k3" in m
    m = knn_metrics(knn_classify(tr, y % 3, te, [20], num_classes=3), ty % 3, n_train=40, num_classes=3)
    assert "top5_k20" not in m
    # k clamped to a 3-sample bank: no top-5 either
    m = knn_metrics(knn_classify(tr[:3], y[:3], te, [20], num_classes=6), ty, n_train=3, num_classes=6)
    assert "top5_k20" not in m and 0.0 <= m["top1_k20"] <= 100.0


def test_perfect_features_give_100():
    # features = one-hot of the class (+ noise-free): every neighbour votes right
    C = 7
    y = torch.arange(C).repeat(5)
    f = torch.nn.functional.one_hot(y, C).float()
    ty = torch.arange(C)
    m = knn_metrics(knn_classify(f, y, torch.nn.functional.one_hot(ty, C).float(), [1, 20], num_classes=C), ty, 35, C)
    assert m["top1_k1"] == 100.0 and m["top1_k20"] == 100.0 and m["top5_k20"] == 100.0


def test_empty_bank_and_bad_k_are_errors():
    with pytest.raises(ExcbError, match="empty"):
        knn_classify(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), torch.randn(2, 3), [1], num_classes=2)
    with pytest.raises(ExcbError, match="k must be"):
        knn_classify(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), torch.randn(2, 3), [0], num_classes=2)


# --- exact two-level top-k and the chunked / threaded search ------------------------------------

def assert_same_topk(sim, k):
    """Values equal torch.topk's exactly; indices are distinct and point at those values."""
    ref_v, _ = sim.topk(k, dim=1)
    v, i = exact_topk(sim, k)
    assert torch.equal(v, ref_v)
    assert torch.equal(sim.gather(1, i), v)
    assert all(len(set(r)) == k for r in i.tolist())


@pytest.mark.parametrize("n", [5003, 4096, 97])
@pytest.mark.parametrize("k", [1, 20, 200, 1250])
def test_exact_topk_matches_topk(n, k):
    g = torch.Generator().manual_seed(n + k)
    sim = torch.randn(37, n, generator=g)
    assert_same_topk(sim, min(k, n))


def test_exact_topk_with_ties_and_adversarial_groups():
    g = torch.Generator().manual_seed(3)
    # few distinct values: massive ties, also at the k-th group maximum
    assert_same_topk(torch.randint(-3, 4, (20, 3001), generator=g).float(), 20)
    assert_same_topk(torch.zeros(4, 2000), 20)
    # all of a row's top-20 in ONE group (columns j + m * L share a group, L = n // 16)
    n, L = 4000, 4000 // 16
    sim = torch.rand(3, n, generator=g)
    sim[0, 5 + L * torch.arange(16)] = 2.0 + torch.arange(16.0)
    sim[1, :21] = 4.0                                   # 21 groups tie at the 20th group maximum
    sim[2, torch.arange(0, n, L)] = 3.0                 # 16 equal maxima in one group
    assert_same_topk(sim, 20)
    sim = torch.rand(3, n + 7, generator=g)
    sim[:, -7:] = 9.0                                   # the best ones only in the tail columns
    assert_same_topk(sim, 20)


def reference_votes(train_f, train_y, test_f, k, T, C):
    """Straightforward float64 brute force: all similarities, full sort, weighted vote."""
    sim = F.normalize(test_f.double(), dim=1) @ F.normalize(train_f.double(), dim=1).T
    vals, idx = sim.topk(min(k, train_f.shape[0]), dim=1)
    votes = torch.zeros(test_f.shape[0], C, dtype=torch.float64)
    return votes.scatter_add_(1, train_y[idx], (vals / T).exp())


@pytest.mark.parametrize("threads", [1, 2])
def test_grouped_search_matches_float64_brute_force(threads):
    g = torch.Generator().manual_seed(11)
    n_train, n_test, C = 3001, 150, 12                  # 3001 columns: grouped top-k (16 per group) + tail
    train_f = torch.randn(n_train, 24, generator=g)
    train_y = torch.randint(0, C, (n_train,), generator=g)
    test_f = torch.randn(n_test, 24, generator=g) * 3.0
    ks = [1, 20, 200, 5000]                              # 5000 > bank: clamped to 3001
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runs = [knn_classify(train_f, train_y, test_f, ks, T=0.07, num_classes=C, chunk=c) for c in (1, 7, 64, 4096)]
        assert torch.get_num_threads() == threads       # restored after the worker threads
    finally:
        torch.set_num_threads(old)
    for k in ks:
        for r in runs[1:]:
            assert torch.equal(r[k], runs[0][k]), k
        votes = reference_votes(train_f, train_y, test_f, k, 0.07, C)
        top = votes.topk(2, dim=1).values
        clear = (top[:, 0] - top[:, 1]) > 1e-4 * top[:, 0]   # skip exact/near ties of class scores
        assert clear.float().mean() > 0.9
        assert torch.equal(runs[0][k][clear, 0], votes.argmax(1)[clear]), k
