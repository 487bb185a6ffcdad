"""The weighted-vote k-NN classifier on L2-normalised features (DINO's protocol, SPEC sections 6 and 9).

A test sample's ``k`` nearest train samples by cosine similarity vote for their class with
weight ``exp(sim / T)``. The search is exact brute force in bounded-memory query chunks. It
lives in the method package so pretraining's online monitor and the k-NN benchmark stage use
the same arithmetic (``benchmarks.knn`` re-exports it).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch.nn import functional as F

from excb import ExcbError

def l2_normalize(x: torch.Tensor, chunk: int = 65536, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Row-wise L2 normalisation computed in float32, chunk by chunk (no full-size fp32 temporary).

    Same arithmetic as ``F.normalize`` (divide by the norm clamped at 1e-12), written straight
    into the output: one read for the norms, one read + write for the division.
    """
    out = torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device)
    for s in range(0, x.shape[0], chunk):
        xs = x[s:s + chunk].float()
        norm = torch.linalg.vector_norm(xs, dim=1, keepdim=True).clamp_min_(1e-12)
        if out.dtype == torch.float32:
            torch.div(xs, norm, out=out[s:s + chunk])
        else:
            out[s:s + chunk] = (xs / norm).to(out.dtype)
    return out


def _group_size(n: int, k: int) -> int:
    """Columns per group of the two-level top-k: 16 (measured best for 50k columns, k 20-200:
    the group-max pass stays one streaming read), halved until there are >= 4k groups; 1 means
    plain top-k."""
    g = 16
    while g > 1 and n // g < 4 * k:
        g //= 2
    return g


def exact_topk(sim: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Row-wise top-``k`` of ``sim`` (values sorted descending, column indices): same result as
    ``sim.topk(k, dim=1)`` up to the order of exactly equal values, several times faster for
    k << n_cols.

    Columns ``j`` and ``j + L`` (L = n_cols // g) share a group. The ``k`` largest elements of a
    row lie in the ``k`` groups with the largest maxima: an element above the k-th largest group
    maximum t has its group's maximum above t too, and at most k - 1 groups are above t (ties
    *at* t may swap an element for an equal one). So: group maxima (one vectorised pass),
    top-k groups, then an exact top-k over their k * g members (+ the n_cols % g tail columns).
    """
    c, n = sim.shape
    g = _group_size(n, k)
    if g == 1:
        return sim.topk(k, dim=1)
    L = n // g
    gmax = sim[:, :g * L].view(c, g, L).amax(dim=1)                       # [c, L]
    top_groups = gmax.topk(k, dim=1, sorted=False).indices                # [c, k]
    offs = torch.arange(g, device=sim.device) * L
    cols = (top_groups.unsqueeze(2) + offs).view(c, k * g)                # members of those groups
    if n > g * L:                                                         # tail columns: always candidates
        tail = torch.arange(g * L, n, device=sim.device).expand(c, n - g * L)
        cols = torch.cat([cols, tail], dim=1)
    vals, pos = sim.gather(1, cols).topk(k, dim=1)
    return vals, cols.gather(1, pos)


def _chunk_predictions(q: torch.Tensor, bank: torch.Tensor, labels: torch.Tensor, sim_buf: torch.Tensor,
                       k_list: Sequence[int], kmax: int, T: float, C: int) -> Dict[int, torch.Tensor]:
    """Ranked classes of one query chunk for every k: GEMM into ``sim_buf``, exact top-k, vote."""
    q = F.normalize(q.to(bank.device).float(), dim=1).to(bank.dtype)
    sim = torch.mm(q, bank.T, out=sim_buf[:q.shape[0]])                 # [c, N] cosine similarities
    vals, idx = exact_topk(sim, kmax)                                     # sorted, most similar first
    vals = vals.float()
    nn_y = labels[idx]
    n_rank = min(5, C)
    out = {}
    for k in k_list:
        ke = min(k, bank.shape[0])
        w = (vals[:, :ke] / T).exp()
        votes = torch.zeros(q.shape[0], C, device=bank.device, dtype=torch.float32)
        votes.scatter_add_(1, nn_y[:, :ke], w)
        out[k] = votes.topk(n_rank, dim=1).indices.cpu()
    return out


def _cpu_workers(dev: torch.device, n_test: int) -> int:
    """Worker threads for the CPU search: one per intra-op thread, each running single-threaded."""
    return max(1, min(torch.get_num_threads(), n_test)) if dev.type == "cpu" else 1


@torch.no_grad()
def knn_classify(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor,
                 k_list: Sequence[int] = (10, 20, 100, 200), T: float = 0.07, num_classes: Optional[int] = None,
                 chunk: int = 256, normalized: bool = False) -> Dict[int, torch.Tensor]:
    """Ranked class predictions of the weighted ``k``-NN vote, for every ``k`` in ``k_list``.

    Returns ``{k: LongTensor [n_test, min(5, C)]}`` (best class first). The bank lives where
    ``train_f`` lives and in its dtype; queries are cast to match. ``k`` larger than the bank
    is clamped to its size. The search is exact brute force: one GEMM per query chunk into a
    reused buffer, then :func:`exact_topk`. On CPU, ``torch.get_num_threads()`` worker threads
    take chunks from a shared queue, each single-threaded (``chunk`` is split between them so
    memory stays bounded): independent chunks need no barrier per GEMM, so a busy or shared
    machine does not stall every operation on the slowest thread.
    """
    if train_f.shape[0] == 0:
        raise ExcbError("k-NN: the train feature bank is empty; check data.limit_train / the train split")
    if train_f.shape[0] != train_y.shape[0]:
        raise ExcbError(f"k-NN: {train_f.shape[0]} train features but {train_y.shape[0]} labels")
    if any(int(k) < 1 for k in k_list):
        raise ExcbError(f"knn.k: every k must be >= 1, got {list(k_list)}")
    C = int(num_classes if num_classes is not None else int(train_y.max()) + 1)
    dev = train_f.device
    bank = train_f if normalized else l2_normalize(train_f)
    labels = train_y.to(dev)
    n_train, n_test = bank.shape[0], test_f.shape[0]
    ks = [int(k) for k in dict.fromkeys(k_list)]
    kmax = min(max(ks), n_train)
    chunk = max(1, min(int(chunk), n_test))
    workers = _cpu_workers(dev, n_test)
    chunk = -(-chunk // workers)        # the workers' buffers together hold `chunk` rows
    starts = list(range(0, n_test, chunk))
    local = threading.local()

    def run_chunk(s: int) -> Dict[int, torch.Tensor]:
        if not hasattr(local, "buf"):   # one [chunk, N] buffer per worker: fresh ones page-fault on CPU
            local.buf = torch.empty(chunk, n_train, dtype=bank.dtype, device=dev)
        return _chunk_predictions(test_f[s:s + chunk], bank, labels, local.buf, ks, kmax, T, C)

    if workers == 1:
        parts = [run_chunk(s) for s in starts]
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)        # new worker threads pick this up: one core each
        try:
            with ThreadPoolExecutor(workers) as ex:
                parts = list(ex.map(run_chunk, starts))
        finally:
            torch.set_num_threads(threads)
    n_rank = min(5, C)
    return {int(k): (torch.cat([p[int(k)] for p in parts]) if parts else torch.zeros(0, n_rank, dtype=torch.long))
            for k in k_list}


def knn_metrics(preds: Dict[int, torch.Tensor], test_y: torch.Tensor, n_train: int, num_classes: int) -> Dict[str, Any]:
    """Top-1 / top-5 in percent per k; top-5 only where k >= 5 and there are >= 5 classes."""
    y = test_y.view(-1, 1).cpu()
    m: Dict[str, Any] = {}
    n = max(int(y.shape[0]), 1)
    for k, p in preds.items():
        ke = min(k, n_train)
        m[f"top1_k{k}"] = 100.0 * float((p[:, :1] == y).any(1).sum()) / n
        if ke >= 5 and num_classes >= 5:
            m[f"top5_k{k}"] = 100.0 * float((p[:, :5] == y).any(1).sum()) / n
    return m
