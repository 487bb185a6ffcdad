"""k-NN classification on frozen features: DINO's weighted vote (SPEC sections 6 and 9).

Features of the centre view are L2-normalised; a test sample's ``k`` nearest train samples
by cosine similarity vote for their class with weight ``exp(sim / T)`` (T = 0.07). All ``k``
of ``k_list`` come from one top-``max(k)`` search. Top-5 is reported where it means something
(k >= 5 and at least 5 classes). Any test-set size works: ``k`` is clamped to the number of
train samples, and test queries are processed in chunks so memory stays bounded (the 1.28 M x
2048 ImageNet bank is held once, in fp16 on a GPU).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Sequence

import torch

from excb import ExcbError
from excb import distributed as D
from excb.config import require_positive
from excb.data import build_dataset, validate_data
from excb.io import JsonlLogger

from benchmarks.common import (checkpoint_key, data_record, load_stage_backbone, protocol_record, skipped_record,
                               select_device, shard_range, stage_defaults, write_results)
from benchmarks.features import cached_features, dataset_fingerprint, eval_transform, extract_features, transform_key
# the classifier itself lives in excb (pretraining's online monitor uses it too); re-exported here
from excb.knn import _chunk_predictions, _cpu_workers, _group_size, exact_topk, knn_classify, knn_metrics, l2_normalize  # noqa: F401

DEFAULTS: Dict[str, Any] = stage_defaults(
    k=[10, 20, 100, 200],        # all from one top-max(k) search
    headline_k=20,               # metrics.top1 / top5 are this k's (the paper's 20-NN)
    temperature=0.07,
    resize=256,                  # eval view: Resize (bicubic) + CenterCrop, scaled for small images
    crop=224,
    batch_size=256,              # extraction batch per rank
    query_chunk=256,             # test queries per similarity block (bounds memory)
    bank_dtype="auto",           # auto (float16 on CUDA, float32 on CPU) | float16 | float32
    cache=True,                  # keep extracted features on disk and reuse them
    cache_dir=None,              # default <run_dir>/features
)


def knn_counts(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
               k_list: Sequence[int], T: float, num_classes: int, chunk: int) -> Dict[int, torch.Tensor]:
    """Per k: [top1 hits, top5 hits] over this rank's test shard (summed over ranks by the caller)."""
    preds = knn_classify(train_f, train_y, test_f, k_list, T, num_classes, chunk, normalized=True)
    y = test_y.view(-1, 1).cpu()
    return {k: torch.tensor([float((p[:, :1] == y).any(1).sum()), float((p[:, :5] == y).any(1).sum())],
                            dtype=torch.float64) for k, p in preds.items()}


def validate(cfg: Dict[str, Any], source: str = "knn") -> None:
    """The values this stage refuses, checked before anything runs (the pipeline calls it first)."""
    require_positive(cfg, ["batch_size", "query_chunk", "resize", "crop", "temperature"], source)
    k_list = [int(k) for k in cfg["k"]]
    if not k_list or min(k_list) < 1:
        raise ExcbError(f"{source}: key 'k' must be a non-empty list of positive integers, got {cfg['k']!r}")
    if cfg["headline_k"] not in k_list:
        raise ExcbError(f"{source}: key 'headline_k' ({cfg['headline_k']}) must be one of k={k_list}")
    if cfg["bank_dtype"] not in ("auto", "float16", "float32"):
        raise ExcbError(f"{source}: key 'bank_dtype' must be auto, float16 or float32, got {cfg['bank_dtype']!r}")
    validate_data(cfg.get("data") or {}, source)


def run(cfg: Dict[str, Any], run_dir: Path) -> Dict[str, Any]:
    """The k-NN stage: extract (or reuse) train/val features, vote, write results.json."""
    t0 = time.time()
    run_dir = Path(run_dir)
    validate(cfg)
    k_list = [int(k) for k in cfg["k"]]
    device = select_device(cfg)
    # features travel, are cached and are searched in this dtype: fp16 halves the 1.28M x 2048 bank
    bank_dtype = {"auto": torch.float16 if device.type == "cuda" else torch.float32,
                  "float16": torch.float16, "float32": torch.float32}.get(cfg["bank_dtype"])
    if bank_dtype is None:
        raise ExcbError(f"knn: key 'bank_dtype' must be auto, float16 or float32, got {cfg['bank_dtype']!r}")
    torch.manual_seed(int(cfg["seed"]))
    model, dim, ck = load_stage_backbone(cfg, int(cfg["crop"]))
    model = model.to(device)
    tf = eval_transform(cfg["resize"], cfg["crop"])
    train = build_dataset(cfg["data"], "train", tf)
    val = build_dataset(cfg["data"], "val", tf)
    skipped = skipped_record("knn", train, val)
    C = len(train.classes)
    log = JsonlLogger(run_dir / "log.jsonl", enabled=D.is_main())
    cache_dir = (Path(cfg["cache_dir"]) if cfg["cache_dir"] else run_dir / "features") if cfg["cache"] else None
    if ck["format"] == "pixels":
        cache_dir = None   # raw pixels are cheaper to recompute than to store

    def feats(ds, split: str):
        key = {"weights": checkpoint_key(ck, cfg), "transform": transform_key(cfg["resize"], cfg["crop"]),
               "data": dataset_fingerprint(ds), "feature": "pooled", "split": split, "dtype": str(bank_dtype)}
        return cached_features(cache_dir, key, lambda: extract_features(
            model, ds, cfg["batch_size"], cfg["num_workers"], device, amp=cfg["amp"],
            channels_last=cfg["channels_last"], show_progress=cfg["progress"], desc=f"knn {split} features",
            out_dtype=bank_dtype))

    t_feat = time.time()
    train_f, train_y = feats(train, "train")
    val_f, val_y = feats(val, "val")
    t_feat = time.time() - t_feat
    log.log({"event": "features", "n_train": len(train), "n_val": len(val), "dim": int(train_f.shape[1]), "s": t_feat})

    bank = l2_normalize(train_f.to(device), dtype=bank_dtype)
    del train_f
    # each rank votes for one shard of the test set; hit counts are summed
    s, e = shard_range(len(val), D.rank(), D.world_size())
    counts = knn_counts(bank, train_y, val_f[s:e], val_y[s:e], k_list, float(cfg["temperature"]), C,
                        int(cfg["query_chunk"]))
    n_train, n_val = bank.shape[0], len(val)
    metrics: Dict[str, Any] = {}
    for k in k_list:
        c = D.all_reduce_sum(counts[k].to(device)).cpu() if D.is_dist() else counts[k]
        ke = min(k, n_train)
        metrics[f"top1_k{k}"] = 100.0 * float(c[0]) / max(n_val, 1)
        if ke >= 5 and C >= 5:
            metrics[f"top5_k{k}"] = 100.0 * float(c[1]) / max(n_val, 1)
    hk = int(cfg["headline_k"])
    metrics = {"top1": metrics[f"top1_k{hk}"], "top5": metrics.get(f"top5_k{hk}"), **metrics,
               "k_effective": {str(k): min(k, n_train) for k in k_list}, "units": "percent"}
    log.log({"event": "knn", **{k: v for k, v in metrics.items() if isinstance(v, float)}})
    protocol = protocol_record(cfg, drop=("cache", "cache_dir", "query_chunk", "bank_dtype"))
    protocol.update({"name": "knn-weighted-vote", "features": "l2-normalised pooled output", "feature_dim": dim,
                     "similarity": "cosine", "weights": "exp(sim/T)", "num_classes": C})
    return write_results(run_dir, "knn", metrics=metrics, protocol=protocol, data=data_record(cfg, len(train), n_val, skipped=skipped),
                         checkpoint=ck, seed=int(cfg["seed"]), t0=t0, extra={"feature_s": round(t_feat, 3)})
