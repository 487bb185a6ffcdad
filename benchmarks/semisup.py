"""Semi-supervised fine-tuning on 1 % / 10 % of the labels (SPEC sections 6 and 9).

The whole backbone plus a linear head are fine-tuned on the labelled subset: 50 epochs, batch
512, SGD momentum 0.9, cosine schedule, backbone lr 8e-5 (1 %) / 3e-4 (10 %) and head lr
1.0 / 0.2 (the paper's); top-1 / top-5 on val. The subset is SimCLR's split file when one is
given (validated, see :mod:`benchmarks.subsets`), otherwise a class-balanced draw with a
fixed seed whose ids are saved as ``subset_ids.txt`` next to results.json.

Resumable like the linear probe: one atomic state file per epoch, data order and
augmentation seeded per (seed, epoch), so a resumed run ends with the same numbers.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from excb import ExcbError
from excb import distributed as D
from excb.config import require_positive
from excb.finite import require_finite
from excb.data import build_dataset, validate_data
from excb.io import JsonlLogger, sha256_file

from benchmarks.common import (EpochState, autocast, data_record, epoch_seed, load_stage_backbone, progress,
                               skipped_record,
                               protocol_record, rng_state, seed_everything, select_device, set_rng_state,
                               stage_defaults, stopped_result, topk_correct, write_results)
from benchmarks.features import eval_transform, extract_features
from benchmarks.linear import PerSampleSeeded, cosine_lr, rank_order, train_transform
from benchmarks.subsets import (SIMCLR_LINES, IndexedSubset, balanced_subset, indices_of, parse_subset_file,
                                per_class_count, save_ids)

# The paper's learning rates per labelled fraction (used where backbone_lr / head_lr are null).
LR_PRESETS: Dict[int, Dict[str, float]] = {1: {"backbone_lr": 8e-5, "head_lr": 1.0},
                                          10: {"backbone_lr": 3e-4, "head_lr": 0.2}}

DEFAULTS: Dict[str, Any] = stage_defaults(
    percent=1,                   # 1 or 10 (the pipeline's semisup_1 / semisup_10 set it)
    subset_file=None,            # SimCLR split file; "{percent}" is replaced, e.g. /data/subsets/{percent}percent.txt
    require_subset_file=False,   # true (ImageNet configs): no silent fallback to a balanced draw
    subset_expected_lines="auto",  # auto (12811 / 128116 for a 1000-class data set) | none | an integer
    subset_seed=0,               # balanced draw when there is no subset file (fixed: same subset for every run)
    epochs=50,
    batch_size=512,              # global, over all ranks
    backbone_lr=None,            # null: the paper's 8e-5 (1 %) / 3e-4 (10 %)
    head_lr=None,                # null: the paper's 1.0 (1 %) / 0.2 (10 %)
    momentum=0.9,
    weight_decay=0.0,
    head_init_std=0.01,
    resize=256,
    crop=224,
    rrc_scale=[0.08, 1.0],
    sync_bn=True,                # SyncBatchNorm under DDP on CUDA
    eval_every=0,                # > 0: also evaluate on val every N epochs (logged); the last epoch always
    extract_batch_size=256,
    stop_after_epoch=0,          # > 0: stop after this epoch (the rerun resumes)
)


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, dim: int, num_classes: int, init_std: float):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, num_classes)
        nn.init.normal_(self.head.weight, std=init_std)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def learning_rates(cfg: Dict[str, Any]) -> Tuple[float, float]:
    p = int(cfg["percent"])
    preset = LR_PRESETS.get(p)
    if preset is None and (cfg["backbone_lr"] is None or cfg["head_lr"] is None):
        raise ExcbError(f"semisup: percent={p} has no paper learning rates (1 or 10 do); set backbone_lr and head_lr")
    bb = float(cfg["backbone_lr"]) if cfg["backbone_lr"] is not None else preset["backbone_lr"]
    hd = float(cfg["head_lr"]) if cfg["head_lr"] is not None else preset["head_lr"]
    return bb, hd


def expected_lines(cfg: Dict[str, Any], n_classes: int) -> Optional[int]:
    v = str(cfg["subset_expected_lines"]).strip().lower()
    if v == "auto":
        return SIMCLR_LINES.get(int(cfg["percent"])) if n_classes == 1000 else None
    if v in ("none", "null", "0", ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise ExcbError(f"semisup: key 'subset_expected_lines' must be auto, none or an integer, got {v!r}") from None


def _subset_path(cfg: Dict[str, Any]) -> Path:
    return Path(str(cfg["subset_file"]).replace("{percent}", str(int(cfg["percent"]))))


def choose_subset(cfg: Dict[str, Any], train) -> Tuple[List[int], Dict[str, Any]]:
    """Indices of the labelled subset and a record of where it came from."""
    p = int(cfg["percent"])
    if cfg["subset_file"]:
        path = _subset_path(cfg)
        names = parse_subset_file(path, expected_lines(cfg, len(train.classes)), train.classes, train.sample_ids)
        return indices_of(names, train.sample_ids), {"source": "file", "path": str(path), "sha256": sha256_file(path)}
    if cfg["require_subset_file"]:
        raise ExcbError(f"semisup: key 'subset_file' is required by this config (SimCLR's {p}percent.txt, which cannot "
                        f"be downloaded here); pass subset_file=/path/to/{p}percent.txt")
    per = per_class_count(len(train), len(train.classes), p)
    idx = balanced_subset(train.targets, per, int(cfg["subset_seed"]))
    return idx, {"source": "balanced", "per_class": per, "subset_seed": int(cfg["subset_seed"])}


def validate(cfg: Dict[str, Any], source: str = "semisup") -> None:
    """The values this stage refuses, checked before anything runs (the pipeline calls it first)."""
    require_positive(cfg, ["percent", "epochs", "batch_size", "resize", "crop", "extract_batch_size"], source)
    learning_rates(cfg)
    expected_lines(cfg, 0)
    validate_data(cfg.get("data") or {}, source)


def run(cfg: Dict[str, Any], run_dir: Path) -> Dict[str, Any]:
    t0 = time.time()
    run_dir = Path(run_dir)
    validate(cfg)
    seed = int(cfg["seed"])
    stage = f"semisup_{cfg['percent']}"
    bb_lr, head_lr = learning_rates(cfg)
    if cfg["require_subset_file"] and not cfg["subset_file"]:   # fail before loading anything large
        choose_subset(cfg, None)
    if cfg["subset_file"] and not _subset_path(cfg).is_file():
        parse_subset_file(_subset_path(cfg))   # the one-line "not found" error
    seed_everything(seed)
    device = select_device(cfg)
    backbone, dim, ck = load_stage_backbone(cfg, int(cfg["crop"]))
    if ck.get("format") == "pixels":
        raise ExcbError("semisup: backbone.name=pixels has nothing to fine-tune; use a network")

    train_raw = build_dataset(cfg["data"], "train", None)
    val = build_dataset(cfg["data"], "val", eval_transform(cfg["resize"], cfg["crop"]))
    skipped = skipped_record(stage, train_raw, val)
    C = len(train_raw.classes)
    idx, subset = choose_subset(cfg, train_raw)
    subset_ds = IndexedSubset(train_raw, idx, transform=train_transform(cfg["crop"], cfg["rrc_scale"]))
    labelled = PerSampleSeeded(subset_ds)
    if D.is_main():
        save_ids(run_dir / "subset_ids.txt", subset_ds.sample_ids)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)   # the same head on every rank
        model = Classifier(backbone, dim, C, float(cfg["head_init_std"]))
    model = model.to(device)
    ddp: nn.Module = model
    if D.world_size() > 1:
        if device.type == "cuda" and cfg["sync_bn"]:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    groups = [{"params": [p for p in model.backbone.parameters() if p.requires_grad], "base_lr": bb_lr, "lr": bb_lr},
              {"params": list(model.head.parameters()), "base_lr": head_lr, "lr": head_lr}]
    opt = torch.optim.SGD(groups, lr=head_lr, momentum=float(cfg["momentum"]), weight_decay=float(cfg["weight_decay"]))
    fp16 = device.type == "cuda" and cfg["amp"] == "fp16"
    scaler = torch.amp.GradScaler("cuda", enabled=fp16)

    epochs = int(cfg["epochs"])
    world = D.world_size()
    per_rank = max(1, int(cfg["batch_size"]) // world)
    steps_per_epoch = math.ceil(math.ceil(len(labelled) / world) / per_rank)
    total = epochs * steps_per_epoch
    state = EpochState(run_dir, cfg)
    log = JsonlLogger(run_dir / "log.jsonl", enabled=D.is_main())
    start, history = 0, []
    st = state.load()
    if st is not None:
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        if st.get("scaler"):
            scaler.load_state_dict(st["scaler"])
        set_rng_state(st["rng"])
        start, history = int(st["epoch"]) + 1, list(st["history"])
        if D.is_main():
            print(f"[excb-bench] {stage}: resuming after epoch {start} of {epochs}")

    def evaluate() -> Tuple[float, float]:
        logits, y = extract_features(model, val, cfg["extract_batch_size"], cfg["num_workers"], device,
                                     amp=cfg["amp"], channels_last=cfg["channels_last"],
                                     show_progress=cfg["progress"], desc=f"{stage} val")
        c1, c5 = topk_correct(logits, y, (1, 5))
        n = max(len(y), 1)
        return 100.0 * c1 / n, 100.0 * c5 / n

    use_cl = cfg["channels_last"] and device.type == "cuda"
    stop = int(cfg["stop_after_epoch"] or 0)
    for epoch in range(start, epochs):
        model.train()
        es = epoch_seed(seed, epoch, salt=1)
        labelled.seed = es          # augmentation: per (epoch, sample), whatever the workers / ranks
        torch.manual_seed(epoch_seed(seed, epoch, salt=2 + D.rank()))   # anything else random (drop path)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(labelled, rank_order(len(labelled), seed, epoch)), batch_size=per_rank,
            shuffle=False, num_workers=int(cfg["num_workers"]), pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(es))
        step = epoch * steps_per_epoch
        loss_sum, n_seen = 0.0, 0
        for x, y in progress(loader, total=len(loader), desc=f"{stage} epoch {epoch + 1}", enabled=cfg["progress"]):
            for g in opt.param_groups:
                g["lr"] = cosine_lr(g["base_lr"], step, total)
            step += 1
            if x.shape[0] < 2:   # BatchNorm cannot train on one sample; every rank has the same batch sizes
                continue
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if use_cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, cfg["amp"]):
                loss = F.cross_entropy(ddp(x).float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            loss_sum += float(loss.detach()) * y.shape[0]
            n_seen += y.shape[0]
        # a diverged epoch is not saved: the state of the last finite epoch stays on disk
        require_finite(model.named_parameters(), f"{stage}: the fine-tuned model after epoch {epoch + 1} (loss "
                       f"{loss_sum / max(n_seen, 1):.4g})", "lower backbone_lr / head_lr; no result was written")
        rec: Dict[str, Any] = {"epoch": epoch + 1, "loss": loss_sum / max(n_seen, 1),
                               "lr_backbone": cosine_lr(bb_lr, step, total), "lr_head": cosine_lr(head_lr, step, total)}
        if cfg["eval_every"] and (epoch + 1) % int(cfg["eval_every"]) == 0 and epoch + 1 < epochs:
            rec["val_top1"], rec["val_top5"] = evaluate()
        history.append(rec)
        log.log(rec)
        state.save({"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scaler": scaler.state_dict() if fp16 else None, "rng": rng_state(), "history": history})
        if stop and epoch + 1 == stop and epoch + 1 < epochs:
            return stopped_result(stage, epoch + 1)

    top1, top5 = evaluate()
    log.log({"event": "final", "val_top1": top1, "val_top5": top5})
    metrics = {"top1": top1, "top5": top5, "final_train_loss": history[-1]["loss"] if history else None,
               "epochs_done": epochs, "n_labelled": len(idx), "units": "percent"}
    protocol = protocol_record(cfg, drop=("extract_batch_size", "eval_every"))
    protocol.update({"name": f"finetune-{cfg['percent']}pct", "backbone_lr_effective": bb_lr, "head_lr_effective": head_lr,
                     "schedule": "cosine per step", "train_view": "RandomResizedCrop+flip",
                     "val_view": f"Resize {cfg['resize']} + CenterCrop {cfg['crop']}", "num_classes": C,
                     "subset": subset})
    data = data_record(cfg, len(train_raw), len(val), skipped=skipped, n_labelled=len(idx),
                       subset_ids="subset_ids.txt")
    return write_results(run_dir, stage, metrics=metrics, protocol=protocol, data=data, checkpoint=ck, seed=seed, t0=t0)
