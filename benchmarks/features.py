"""Frozen-backbone feature extraction shared by every classification stage.

* Under torchrun each rank embeds one contiguous shard of the data set — no sampler padding,
  so no sample is embedded (or counted) twice — and the shards are gathered back in data-set
  order on every rank.
* ``torch.inference_mode``; bf16 autocast and channels_last on CUDA.
* Optional on-disk cache keyed by (weights, transform, data-set ids, feature function),
  written atomically by rank 0 and reused by later stages and reruns.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

from excb import distributed as D
from excb.finite import require_finite_rows
from excb.io import atomic_torch_save, sha256_json
from excb.safe_read import OWN_FILE_HINT, UnreadableFileError, read_torch_file

from benchmarks.common import autocast, gather_shards, progress, shard_range

FeatureFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def eval_transform(resize: int = 256, crop: int = 224):
    """DINO's evaluation view: Resize (bicubic, shorter side) + CenterCrop + ImageNet normalisation."""
    from excb.augment import eval_transform as _t

    return _t(int(resize), int(crop))


def transform_key(resize: int, crop: int) -> Dict[str, Any]:
    return {"kind": "resize-centercrop-bicubic-imagenet-norm", "resize": int(resize), "crop": int(crop)}


def dataset_fingerprint(dataset) -> str:
    """Hash of the ordered sample ids and labels: a cache written for other data is never reused."""
    ids = list(getattr(dataset, "sample_ids", None) or range(len(dataset)))
    return sha256_json({"ids": [str(i) for i in ids], "targets": [int(t) for t in getattr(dataset, "targets", [])]})


@torch.inference_mode()
def extract_features(model: nn.Module, dataset, batch_size: int = 256, num_workers: int = 0,
                     device: Optional[torch.device | str] = None, feature_fn: Optional[FeatureFn] = None,
                     amp: str = "auto", channels_last: bool = True, show_progress: bool = True,
                     desc: str = "features", out_dtype: torch.dtype = torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """Embed every sample of ``dataset`` (``ds[i] -> (tensor, label)``) with ``model`` in eval mode.

    Returns ``(features [N, D] on CPU, labels [N] int64)`` in data-set order, on every rank.
    ``feature_fn(model, x)`` replaces ``model(x)`` (e.g. concatenated CLS tokens of a ViT).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    n = len(dataset)
    start, end = shard_range(n, D.rank(), D.world_size())
    shard = torch.utils.data.Subset(dataset, list(range(start, end)))
    loader = torch.utils.data.DataLoader(shard, batch_size=max(1, int(batch_size)), shuffle=False,
                                         num_workers=int(num_workers), pin_memory=device.type == "cuda",
                                         drop_last=False, persistent_workers=False)
    was_training = model.training
    model.eval()
    use_cl = channels_last and device.type == "cuda"
    if use_cl:
        model = model.to(memory_format=torch.channels_last)
    feats, labels = [], []
    try:
        for x, y in progress(loader, total=len(loader), desc=desc, enabled=show_progress):
            x = x.to(device, non_blocking=True)
            if use_cl and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                f = feature_fn(model, x) if feature_fn is not None else model(x)
            feats.append(f.float().to("cpu", dtype=out_dtype))
            labels.append(torch.as_tensor(y, dtype=torch.long).cpu())
        if feats:
            local_f, local_y = torch.cat(feats), torch.cat(labels)
        else:  # an empty shard (fewer samples than ranks) still needs the feature width
            dim = _feature_dim(model, dataset, device, feature_fn, amp) if n else 0
            local_f, local_y = torch.zeros(0, dim, dtype=out_dtype), torch.zeros(0, dtype=torch.long)
    finally:
        model.train(was_training)
    if D.world_size() > 1:
        local_f = gather_shards(local_f, n)
        local_y = gather_shards(local_y, n)
    # after the gather, so every rank raises alike (none is left waiting in a collective)
    require_finite_rows(local_f, desc + _data_root(dataset), NONFINITE_HINT)
    return local_f, local_y


NONFINITE_HINT = ("the backbone outputs NaN/Inf for these images (diverged or damaged weights, or an fp16 overflow: "
                  "try amp=none); no result was written")


def _data_root(dataset) -> str:
    root = getattr(dataset, "root", None) or getattr(getattr(dataset, "base", None), "root", None)
    return f" of {root}" if root else ""


def _feature_dim(model, dataset, device, feature_fn, amp) -> int:
    x, _ = dataset[0]
    x = x.unsqueeze(0).to(device)
    with autocast(device, amp):
        f = feature_fn(model, x) if feature_fn is not None else model(x)
    return int(f.shape[-1])


def _is_cache_record(obj: Any, key_sha256: str) -> bool:
    return (isinstance(obj, dict) and obj.get("key_sha256") == key_sha256
            and isinstance(obj.get("features"), torch.Tensor) and isinstance(obj.get("labels"), torch.Tensor)
            and obj["features"].shape[0] == obj["labels"].shape[0])


def cached_features(cache_dir: Optional[Path], key: Dict[str, Any], compute: Callable[[], Tuple[torch.Tensor, torch.Tensor]],
                    log: Callable[[str], None] = print) -> Tuple[torch.Tensor, torch.Tensor]:
    """``compute()`` once per ``key``: the result is stored under ``cache_dir/<sha256(key)>.pt``.

    A file whose recorded key differs, or that does not load, is recomputed and replaced.
    ``cache_dir=None`` disables caching.
    """
    if cache_dir is None:
        return compute()
    cache_dir = Path(cache_dir)
    h = sha256_json(key)
    path = cache_dir / f"{h[:32]}.pt"
    hit = None
    if path.exists():
        try:   # a file needing a full unpickle (UnsafePickleError) is an error, not a cache miss
            obj = read_torch_file(path, what="feature cache", unsafe_hint=OWN_FILE_HINT)
        except UnreadableFileError as e:   # a damaged cache file is just recomputed
            log(f"[excb-bench] {e}; recomputing")
            obj = None
        if _is_cache_record(obj, h):
            require_finite_rows(obj["features"], f"feature cache {path}", "delete the file to recompute it")
            hit = (obj["features"], obj["labels"])
    # every rank must agree, or the ranks that miss would wait forever in the collectives
    if D.is_dist():
        flags: list = [None] * D.world_size()
        torch.distributed.all_gather_object(flags, hit is not None)
        all_hit = all(flags)
    else:
        all_hit = hit is not None
    if all_hit and hit is not None:
        if D.is_main():
            log(f"[excb-bench] features reused from {path}")
        return hit
    feats, labels = compute()
    if D.is_main():
        atomic_torch_save(path, {"key_sha256": h, "key": key, "features": feats, "labels": labels})
    D.barrier()
    return feats, labels
