"""Spherical k-means initialisation of the centroids at epoch 0 (``centroids.init: kmeans``).

Not in the paper; the authors' released code does it (engine/trainer.py ``init_centroids`` and
utils/misc.py ``distributed_kmeans``, ManiadisG/ExCB@7750bd5): before the first step it collects
the teacher's L2-normalised projections of one global view per image (alternating views between
batches) for up to ``kmeans_samples`` images (500,000), runs 50 iterations of spherical k-means
(init: K random projections, K/world from each rank; E step: argmax cosine; M step: mean of the
members, renormalised; empty clusters keep their centroid) and copies the result into the
teacher's and the student's centroid layer. It repeats the whole clustering until no cluster is
empty; here at most ``restarts`` times, then the run proceeds and the number of empty clusters is
reported. Fewer samples than clusters cannot seed K distinct centroids: a one-line error.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Tuple

import torch
import torch.nn.functional as F

from excb import ExcbError
from excb import distributed as D


def _assign(x: torch.Tensor, c: torch.Tensor, chunk: int = 25000) -> torch.Tensor:
    """argmax_k x_i·c_k in row chunks (the released code uses 25,000 rows per product)."""
    return torch.cat([(x[i:i + chunk] @ c.t()).argmax(dim=1) for i in range(0, x.shape[0], chunk)])


@torch.no_grad()
def spherical_kmeans(x: torch.Tensor, K: int, iters: int = 50, seed: int = 0, restarts: int = 10
                     ) -> Tuple[torch.Tensor, int]:
    """Unit-norm centroids (K, D) of this rank's unit rows ``x`` (N, D) — data-parallel over ranks.

    Returns the centroids (identical on every rank) and the number of empty clusters of the
    final assignment (0 unless ``restarts`` attempts all left some cluster empty)."""
    world = D.world_size()
    n_total = int(D.all_reduce_sum(torch.tensor([float(x.shape[0])], device=x.device)))
    if n_total < K:
        raise ExcbError(f"centroids.init: kmeans needs at least K = {K} projections to seed the centroids, got "
                        f"{n_total}; raise centroids.kmeans_samples, lower centroids.K or set centroids.init=random")
    per_rank = -(-K // world)
    if x.shape[0] < per_rank:
        raise ExcbError(f"centroids.init: kmeans draws {per_rank} seeds per process but this one holds only "
                        f"{x.shape[0]} projections; raise centroids.kmeans_samples or set centroids.init=random")
    x = x.float()
    D_ = x.shape[1]
    gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + D.rank())
    best: Optional[Tuple[torch.Tensor, int]] = None
    for attempt in range(max(restarts, 1)):
        seeds = x[torch.randperm(x.shape[0], generator=gen)[:per_rank].to(x.device)]
        c = D.all_gather_cat(seeds)[:K].clone()
        for it in range(iters + 1):
            assign = _assign(x, c)
            if it == iters:
                break
            sums = torch.zeros(K, D_, device=x.device).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=K).float()
            sums, counts = D.all_reduce_sum(sums), D.all_reduce_sum(counts)
            used = counts > 0
            c[used] = sums[used] / counts[used, None]
            c = F.normalize(c, dim=1)
        counts = D.all_reduce_sum(torch.bincount(assign, minlength=K).float())
        empty = int((counts == 0).sum())
        if best is None or empty < best[1]:
            best = (c, empty)
        if empty == 0:
            break
    return best


@torch.no_grad()
def collect_teacher_projections(teacher, loader: Iterable, n_global: int, max_samples: int,
                                device: torch.device, autocast: Callable = None) -> torch.Tensor:
    """L2-normalised teacher projections h_t(f_t(x)) of one global view per image (view b % n_global of
    batch b, as the released code alternates), until ``max_samples`` images over all ranks."""
    from tqdm import tqdm

    feats, count, world = [], 0, D.world_size()
    with tqdm(total=max_samples, desc="k-means init: teacher projections", disable=not D.is_main(),
              leave=False, dynamic_ncols=True) as bar:
        for b, (views, _) in enumerate(loader):
            x = views[b % n_global].to(device, non_blocking=True)
            ctx = autocast() if autocast is not None else torch.autocast(device.type, enabled=False)
            with ctx:
                h = teacher.projector(teacher.backbone(x))
            feats.append(F.normalize(h.float(), dim=-1))
            count += x.shape[0] * world
            bar.update(x.shape[0] * world)
            if count >= max_samples:
                break
    if not feats:
        raise ExcbError("centroids.init: kmeans found no training batch to project")
    return torch.cat(feats)


@torch.no_grad()
def init_centroids_kmeans(student, teacher, loader: Iterable, n_global: int, K: int, max_samples: int,
                          iters: int, seed: int, device: torch.device, autocast: Callable = None) -> dict:
    """Spherical k-means of the teacher's projections into both centroid layers; returns a small report."""
    x = collect_teacher_projections(teacher, loader, n_global, max_samples, device, autocast)
    c, empty = spherical_kmeans(x, K, iters=iters, seed=seed)
    teacher.centroids.weight.copy_(c)
    student.centroids.weight.copy_(c)
    return {"kmeans_samples": int(D.all_reduce_sum(torch.tensor([float(x.shape[0])], device=x.device))),
            "kmeans_empty_clusters": empty}
