"""ExCB pretraining: the whole training step readable top to bottom in ``train_one_epoch``.

Run on one process (``excb-bench pretrain --config ...``) or data-parallel under torchrun
(``torchrun --nproc_per_node 8 -m excb --config ...``). Every epoch ends with an atomic
checkpoint; rerunning the same command resumes from it (bit-identical on CPU: the data
order and every augmentation are functions of (seed, epoch, sample index)).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from excb import ExcbError
from excb import distributed as D
from excb.augment import AUGMENT_DEFAULTS, MULTICROP_BACKENDS, build_multicrop, eval_transform
from excb.balancing import create_balancer
from excb.budget import (BUDGET_DEFAULTS, StopRule, cluster_capacity_warning, epoch_spans, resume_step, rng_state,
                         run_epochs, set_rng_state, total_steps, validate_budget)
from excb.cpu import tune_malloc
from excb.cluster_stats import console_line, final_pass_line, renamed
from excb.checkpoint import FORMAT_TAG, find_resumable, save_training_checkpoint
from excb.config import AllowFraction, get_dotted, require_positive
from excb.data import DATA_DEFAULTS, build_dataset
from excb.io import JsonlLogger, atomic_write, atomic_write_json, package_versions
from excb.loss import check_loss_options, excb_loss
from excb.model import HEAD_DEFAULTS, ExCBStudent, ExCBTeacher, build_models
from excb.monitor import MONITOR_DEFAULTS, Monitor, validate_monitor
from excb.clipping import CLIP_MODES
from excb.recipes import apply_recipe, validate_recipe_keys
from excb.schedules import CENTROID_WD_SCHEDULES, cosine_schedule, teacher_temp_schedule

PRETRAIN_DEFAULTS: Dict[str, Any] = {
    "recipe": "paper",                 # "paper" or "official-code" (SPEC section 8)
    "seed": 0,
    "data": dict(DATA_DEFAULTS),
    "backbone": {"name": "resnet50", "stem": "standard", "zero_init_residual": False,
                 "img_size": 224, "drop_path_rate": 0.1},
    "head": dict(HEAD_DEFAULTS),
    # weight_decay_schedule: "own" (weight_decay -> weight_decay_end, ResNet paper) | "base" (the regular
    # weights' schedule, ViT paper) | "base_x10_to_x1" (released code); freeze_epochs: no centroid update
    # for the first N epochs (DINO's freeze_last_layer); tf32: TF32 for the fp32 centroid products (CUDA)
    "centroids": {"K": 65536, "weight_decay": 1e-3, "weight_decay_end": 1e-4, "weight_decay_schedule": "own",
                  "local_stop_grad": True, "freeze_epochs": 0, "tf32": True,
                  # init: "random" (paper) | "kmeans" (released code: spherical k-means of the teacher's
                  # projections of kmeans_samples images at epoch 0, excb/kmeans.py)
                  "init": "random", "kmeans_samples": 500000, "kmeans_iters": 50},
    "balancer": {"name": "excb", "momentum": 0.999, "variant": "linear", "assign_from": "balanced",
                 "update": "after", "center_momentum": 0.9, "sinkhorn_iters": 3, "sinkhorn_eps": 0.05,
                 "winner_boost": 0.0, "zero_weight_noise": 0.0},   # released code: 0.01, 0.001
    # normalization: "algorithm1" (pair weights sum to 2) | "pair-mean" (released code, sum 1: at the
    # same lr, half the step of Algorithm 1)
    "loss": {"teacher_temp": 0.04, "student_temp": 0.1, "pairs": "eq7", "normalization": "algorithm1",
             "warmup_teacher_temp": 0.04, "warmup_teacher_temp_epochs": 0},   # DINO's τ_t warm-up (off)
    "augment": dict(AUGMENT_DEFAULTS),
    "optim": {"name": "sgd", "lr": 0.15, "lr_batch_scaling": True, "momentum": 0.9, "weight_decay": 1e-4,
              "weight_decay_end": 1e-4, "warmup_epochs": AllowFraction(10), "min_lr": 0.0, "clip_grad": 0.0,
              "betas": [0.9, 0.999],
              "min_lr_factor": 0.0,       # lr floor = min_lr + min_lr_factor x peak lr (released code: 1e-4)
              "clip_mode": "per-param"},  # clip_grad > 0: "per-param" (DINO's clip_gradients) | "global" norm
    "ema": {"momentum": 0.996, "momentum_end": 1.0},
    "batch_size": 1024,                # global, over all ranks
    "epochs": AllowFraction(100),      # fractions allowed (0.5 = half an epoch); see excb/budget.py
    "num_workers": 8,
    "pin_memory": True,
    "amp": "auto",                     # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | none
    "channels_last": True,             # NHWC conv backbones, CUDA and CPU (oneDNN: demo step 1.08x faster)
    "sync_bn": True,                   # under DDP on CUDA
    "dist_timeout_s": 1800.0,
    "log_every": 50,
    "save_every": 0,                   # >0: also keep checkpoint_epochNNNN.pth every N epochs
    "tensorboard": False,
    "final_pass": True,                # App. A: cluster sizes from one inference pass over train
    "stop_after_epoch": 0,             # >0: stop after this epoch (tests, staged runs)
    "monitor": dict(MONITOR_DEFAULTS),  # online k-NN + collapse alarms (excb/monitor.py)
    **BUDGET_DEFAULTS,                 # max_steps, time_budget, save_every_steps, stop_after_step (excb/budget.py)
    "debug": {"inject_nan_at_step": -1},
}


# ----------------------------------------------------------------------------- data
def item_seed(seed: int, epoch: int, idx: int) -> int:
    """A 63-bit seed per (seed, epoch, index); hashed so no two items of any epochs share one."""
    h = hashlib.blake2b(f"{seed}:{epoch}:{idx}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


class MultiCropDataset(torch.utils.data.Dataset):
    """Wraps a data set; item ``(index, epoch)`` -> (views, label), augmentation seeded per item.

    Seeding each item from (seed, epoch, index) makes the views independent of worker count,
    persistent workers and interruptions — the basis of bit-identical resume. A transform with
    ``accepts_path = True`` (augment.backend "fast") gets the file path of file-backed data sets
    (``ImageFolderDataset.samples``) and decodes it itself; others get ``base.load_image(i)``.
    """

    def __init__(self, base, transform, seed: int):
        self.base, self.transform, self.seed = base, transform, seed
        self.pass_path = bool(getattr(transform, "accepts_path", False)) and hasattr(base, "samples")

    def __len__(self) -> int:
        return len(self.base)

    def source(self, idx: int):
        """What the transform is given for item ``idx``: a file path or a PIL image."""
        return self.base.samples[idx][0] if self.pass_path else self.base.load_image(idx)

    def __getitem__(self, item: Tuple[int, int]):
        idx, epoch = item
        img = self.source(idx)
        if hasattr(self.transform, "set_epoch"):
            self.transform.set_epoch(epoch)   # per-epoch crop scales (augment.global_min_scale_schedule)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed(self.seed, epoch, idx))
            views = self.transform(img)
        return views, self.base.targets[idx]


class EpochShardSampler(torch.utils.data.Sampler):
    """Seeded permutation per epoch, sharded by rank, tail dropped so every rank has equal steps."""

    def __init__(self, n: int, batch_per_rank: int, seed: int, rank: int, world: int):
        self.n, self.bpr, self.seed, self.rank, self.world = n, batch_per_rank, seed, rank, world
        self.epoch = 0
        self.steps = n // (batch_per_rank * world)

        self.first, self.end = 0, self.steps

    def set_epoch(self, epoch: int, first: int = 0, end: Optional[int] = None) -> None:
        """Epoch ``epoch``, batches ``first <= i < end`` only (mid-epoch resume, partial last epoch)."""
        self.epoch, self.first, self.end = epoch, first, self.steps if end is None else end

    def __len__(self) -> int:
        return (self.end - self.first) * self.bpr

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        perm = torch.randperm(self.n, generator=g)[: self.steps * self.bpr * self.world]
        for i in perm[self.rank::self.world][self.first * self.bpr:self.end * self.bpr].tolist():
            yield (i, self.epoch)


def _worker_init(worker_id: int) -> None:
    # one intra-op thread per worker: the main process keeps (cores - workers) for the model
    torch.set_num_threads(1)


def cpu_threads(num_workers: int) -> Optional[int]:
    """Intra-op threads for CPU training: the cores this process may use (its CPU affinity, e.g.
    a Slurm/cgroup allocation), never more than torch already has (a caller's
    ``torch.set_num_threads`` limit stays). None: ``OMP_NUM_THREADS`` is set, respect it.

    Loader workers (one thread each) are *not* subtracted: measured on the 2-core demo, 2 workers
    + 1 training thread ran 29 images/s, 2 + 2 threads 45 images/s — workers sleep while the
    prefetch queue is full, and when they are busy the OS shares the cores anyway.
    ``num_workers`` is kept in the signature for callers that size threads per worker."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cores))


def memory_format(cfg: Dict[str, Any]) -> torch.memory_format:
    """NHWC when ``channels_last``: cuDNN's and oneDNN's (CPU) convolutions prefer it."""
    return torch.channels_last if cfg["channels_last"] else torch.contiguous_format


def place_models(student: nn.Module, teacher: nn.Module, cfg: Dict[str, Any], device: torch.device) -> None:
    """Move both networks to ``device`` in the training memory format (the step's benchmarks use this too)."""
    for m in (student, teacher):
        m.to(device)
        if cfg["channels_last"]:
            m.to(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------- optimisation
def param_groups(student: ExCBStudent) -> List[Dict[str, Any]]:
    """Regular weights (wd schedule), biases/norms (no wd), centroids (own wd schedule)."""
    regular, no_wd, cents = [], [], []
    for name, p in student.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("centroids."):
            cents.append(p)
        elif p.ndim <= 1:
            no_wd.append(p)
        else:
            regular.append(p)
    return [{"params": regular, "kind": "regular"}, {"params": no_wd, "kind": "no_wd", "weight_decay": 0.0},
            {"params": cents, "kind": "centroids"}]


def build_optimizer(student: ExCBStudent, cfg: Dict[str, Any]) -> torch.optim.Optimizer:
    o = cfg["optim"]
    groups = param_groups(student)
    # one fused kernel per step where torch has it (CPU and CUDA): the multi-tensor and
    # per-parameter paths make 3-5 passes over the 30 M+ parameters (65,536 centroids alone are 16.8 M)
    device = next(student.parameters()).device
    fast = {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": True}
    if o["name"] == "sgd":
        return torch.optim.SGD(groups, lr=0.0, momentum=o["momentum"], weight_decay=0.0, **fast)
    if o["name"] == "adamw":
        return torch.optim.AdamW(groups, lr=0.0, betas=tuple(o["betas"]), weight_decay=0.0, **fast)
    raise ExcbError(f"optim.name: unknown optimiser '{o['name']}'; use 'sgd' or 'adamw'")


def build_schedules(cfg: Dict[str, Any], steps_per_epoch: int) -> Dict[str, np.ndarray]:
    o, E = cfg["optim"], run_epochs(cfg, steps_per_epoch)   # fractional epochs / max_steps: see excb/budget.py
    lr = o["lr"] * (cfg["batch_size"] / 256.0 if o["lr_batch_scaling"] else 1.0)
    c, lo = cfg["centroids"], cfg["loss"]
    wd = cosine_schedule(o["weight_decay"], o["weight_decay_end"], E, steps_per_epoch)
    wd_own = cosine_schedule(c["weight_decay"], c["weight_decay_end"], E, steps_per_epoch)
    tt = teacher_temp_schedule(lo["warmup_teacher_temp"], lo["teacher_temp"], lo["warmup_teacher_temp_epochs"],
                               math.ceil(E))
    return {
        "lr": cosine_schedule(lr, o["min_lr"] + o["min_lr_factor"] * lr, E, steps_per_epoch, o["warmup_epochs"]),
        "wd": wd,
        "wd_centroids": CENTROID_WD_SCHEDULES[c["weight_decay_schedule"]](
            wd, wd_own, cosine_schedule(1.0, 0.0, E, steps_per_epoch)),
        "momentum": cosine_schedule(cfg["ema"]["momentum"], cfg["ema"]["momentum_end"], E, steps_per_epoch),
        # DINO's per-epoch τ_t, repeated over the epoch's steps
        "teacher_temp": np.repeat(tt, steps_per_epoch)[: len(wd)],
    }


def autocast_ctx(amp: str, device: torch.device):
    """bf16 (or fp16) autocast on CUDA; full precision on CPU."""
    if device.type != "cuda" or amp == "none":
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype)


# ----------------------------------------------------------------------------- statistics
class EpochStats:
    """Per-epoch training statistics of SPEC section 5, accumulated on the device."""

    def __init__(self, K: int, G: int, device: torch.device):
        self.K, self.G = K, G
        self.counts = torch.zeros(K, dtype=torch.float64, device=device)
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, c_avg, agree, steps
        self.assign1: List[torch.Tensor] = []
        self.labels: List[torch.Tensor] = []

    @torch.no_grad()
    def add(self, loss: torch.Tensor, p_t: torch.Tensor, assign: torch.Tensor, labels: torch.Tensor) -> None:
        G = self.G
        a = assign.view(G, -1)
        agree = sum((a[v] == a[w]).float().mean() for v in range(G) for w in range(G) if v != w) / max(G * (G - 1), 1)
        c_avg = p_t.max(dim=-1).values.float().mean()
        self.sums += torch.stack([loss.detach().double(), c_avg.double(), torch.as_tensor(agree, device=loss.device).double(),
                                  torch.ones((), dtype=torch.float64, device=loss.device)])
        self.counts += torch.bincount(assign, minlength=self.K).double()
        self.assign1.append(a[0].detach())
        self.labels.append(labels.detach())

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """The epoch so far, summed over ranks (a collective: every rank calls it); rank 0 saves it."""
        empty = torch.zeros(0, dtype=torch.long)
        return {"counts": D.all_reduce_sum(self.counts.clone()).cpu(), "sums": D.all_reduce_sum(self.sums.clone()).cpu(),
                "assign1": D.all_gather_cat(torch.cat(self.assign1)).cpu() if self.assign1 else empty,
                "labels": D.all_gather_cat(torch.cat(self.labels)).cpu() if self.labels else empty}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Continue an epoch from a checkpoint: rank 0 holds the summed totals so far, and every rank
        an equal slice of the saved assignments (the gather at the epoch's end needs equal shapes;
        the rows seen so far are steps x batch, divisible by any world size the batch allows)."""
        dev = self.counts.device
        if D.rank() == 0:
            self.counts += state["counts"].to(dev, torch.float64)
            self.sums += state["sums"].to(dev, torch.float64)
        n = len(state["assign1"]) // D.world_size()
        if n:
            part = slice(D.rank() * n, (D.rank() + 1) * n)
            self.assign1.append(state["assign1"][part].to(dev))
            self.labels.append(state["labels"][part].to(dev))

    def summary(self) -> Dict[str, float]:
        sums = D.all_reduce_sum(self.sums.clone())
        counts = D.all_reduce_sum(self.counts.clone())
        steps = max(float(sums[3]) / D.world_size(), 1.0)
        rel = counts * self.K / counts.sum().clamp_min(1)
        out = {
            "loss": float(sums[0]) / D.world_size() / steps,
            "c_avg": float(sums[1]) / D.world_size() / steps,
            "agreement": float(sums[2]) / D.world_size() / steps,
            # the balanced training assignments of the epoch (excb/cluster_stats.py names all three figures)
            "train_assign_size_min": float(rel.min()),
            "train_assign_size_max": float(rel.max()),
            "train_assign_used": float((counts > 0).double().mean()),
            # agreement of two independent draws from these cluster sizes (the alarms' reference)
            "agreement_chance": float(((counts / counts.sum().clamp_min(1)) ** 2).sum()),
        }
        if self.assign1:
            a = D.all_gather_cat(torch.cat(self.assign1)).cpu().numpy()
            y = D.all_gather_cat(torch.cat(self.labels)).cpu().numpy()
            if y.min() >= 0:
                out["purity"] = cluster_purity(a, y)
        return out


def cluster_purity(assign: np.ndarray, labels: np.ndarray) -> float:
    """(1/N) sum_k max_j |cluster_k ∩ class_j| without a K x C matrix."""
    assign = np.asarray(assign, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if assign.size == 0:
        return float("nan")
    C = int(labels.max()) + 1
    keys, cnt = np.unique(assign * C + labels, return_counts=True)
    clusters = keys // C
    starts = np.flatnonzero(np.r_[True, clusters[1:] != clusters[:-1]])
    return float(np.maximum.reduceat(cnt, starts).sum() / assign.size)


# ----------------------------------------------------------------------------- the training step
def train_one_epoch(student, student_ddp, teacher: ExCBTeacher, balancer, optimizer, scaler, loader,
                    schedules, epoch: int, cfg: Dict[str, Any], device: torch.device, logger: JsonlLogger,
                    progress: bool, steps_per_epoch: Optional[int] = None, first: int = 0, end: Optional[int] = None,
                    stats: Optional["EpochStats"] = None, after_step=None) -> Dict[str, float]:
    """One epoch, or its steps ``first <= i < end`` (the loader yields exactly those batches).
    ``after_step(global_steps_done, stats)`` runs after every step; a true result ends the epoch early."""
    from tqdm import tqdm

    G = cfg["augment"]["n_global"]
    steps = steps_per_epoch or len(loader)
    tau_t, tau_s = float(schedules["teacher_temp"][epoch * steps]), cfg["loss"]["student_temp"]
    end = steps if end is None else end
    stats = stats if stats is not None else EpochStats(cfg["centroids"]["K"], G, device)
    t0, n_img = time.time(), 0
    bar = tqdm(loader, total=end, initial=first, desc=f"pretrain epoch {epoch + 1}/{math.ceil(cfg['epochs'])}",
               disable=not progress, leave=False, dynamic_ncols=True)
    for i, (views, labels) in enumerate(bar, start=first):
        it = epoch * steps + i
        # 1. schedules for this step
        for g in optimizer.param_groups:
            g["lr"] = float(schedules["lr"][it])  # plain floats: the optimizer state is saved weights-only
            if g["kind"] == "regular":
                g["weight_decay"] = float(schedules["wd"][it])
            elif g["kind"] == "centroids":
                g["weight_decay"] = float(schedules["wd_centroids"][it])
        mem = memory_format(cfg)
        views = [v.to(device, non_blocking=True, memory_format=mem) for v in views]
        labels = labels.to(device, non_blocking=True)

        with autocast_ctx(cfg["amp"], device):
            # 2. teacher on global views, balanced targets (Eq. 8-10)
            z_t = teacher(views[:G]).flatten(0, 1).float()               # (G·B, K)
            p_t, assign = balancer.teacher_probs(z_t, tau_t)
            # 3. student on all views; Eq. 7
            z_h, z_g = student_ddp(views, G, cfg["centroids"]["local_stop_grad"])   # (V, B, K) each
            loss, parts = excb_loss(p_t.view(G, -1, p_t.shape[-1]), z_h, z_g, tau_s, cfg["loss"]["pairs"],
                                    cfg["loss"]["normalization"])
        if it == cfg["debug"]["inject_nan_at_step"]:
            loss = loss * float("nan")

        # 4. a non-finite loss on any rank stops every rank before anything is written
        bad = D.all_reduce_sum((~torch.isfinite(loss.detach())).float().reshape(1))
        if float(bad) > 0:
            raise ExcbError(f"non-finite loss ({float(loss.detach())}) at epoch {epoch + 1}, step {i + 1}; nothing was saved "
                            f"for this epoch and the last checkpoint is intact — lower optim.lr or set "
                            f"optim.clip_grad, then rerun the same command to resume")

        # 5. student update
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if cfg["optim"]["clip_grad"] > 0:
            CLIP_MODES[cfg["optim"]["clip_mode"]](student.parameters(), cfg["optim"]["clip_grad"])
        if epoch < cfg["centroids"]["freeze_epochs"]:
            student.centroids.weight.grad = None   # DINO's cancel_gradients_last_layer: no update, no decay
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

        # 6. balancer state for the next step (s of Eq. 9, all-reduced), teacher EMA
        balancer.update(z_t, assign)
        teacher.ema_update(student, float(schedules["momentum"][it]))

        stats.add(loss, p_t, assign, labels)
        n_img += labels.shape[0]
        if progress and (i % max(cfg["log_every"], 1) == 0 or i == end - 1):
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", lr=f"{schedules['lr'][it]:.3g}")
            logger.log({"kind": "step", "epoch": epoch + 1, "step": it, "loss": float(loss.detach()), **parts,
                        "lr": float(schedules["lr"][it]), **renamed(balancer.stats())})
        if after_step is not None and after_step(it + 1, stats):
            break
    bar.close()
    dt = time.time() - t0
    out = stats.summary()
    last = epoch * steps + i
    out.update({"lr": float(schedules["lr"][last]), "momentum": float(schedules["momentum"][last]),
                "images_per_s": n_img * D.world_size() / max(dt, 1e-9), "epoch_s": dt, **renamed(balancer.stats())})
    return out


# ----------------------------------------------------------------------------- the stage
def validate_config(cfg: Dict[str, Any], source: str = "config") -> None:
    require_positive(cfg, ["batch_size", "epochs", "centroids.K", "augment.global_size", "loss.teacher_temp",
                           "loss.student_temp", "head.out_dim", "head.hidden_dim"], source)
    if cfg["num_workers"] < 0:
        raise ExcbError(f"{source}: key 'num_workers' must be >= 0, got {cfg['num_workers']}")
    if cfg["augment"]["n_global"] < 2:
        raise ExcbError(f"{source}: key 'augment.n_global' must be >= 2 (the loss pairs distinct global views)")
    if cfg["recipe"] not in ("paper", "official-code"):
        raise ExcbError(f"{source}: key 'recipe' must be 'paper' or 'official-code', got {cfg['recipe']!r}")
    validate_recipe_keys(cfg, source)
    try:
        check_loss_options(cfg["loss"]["pairs"], cfg["loss"]["normalization"])
    except ExcbError as e:
        raise ExcbError(f"{source}: {e}") from None
    backend = cfg["augment"].get("backend", "pil")
    if backend not in MULTICROP_BACKENDS:
        raise ExcbError(f"{source}: key 'augment.backend' must be one of {', '.join(map(repr, MULTICROP_BACKENDS))}, "
                        f"got {backend!r}")
    validate_monitor(cfg["monitor"], source)
    validate_budget(cfg, source)


def _seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def train(cfg: Dict[str, Any], run_dir: str | Path) -> Dict[str, Any]:
    """Pretrain ExCB with resolved config ``cfg`` into ``run_dir``; returns the results dict."""
    t_start = time.time()
    run_dir = Path(run_dir)
    validate_config(cfg)
    cfg, recipe_keys = apply_recipe(cfg, PRETRAIN_DEFAULTS)   # recipe: official-code -> released values
    device = D.init_from_env(timeout_s=cfg["dist_timeout_s"])
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(cfg["centroids"]["tf32"])   # fp32 centroid products
    rank, world = D.rank(), D.world_size()
    if cfg["batch_size"] % world:
        raise ExcbError(f"config: key 'batch_size' ({cfg['batch_size']}) must be divisible by the number of "
                        f"processes ({world})")
    bpr = cfg["batch_size"] // world
    _seed_all(cfg["seed"])
    if device.type == "cpu" and (n_threads := cpu_threads(cfg["num_workers"])) is not None:
        torch.set_num_threads(n_threads)
    if device.type == "cpu":
        tune_malloc()   # recycle the (rows, K) temporaries instead of page-faulting them in every step

    # ---- data
    base = build_dataset(cfg["data"], "train")
    K = cfg["centroids"]["K"]
    ds = MultiCropDataset(base, build_multicrop(cfg["augment"], math.ceil(cfg["epochs"])), cfg["seed"])
    sampler = EpochShardSampler(len(ds), bpr, cfg["seed"], rank, world)
    if sampler.steps == 0:
        raise ExcbError(f"config: key 'batch_size' ({cfg['batch_size']}) exceeds the training set "
                        f"({len(ds)} images); lower it")
    warn_k = cluster_capacity_warning(K, len(base), sampler.steps * cfg["batch_size"] * cfg["augment"]["n_global"])
    nw = cfg["num_workers"]
    loader = torch.utils.data.DataLoader(
        ds, batch_size=bpr, sampler=sampler, num_workers=nw, pin_memory=cfg["pin_memory"] and device.type == "cuda",
        drop_last=True, persistent_workers=nw > 0, worker_init_fn=_worker_init if nw > 0 else None,
        prefetch_factor=4 if nw > 0 else None,
        generator=torch.Generator().manual_seed(cfg["seed"]))  # its base seed must not consume the global RNG
                                                               # (exact mid-epoch resume restores that state)

    # ---- models
    student, teacher = build_models(cfg["backbone"], cfg["head"], K)
    if world > 1 and cfg["sync_bn"] and device.type == "cuda":
        student = nn.SyncBatchNorm.convert_sync_batchnorm(student)
        teacher = nn.SyncBatchNorm.convert_sync_batchnorm(teacher)
    place_models(student, teacher, cfg, device)
    teacher.load_state_dict({k: v for k, v in student.state_dict().items() if not k.startswith("predictor.")})
    student_ddp: nn.Module = student
    if world > 1:
        student_ddp = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)
    b = cfg["balancer"]
    balancer = create_balancer(b["name"], K, **{k: v for k, v in b.items() if k != "name"}).to(device)
    optimizer = build_optimizer(student, cfg)
    scaler = torch.amp.GradScaler("cuda") if (cfg["amp"] == "fp16" and device.type == "cuda") else None
    schedules = build_schedules(cfg, sampler.steps)

    # ---- resume
    start_epoch, history = 0, []
    logger = JsonlLogger(run_dir / "log.jsonl", enabled=rank == 0)
    if warn_k and rank == 0:
        print(f"[excb] warning: {warn_k}")
        logger.log({"kind": "warning", "key": "centroids.K", "message": warn_k})
    spe, start_step, resumed = sampler.steps, 0, None

    def _check(obj):
        if obj.get("config", {}).get("backbone") != cfg["backbone"] or obj["config"]["centroids"]["K"] != K:
            raise ExcbError(f"checkpoint was made with another backbone/K than the config asks for")

    monitor_state = None
    found = find_resumable(run_dir, check=_check, log=lambda m: rank == 0 and print(f"[excb] {m}"))
    if found is not None:
        path, ck = found
        student.load_state_dict(ck["student"])
        teacher.load_state_dict(ck["teacher"])
        optimizer.load_state_dict(ck["optimizer"])
        balancer.load_state_dict(ck["balancer"])
        if scaler is not None and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        start_epoch, history = int(ck["epoch"]), list(ck.get("history", []))
        monitor_state = ck.get("monitor")
        start_step = resume_step(ck, spe, path)
        resumed = {"stats": ck.get("epoch_stats"), "rng": ck.get("rng")} if start_step % spe else None
        if rank == 0:
            print(f"[excb] resuming from {path} (epoch {start_epoch}/{cfg['epochs']}, step {start_step})")
            logger.log({"kind": "resume", "epoch": start_epoch, "step": start_step, "checkpoint": str(path)})
        del ck

    def training_state(epoch_done: int, step_done: int) -> Dict[str, Any]:
        return {"format": FORMAT_TAG, "version": 1, "epoch": epoch_done, "step": step_done, "steps_per_epoch": spe,
                "config": cfg, "backbone": {"name": cfg["backbone"]["name"],
                                            "kwargs": {k: v for k, v in cfg["backbone"].items() if k != "name"}},
                "student": student.state_dict(), "teacher": teacher.state_dict(),
                "optimizer": optimizer.state_dict(), "balancer": balancer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "history": history,
                "monitor": monitor.state_dict(), "rng": rng_state(device)}

    rule = StopRule.from_config(cfg, t_start)
    stop_reason: Optional[str] = None
    step_done = start_step

    def after_step(step: int, stats: EpochStats) -> bool:
        """Budget hook: a checkpoint inside the epoch every save_every_steps, and the stop rules."""
        nonlocal stop_reason, step_done
        step_done = step
        stop_reason = rule.stop_reason(step_done)
        if rule.time_budget_s and world > 1:   # each rank reads its own clock: stop together or not at all
            anyone = D.all_reduce_sum(torch.tensor([1.0 if stop_reason else 0.0], device=device))
            stop_reason = stop_reason or ("time_budget" if float(anyone) > 0 else None)
        if step_done % spe == 0 or step_done >= total:
            return stop_reason is not None   # the epoch ends here anyway: its own checkpoint follows
        if stop_reason or rule.save_due(step_done):
            st = stats.state_dict()           # collective: every rank
            if rank == 0:
                save_training_checkpoint(run_dir, {**training_state(step_done // spe, step_done), "epoch_stats": st})
                logger.log({"kind": "checkpoint", "step": step_done, "reason": stop_reason or "save_every_steps"})
            D.barrier()
        return stop_reason is not None

    if recipe_keys and rank == 0 and start_step == 0:
        logger.log({"kind": "recipe", "recipe": cfg["recipe"], "keys": {k: get_dotted(cfg, k) for k in recipe_keys}})
    if start_step == 0 and cfg["centroids"]["init"] == "kmeans":
        from excb.kmeans import init_centroids_kmeans

        sampler.set_epoch(-1)   # its own permutation, crops at the schedule's start (as the released code)
        c = cfg["centroids"]
        km = init_centroids_kmeans(student, teacher, loader, cfg["augment"]["n_global"], K, c["kmeans_samples"],
                                   c["kmeans_iters"], cfg["seed"], device, lambda: autocast_ctx(cfg["amp"], device))
        if rank == 0:
            logger.log({"kind": "kmeans_init", **km})
            print(f"[excb] centroids: spherical k-means of {km['kmeans_samples']} teacher projections "
                  f"({km['kmeans_empty_clusters']} empty clusters)")
    tb = _tensorboard(run_dir, cfg) if rank == 0 else None
    rows = cfg["batch_size"] * cfg["augment"]["n_global"]
    monitor = Monitor(cfg, rows_per_epoch=rows * sampler.steps, rows_per_step=rows, log=logger.log,
                      say=lambda m: rank == 0 and print(m, flush=True))
    monitor.load_state_dict(monitor_state)
    if start_step == 0:
        monitor.start(teacher.backbone, device)   # the random-init k-NN reference
    stopped_early = collapsed = False
    total = total_steps(cfg, spe)
    for epoch, first, end in epoch_spans(start_step, total, spe):
        sampler.set_epoch(epoch, first, end)
        torch.manual_seed(cfg["seed"] * 1_000_003 + epoch)  # drop-path etc.: a function of the epoch
        stats = EpochStats(K, cfg["augment"]["n_global"], device)
        if first and resumed is not None:   # continue the interrupted epoch exactly where it stopped
            if resumed["rng"] is not None:
                set_rng_state(resumed["rng"], device)
            if resumed["stats"] is not None:
                stats.load_state_dict(resumed["stats"])
        student.train()
        teacher.train()
        ep = train_one_epoch(student, student_ddp, teacher, balancer, optimizer, scaler, loader, schedules,
                             epoch, cfg, device, logger, progress=rank == 0, steps_per_epoch=spe, first=first,
                             end=end, stats=stats, after_step=after_step)
        if stop_reason and step_done % spe and step_done < total:
            stopped_early = True                # mid-epoch: the hook saved the checkpoint
            break
        collapsed = monitor.end_of_epoch(epoch + 1, teacher.backbone, ep, device, last=step_done >= total)
        ep["epoch"] = epoch + 1
        if end < spe:
            ep["epoch_fraction"] = end / spe    # a partial last epoch (fractional epochs, max_steps)
        history.append(ep)
        if rank == 0:
            state = training_state(epoch + 1 if end == spe else epoch, step_done)
            snap = f"checkpoint_epoch{epoch + 1:04d}.pth" if cfg["save_every"] and (epoch + 1) % cfg["save_every"] == 0 else None
            save_training_checkpoint(run_dir, state, snapshot_name=snap)
            logger.log({"kind": "epoch", **ep})
            if tb is not None:
                for k, v in ep.items():
                    tb.add_scalar(f"pretrain/{k}", v, epoch + 1)
            print(f"[excb] epoch {epoch + 1}/{cfg['epochs']}  " + "  ".join(
                f"{k}={v:.4g}" for k, v in ep.items() if k in ("loss", "c_avg", "agreement", "purity", "knn_top1"))
                + "  " + console_line(ep) + f"  images_per_s={ep['images_per_s']:.4g}")
        D.barrier()
        if collapsed and step_done < total:
            stop_reason, stopped_early = "collapse", True
            break
        if stop_reason and step_done < total:
            stopped_early = True
            break
        if cfg["stop_after_epoch"] and epoch + 1 >= cfg["stop_after_epoch"] and step_done < total:
            stop_reason, stopped_early = "stop_after_epoch", True
            break

    final: Dict[str, Any] = {}
    if not stopped_early and cfg["final_pass"]:
        counts, purity = final_cluster_pass(teacher, cfg, device)
        n = counts.sum()
        rel = counts * K / max(n, 1)
        final = {"final_pass_empty_fraction": float((counts == 0).mean()), "final_pass_max_size": float(rel.max()),
                 "final_pass_purity": purity}
        if rank == 0:
            atomic_write(run_dir / "final_cluster_counts.npy", lambda f: np.save(f, counts))
            print(f"[excb] {final_pass_line(final, step_done)}")
    last = history[-1] if history else {}
    results = {
        "stage": "pretrain",
        "status": ("collapsed" if collapsed else "stopped") if stopped_early else "complete",
        **({"stop_reason": stop_reason} if stopped_early else {}),
        "metrics": {**{k: last.get(k) for k in ("loss", "c_avg", "train_assign_size_min", "train_assign_size_max",
                                               "train_assign_used", "s_estimate_min", "s_estimate_max", "agreement",
                                               "purity", "knn_top1", "knn_random_init")}, **final,
                    "epochs_done": _whole(step_done / spe), "steps_done": step_done},
        "protocol": cfg,
        "data": {"name": cfg["data"]["name"], "n_train": len(base), "n_val": None,
                 "skipped_files": len(getattr(base, "skipped", []))},
        "checkpoint": {"path": str(run_dir / "checkpoint.pth"), "format": FORMAT_TAG},
        "seed": cfg["seed"], "world_size": world, "wall_s": time.time() - t_start, "versions": package_versions(),
        "alarms": monitor.state["alarms"],
    }
    if rank == 0:
        atomic_write_json(run_dir / "results.json", results)
    if tb is not None:
        tb.close()
    return results


@torch.no_grad()
def final_cluster_pass(teacher: ExCBTeacher, cfg: Dict[str, Any], device: torch.device) -> Tuple[np.ndarray, float]:
    """App. A: teacher (eval mode) hard assignments over the whole train set, one centre crop each."""
    a = cfg["augment"]
    size = a["global_size"]
    resize = int(round(size * a["eval_resize"] / a["eval_crop"]))
    ds = build_dataset(cfg["data"], "train", eval_transform(resize, size))
    idx = list(range(D.rank(), len(ds), D.world_size()))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, idx), batch_size=max(cfg["batch_size"] // D.world_size(), 1),
                                         num_workers=cfg["num_workers"], shuffle=False)
    K = cfg["centroids"]["K"]
    teacher.eval()
    counts = torch.zeros(K, dtype=torch.float64, device=device)
    assigns, labels = [], []
    for x, y in loader:
        with autocast_ctx(cfg["amp"], device):
            z = teacher([x.to(device)])[0]
        a_ = z.float().argmax(-1)
        counts += torch.bincount(a_, minlength=K).double()
        assigns.append(a_.cpu())
        labels.append(y)
    teacher.train()
    counts = D.all_reduce_sum(counts).cpu().numpy().astype(np.int64)
    purity = cluster_purity(torch.cat(assigns).numpy(), torch.cat(labels).numpy()) if D.world_size() == 1 and assigns else None
    return counts, purity


def _whole(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def _tensorboard(run_dir: Path, cfg: Dict[str, Any]):
    if not cfg["tensorboard"]:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("[excb] tensorboard requested but not installed (pip install tensorboard); logging to JSONL only")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


# ----------------------------------------------------------------------------- command line
def build_arg_parser(parser=None):
    import argparse

    p = parser or argparse.ArgumentParser(prog="python -m excb", description="ExCB pretraining (single process or torchrun).")
    p.add_argument("--config", "-c", help="YAML recipe, e.g. configs/pretrain/r50_mc_400ep.yaml (default: built-in defaults)")
    p.add_argument("--output-dir", "-o", help="run directory for checkpoints, log.jsonl and results.json "
                                              "(default: runs/pretrain-<config name>); rerunning resumes from it")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. epochs=200 optim.lr=0.3")
    return p


def main(argv=None, parser=None) -> int:
    args = build_arg_parser(parser).parse_args(argv)
    from excb.config import dump_yaml, resolve_config
    from excb.io import atomic_write_text

    cfg = resolve_config(PRETRAIN_DEFAULTS, args.config, args.overrides)
    name = Path(args.config).stem if args.config else "default"
    out = Path(args.output_dir or f"runs/pretrain-{name}")
    if D.is_main() and int(__import__("os").environ.get("RANK", 0)) == 0:
        atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    try:
        res = train(cfg, out)
    finally:
        D.cleanup()
    if D.is_main():
        print(f"[excb] results: {out / 'results.json'}")
    return 0 if res else 1
