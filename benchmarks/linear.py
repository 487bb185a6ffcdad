"""Linear probe on a frozen backbone (SPEC section 6).

* ResNet protocol (the defaults): pooled features, one linear head, 100 epochs, SGD momentum
  0.9, weight decay 0, batch 256, lr 0.3 with a cosine schedule; train views RandomResizedCrop
  + flip, val Resize + CenterCrop; the last epoch's top-1/top-5 are reported.
* ViT protocol (``configs/eval/linear_vit.yaml``): concatenated CLS tokens of the last 4
  blocks; one head per learning rate of a grid, trained at once (each its own weights). The
  head is chosen on a held-out part of the *train* set and reported on val (``top1``); the
  best-on-val number, the way most published tables were made, is reported beside it as
  ``best_on_val``.
* ``mode: cached-features`` trains on features of the centre view, extracted once, without
  augmentation: much faster, and labelled as a different protocol.

The backbone stays in eval mode with gradients off, so neither its weights nor its BN
statistics move. Each epoch is checkpointed atomically; a rerun resumes and, because data
order and augmentation are seeded per (seed, epoch), ends with the same numbers.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from excb import ExcbError
from excb import distributed as D
from excb.config import require_positive
from excb.finite import nonfinite_tensors, require_finite
from excb.data import build_dataset, validate_data
from excb.io import JsonlLogger

from benchmarks.common import (EpochState, all_reduce_grads, autocast, checkpoint_key, data_record, epoch_seed,
                               skipped_record,
                               load_stage_backbone, progress, protocol_record, rng_state, seed_everything,
                               select_device, set_rng_state, stage_defaults, stopped_result, topk_correct,
                               write_results)
from benchmarks.features import cached_features, dataset_fingerprint, eval_transform, extract_features, transform_key
from benchmarks.subsets import IndexedSubset, stratified_holdout

DEFAULTS: Dict[str, Any] = stage_defaults(
    mode="augment",              # augment (the paper's protocol) | cached-features (fast, no augmentation)
    feature="auto",              # auto (last4_cls for ViTs, pooled otherwise) | pooled | last4_cls
    n_last_blocks=4,             # ViT: CLS tokens of this many last blocks, concatenated
    epochs=100,
    batch_size=256,              # global, over all ranks
    lrs=[0.3],                   # one head per lr (the ViT protocol sweeps a grid)
    lr_batch_scaling=False,      # true: lr * batch_size / 256 (DINO's eval_linear)
    momentum=0.9,
    weight_decay=0.0,
    head_init_std=0.01,
    holdout_fraction=0.0,        # > 0: choose the head on this (class-stratified) part of train
    resize=256,                  # val / holdout view: Resize (bicubic) + CenterCrop
    crop=224,                    # train view: RandomResizedCrop(crop, rrc_scale) + flip
    rrc_scale=[0.08, 1.0],
    extract_batch_size=256,
    cache=True,                  # cache the (frozen) val / holdout / cached-mode train features
    cache_dir=None,              # default <run_dir>/features
    stop_after_epoch=0,          # > 0: stop after this epoch (the rerun resumes); for tests and time slots
)

FeatureFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


def _last_blocks(n: int) -> FeatureFn:
    from excb.backbones import vit_last_blocks_cls

    return lambda model, x: vit_last_blocks_cls(model, x, n=n)


FEATURES: Dict[str, Callable[[Dict[str, Any]], FeatureFn]] = {
    "pooled": lambda cfg: _pooled,
    "last4_cls": lambda cfg: _last_blocks(int(cfg["n_last_blocks"])),
}


def resolve_feature(cfg: Dict[str, Any], model: nn.Module) -> str:
    name = cfg["feature"]
    if name == "auto":
        name = "last4_cls" if hasattr(model, "blocks") and hasattr(model, "patch_embed") else "pooled"
    if name not in FEATURES:
        raise ExcbError(f"linear: key 'feature' must be auto or one of {sorted(FEATURES)}, got {name!r}")
    return name


def train_transform(crop: int, scale: Sequence[float]):
    from torchvision import transforms as T

    from excb.augment import normalize
    from excb.data import to_rgb

    return T.Compose([T.Lambda(to_rgb), T.RandomResizedCrop(int(crop), scale=tuple(scale),
                                                            interpolation=T.InterpolationMode.BICUBIC),
                      T.RandomHorizontalFlip(), normalize()])


class LinearHeads(nn.Module):
    """``H`` independent linear classifiers on the same features (one per learning rate)."""

    def __init__(self, dim: int, num_classes: int, n_heads: int, init_std: float = 0.01):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(dim, num_classes) for _ in range(n_heads))
        for h in self.heads:
            nn.init.normal_(h.weight, std=init_std)
            nn.init.zeros_(h.bias)

    def forward(self, f: torch.Tensor) -> List[torch.Tensor]:
        return [h(f) for h in self.heads]


class PerSampleSeeded(torch.utils.data.Dataset):
    """Seeds the RNG before each sample's augmentation from (epoch seed, sample index): the draws
    do not depend on the number of loader workers, the rank, or where a run was resumed."""

    def __init__(self, base):
        self.base = base
        self.seed = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        torch.manual_seed((self.seed * 1_000_003 + int(i) * 7_919) % (2 ** 62))
        return self.base[i]


def cosine_lr(base: float, step: int, total: int) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def rank_order(n: int, seed: int, epoch: int) -> List[int]:
    """This rank's share of the epoch's permutation; padded (training only) so every rank runs the same steps."""
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    perm = torch.randperm(n, generator=g).tolist()
    world = D.world_size()
    if world > 1 and n % world:
        perm += perm[: world - n % world]
    return perm[D.rank()::world]


@torch.no_grad()
def evaluate_heads(heads: LinearHeads, feats: torch.Tensor, labels: torch.Tensor, chunk: int = 4096) -> List[Tuple[float, float]]:
    """(top-1 %, top-5 %) of every head on precomputed features."""
    heads.eval()
    dev = next(heads.parameters()).device
    hits = torch.zeros(len(heads.heads), 2, dtype=torch.float64)
    for s in range(0, feats.shape[0], chunk):
        f = feats[s:s + chunk].to(dev).float()
        y = labels[s:s + chunk].to(dev)
        for i, logits in enumerate(heads(f)):
            c1, c5 = topk_correct(logits, y, (1, 5))
            hits[i, 0] += c1
            hits[i, 1] += c5
    heads.train()
    n = max(feats.shape[0], 1)
    return [(100.0 * float(a) / n, 100.0 * float(b) / n) for a, b in hits]


def train_heads(heads: LinearHeads, lrs: Sequence[float], cfg: Dict[str, Any], n_train: int,
                batches: Callable[[int], Iterator[Tuple[torch.Tensor, torch.Tensor]]],
                evaluate: Callable[[int], Dict[str, Any]], state: Optional[EpochState],
                log: Optional[JsonlLogger] = None) -> Dict[str, Any]:
    """The probe's training loop: ``batches(epoch)`` yields (features, labels) for this rank.

    Returns ``{"stopped": bool, "epoch": last epoch done, "history": [...]}``; ``evaluate(epoch)``
    runs after every epoch and its record joins the history.
    """
    epochs = int(cfg["epochs"])
    world = D.world_size()
    per_rank = max(1, int(cfg["batch_size"]) // world)
    steps_per_epoch = math.ceil(math.ceil(n_train / world) / per_rank)
    total = epochs * steps_per_epoch
    groups = [{"params": list(h.parameters()), "lr": lr, "base_lr": lr} for h, lr in zip(heads.heads, lrs)]
    opt = torch.optim.SGD(groups, lr=lrs[0], momentum=float(cfg["momentum"]), weight_decay=float(cfg["weight_decay"]))
    start, history = 0, []
    if state is not None:
        st = state.load()
        if st is not None:
            heads.load_state_dict(st["heads"])
            opt.load_state_dict(st["optimizer"])
            set_rng_state(st["rng"])
            start, history = int(st["epoch"]) + 1, list(st["history"])
            if D.is_main():
                print(f"[excb-bench] linear: resuming after epoch {start} of {epochs}")
    dev = next(heads.parameters()).device
    stop = int(cfg.get("stop_after_epoch") or 0)
    for epoch in range(start, epochs):
        heads.train()
        step = epoch * steps_per_epoch
        loss_sum, n_seen = torch.zeros((), dtype=torch.float64), 0
        for f, y in batches(epoch):
            for g in opt.param_groups:
                g["lr"] = cosine_lr(g["base_lr"], step, total)
            f, y = f.to(dev).float(), y.to(dev)
            loss = sum(F.cross_entropy(o, y) for o in heads(f))   # heads are independent: one sum, H gradients
            opt.zero_grad(set_to_none=True)
            loss.backward()
            all_reduce_grads(heads.parameters())
            opt.step()
            loss_sum += float(loss.detach()) / len(lrs) * y.shape[0]
            n_seen += y.shape[0]
            step += 1
        rec = {"epoch": epoch + 1, "loss": float(loss_sum) / max(n_seen, 1), **evaluate(epoch)}
        history.append(rec)
        if log is not None:
            log.log(rec)
        if state is not None:
            state.save({"epoch": epoch, "heads": heads.state_dict(), "optimizer": opt.state_dict(),
                        "rng": rng_state(), "history": history})
        if stop and epoch + 1 == stop and epoch + 1 < epochs:
            return {"stopped": True, "epoch": epoch + 1, "history": history}
    return {"stopped": False, "epoch": epochs, "history": history}


def validate(cfg: Dict[str, Any], source: str = "linear") -> None:
    """The values this stage refuses, checked before anything runs (the pipeline calls it first)."""
    require_positive(cfg, ["epochs", "batch_size", "resize", "crop", "extract_batch_size", "n_last_blocks"], source)
    if cfg["mode"] not in ("augment", "cached-features"):
        raise ExcbError(f"{source}: key 'mode' must be augment or cached-features, got {cfg['mode']!r}")
    lrs = cfg["lrs"]
    if not lrs or min(float(x) for x in lrs) <= 0:
        raise ExcbError(f"{source}: key 'lrs' must be a non-empty list of positive learning rates, got {lrs!r}")
    if cfg["feature"] != "auto" and cfg["feature"] not in FEATURES:
        raise ExcbError(f"{source}: key 'feature' must be auto or one of {sorted(FEATURES)}, got {cfg['feature']!r}")
    if not 0 <= float(cfg["holdout_fraction"]) < 1:
        raise ExcbError(f"{source}: key 'holdout_fraction' must be in [0, 1), got {cfg['holdout_fraction']!r}")
    validate_data(cfg.get("data") or {}, source)


def run(cfg: Dict[str, Any], run_dir: Path) -> Dict[str, Any]:
    t0 = time.time()
    run_dir = Path(run_dir)
    validate(cfg)
    lrs_base = [float(x) for x in cfg["lrs"]]
    seed = int(cfg["seed"])
    seed_everything(seed)
    device = select_device(cfg)
    model, _dim, ck = load_stage_backbone(cfg, int(cfg["crop"]))
    model = model.to(device).eval().requires_grad_(False)   # frozen: eval mode keeps BN statistics fixed
    feat_name = resolve_feature(cfg, model)
    feature_fn = FEATURES[feat_name](cfg)
    scale = float(cfg["batch_size"]) / 256.0 if cfg["lr_batch_scaling"] else 1.0
    lrs = [lr * scale for lr in lrs_base]

    etf = eval_transform(cfg["resize"], cfg["crop"])
    train_eval = build_dataset(cfg["data"], "train", etf)
    val = build_dataset(cfg["data"], "val", etf)
    skipped = skipped_record("linear", train_eval, val)
    C = len(train_eval.classes)
    tr_idx, ho_idx = stratified_holdout(train_eval.targets, float(cfg["holdout_fraction"]), seed)
    log = JsonlLogger(run_dir / "log.jsonl", enabled=D.is_main())
    cache_dir = (Path(cfg["cache_dir"]) if cfg["cache_dir"] else run_dir / "features") if cfg["cache"] else None
    wkey = checkpoint_key(ck, cfg)

    def frozen_feats(ds, split: str):
        key = {"weights": wkey, "transform": transform_key(cfg["resize"], cfg["crop"]), "data": dataset_fingerprint(ds),
               "feature": feat_name if feat_name == "pooled" else f"{feat_name}:{cfg['n_last_blocks']}", "split": split}
        return cached_features(cache_dir, key, lambda: extract_features(
            model, ds, cfg["extract_batch_size"], cfg["num_workers"], device, feature_fn=feature_fn, amp=cfg["amp"],
            channels_last=cfg["channels_last"], show_progress=cfg["progress"], desc=f"linear {split} features"))

    val_f, val_y = frozen_feats(val, "val")
    dim = int(val_f.shape[1])
    if ho_idx:
        ho_f, ho_y = frozen_feats(IndexedSubset(train_eval, ho_idx), "holdout")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)   # identical initial heads on every rank, whatever ran before
        heads = LinearHeads(dim, C, len(lrs), float(cfg["head_init_std"])).to(device)

    if cfg["mode"] == "cached-features":
        all_f, all_y = frozen_feats(train_eval, "train")
        tr_f, tr_y = all_f[tr_idx], all_y[tr_idx]
        del all_f

        def batches(epoch: int):
            order = torch.as_tensor(rank_order(len(tr_idx), seed, epoch))
            per = max(1, int(cfg["batch_size"]) // D.world_size())
            for s in range(0, len(order), per):
                b = order[s:s + per]
                yield tr_f[b], tr_y[b]
    else:
        train_aug = PerSampleSeeded(IndexedSubset(build_dataset(cfg["data"], "train", None), tr_idx,
                                                  transform=train_transform(cfg["crop"], cfg["rrc_scale"])))
        use_cl = cfg["channels_last"] and device.type == "cuda"

        def batches(epoch: int):
            # augmentation draws depend only on (seed, epoch, sample): a resumed epoch repeats them
            es = epoch_seed(seed, epoch, salt=1)
            train_aug.seed = es   # copied into the workers this epoch's loader starts
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(train_aug, rank_order(len(train_aug), seed, epoch)),
                batch_size=max(1, int(cfg["batch_size"]) // D.world_size()), shuffle=False,
                num_workers=int(cfg["num_workers"]), pin_memory=device.type == "cuda",
                generator=torch.Generator().manual_seed(es))
            for x, y in progress(loader, total=len(loader), desc=f"linear epoch {epoch + 1}", enabled=cfg["progress"]):
                x = x.to(device, non_blocking=True)
                if use_cl:
                    x = x.contiguous(memory_format=torch.channels_last)
                with torch.no_grad(), autocast(device, cfg["amp"]):
                    f = feature_fn(model, x)
                yield f.float(), y

    def evaluate(epoch: int) -> Dict[str, Any]:
        rec: Dict[str, Any] = {"val": evaluate_heads(heads, val_f, val_y)}
        if ho_idx:
            rec["holdout"] = evaluate_heads(heads, ho_f, ho_y)
        return rec

    out = train_heads(heads, lrs, cfg, len(tr_idx), batches, evaluate, EpochState(run_dir, cfg), log)
    if out["stopped"]:
        return stopped_result("linear", out["epoch"])
    last = out["history"][-1]
    val_acc = last["val"]
    # a head whose weights diverged (lr too high) scores arbitrarily: it is never selected
    ok = [i for i, h in enumerate(heads.heads) if not nonfinite_tensors(h.named_parameters())]
    if not ok:
        require_finite(heads.named_parameters(), "linear: every trained head", "lower lrs; no result was written")
    best_val = max(ok, key=lambda i: (val_acc[i][0], -i))
    if ho_idx:
        sel, how = max(ok, key=lambda i: (last["holdout"][i][0], -i)), "holdout"
    elif len(lrs) == 1:
        sel, how = 0, "single-lr"
    else:
        sel, how = best_val, "best-on-val"   # no holdout: the choice is made on val and labelled so
    metrics: Dict[str, Any] = {
        "top1": val_acc[sel][0], "top5": val_acc[sel][1], "selected_lr": lrs[sel], "selection": how,
        "best_on_val": {"top1": val_acc[best_val][0], "top5": val_acc[best_val][1], "lr": lrs[best_val]},
        "per_lr": [{"lr": lrs[i], "val_top1": val_acc[i][0], "val_top5": val_acc[i][1],
                    **({"holdout_top1": last["holdout"][i][0]} if ho_idx else {}),
                    **({} if i in ok else {"diverged": True})} for i in range(len(lrs))],
        "epochs_done": out["epoch"], "units": "percent",
    }
    protocol = protocol_record(cfg, drop=("cache", "cache_dir", "extract_batch_size"))
    protocol.update({"name": f"linear-{feat_name}" + ("-cached-features" if cfg["mode"] == "cached-features" else ""), "feature": feat_name, "feature_dim": dim, "lrs_effective": lrs,
                     "schedule": "cosine per step", "backbone_mode": "frozen, eval (BN statistics fixed)",
                     "train_view": ("RandomResizedCrop+flip" if cfg["mode"] == "augment" else "centre crop (cached)"),
                     "val_view": f"Resize {cfg['resize']} + CenterCrop {cfg['crop']}", "num_classes": C})
    data = data_record(cfg, len(train_eval), len(val), skipped=skipped, n_train_used=len(tr_idx),
                       n_holdout=len(ho_idx))
    return write_results(run_dir, "linear", metrics=metrics, protocol=protocol, data=data, checkpoint=ck, seed=seed, t0=t0)
