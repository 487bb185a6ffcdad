"""Shared plumbing of the classification stages (k-NN, linear probe, semi-supervised).

* the config keys that name the backbone under test (:data:`BACKBONE_KEYS`) and
  :func:`load_stage_backbone`, the one place a stage gets its backbone;
* device / AMP selection, seeding, top-k accuracy;
* contiguous sharding + ordered gathering for evaluation under torchrun;
* :class:`EpochState`: the per-epoch resumable state file of a training stage;
* :func:`write_results`: the results.json contract of DESIGN.md.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import os
import random
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from excb import ExcbError
from excb import distributed as D
from excb.cpu import tune_malloc
from excb.data import DATA_DEFAULTS
from excb.io import atomic_torch_save, atomic_write_json, package_versions, sha256_json
from excb.safe_read import OWN_FILE_HINT, UnreadableFileError, read_torch_file

# Config keys every classification stage shares.
BACKBONE_KEYS: Dict[str, Any] = {
    "checkpoint": None,          # backbone checkpoint (ours or third-party); null = random init (sanity row)
    "format": "auto",            # checkpoint format (see `excb-bench formats`)
    "which": "teacher",          # teacher or student of a teacher/student checkpoint
    "arch": None,                # architecture, when the checkpoint does not say
    "trust_checkpoint": False,   # allow full unpickling (only for files you trust)
    "backbone": {"name": "resnet50", "kwargs": {}},   # used when checkpoint is null ("pixels": raw-pixel k-NN)
}
RUNTIME_KEYS: Dict[str, Any] = {
    "seed": 0,
    "device": "auto",            # auto (cuda if available) | cpu | cuda
    "amp": "auto",               # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | none
    "channels_last": True,       # CUDA only
    "num_workers": 4,
    "progress": True,
}


def stage_defaults(**specific: Any) -> Dict[str, Any]:
    """A stage's DEFAULTS: backbone keys + runtime keys + a ``data`` section + its own keys."""
    d: Dict[str, Any] = copy.deepcopy(BACKBONE_KEYS)
    d["data"] = dict(DATA_DEFAULTS)
    d.update(copy.deepcopy(RUNTIME_KEYS))
    d.update(copy.deepcopy(specific))
    return d


# ----------------------------------------------------------------------------- device, AMP, seeds
def select_device(cfg: Dict[str, Any]) -> torch.device:
    """Join torchrun's process group if launched by it; return this rank's device."""
    want = cfg.get("device", "auto")
    dev = D.init_from_env()
    if want == "cpu" or dev.type == "cpu":
        tune_malloc()   # feature banks and similarity blocks: reuse large blocks, no page-faulting
    if want == "cpu":
        return torch.device("cpu")
    if want == "cuda" and not torch.cuda.is_available():
        raise ExcbError("device: 'cuda' requested but no GPU is visible; use device=auto or device=cpu")
    if want not in ("auto", "cpu", "cuda"):
        raise ExcbError(f"device: unknown value '{want}'; use auto, cpu or cuda")
    return dev


def autocast(device: torch.device, amp: str = "auto"):
    """bf16 (or fp16) autocast on CUDA; full precision on CPU (CPU autocast is slower and changes numbers)."""
    if amp not in ("auto", "bf16", "fp16", "none"):
        raise ExcbError(f"amp: unknown value '{amp}'; use auto, bf16, fp16 or none")
    if device.type != "cuda" or amp == "none":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    """A seed for one epoch: data order and augmentation depend only on (seed, epoch), so a
    resumed run draws exactly what the uninterrupted one would have."""
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + salt) % (2 ** 62)


def rng_state() -> Dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: Dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


@torch.no_grad()
def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> List[int]:
    """Number of samples whose label is among the ``k`` highest scores, for each k (k clamped to #classes)."""
    maxk = min(max(ks), logits.shape[-1])
    pred = logits.topk(maxk, dim=-1).indices
    hit = pred.eq(target.view(-1, 1))
    return [int(hit[:, :min(k, maxk)].any(dim=1).sum()) for k in ks]


# ----------------------------------------------------------------------------- distributed helpers
def shard_range(n: int, rank: int, world: int) -> Tuple[int, int]:
    """Contiguous shard ``[start, end)`` of ``n`` items for ``rank``; sizes differ by at most one and
    nothing is padded, so no sample is counted twice."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def gather_shards(local: torch.Tensor, n_total: int, chunk_rows: int = 65536) -> torch.Tensor:
    """Concatenate each rank's contiguous shard (see :func:`shard_range`) back in dataset order.

    ``all_gather`` needs equal shapes, so shards are padded to the largest one and the padding
    dropped again; rows travel in chunks to bound the communication buffers.
    """
    world = D.world_size()
    if world == 1:
        return local
    sizes = [shard_range(n_total, r, world) for r in range(world)]
    counts = [e - s for s, e in sizes]
    if local.shape[0] != counts[D.rank()]:
        raise ExcbError(f"gather_shards: rank {D.rank()} holds {local.shape[0]} rows, expected {counts[D.rank()]}")
    maxc = max(counts)
    pad = torch.zeros((maxc - local.shape[0],) + tuple(local.shape[1:]), dtype=local.dtype, device=local.device)
    padded = torch.cat([local, pad])
    # NCCL gathers only device tensors; gloo only CPU ones
    comm_dev = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
    pieces: List[List[torch.Tensor]] = [[] for _ in range(world)]
    for s in range(0, max(maxc, 1), chunk_rows):
        part = padded[s:s + chunk_rows].to(comm_dev).contiguous()
        outs = [torch.empty_like(part) for _ in range(world)]
        torch.distributed.all_gather(outs, part)
        for r in range(world):
            pieces[r].append(outs[r].to(local.device))
    return torch.cat([torch.cat(pieces[r])[:counts[r]] for r in range(world)])


def all_reduce_grads(params: Iterable[nn.Parameter]) -> None:
    """Average gradients over ranks (a DDP-free data-parallel step for small heads)."""
    world = D.world_size()
    if world == 1:
        return
    for p in params:
        if p.grad is not None:
            D.all_reduce_sum(p.grad)
            p.grad.div_(world)


# ----------------------------------------------------------------------------- backbone
class PixelBackbone(nn.Module):
    """Raw pixels as features (the leaderboard's raw-pixel k-NN sanity row)."""

    def __init__(self, size: Optional[int] = None):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size and x.shape[-1] != self.size:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                                          align_corners=False)
        return x.flatten(1)


def _sha256_cached(path: Path) -> str:
    from excb.io import sha256_file_cached  # cached by (path, size, mtime) across stages

    return sha256_file_cached(path)


# a ViT evaluated below this fraction of its training resolution gets a recorded warning
VIT_MIN_RESOLUTION_FRACTION = 0.5


def resolution_warning(model: nn.Module, crop: int) -> Optional[str]:
    """A warning (printed; results.json keeps it under ``checkpoint.warnings``) when a ViT is evaluated
    far below the resolution its position embeddings were trained at."""
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    train_res = int(size[0] if isinstance(size, (tuple, list)) else size) if size else 0
    if not train_res or crop >= VIT_MIN_RESOLUTION_FRACTION * train_res:
        return None
    msg = (f"ViT trained at {train_res} px evaluated at crop={crop} px ({crop / train_res:.0%} of it): its position "
           f"embeddings are interpolated far below their training grid, so the numbers are not comparable with "
           f"results at {train_res} px")
    if D.is_main():
        print(f"[excb-bench] warning: {msg}", flush=True)
    return msg


def load_stage_backbone(cfg: Dict[str, Any], crop: int) -> Tuple[nn.Module, int, Dict[str, Any]]:
    """The backbone a stage evaluates: from ``cfg['checkpoint']`` via the format registry, or
    randomly initialised from ``cfg['backbone']`` when no checkpoint is given (sanity rows).

    Returns ``(module, feature_dim, checkpoint_info)``; the info is the results.json
    ``checkpoint`` record (path, sha256, format, arch, ...).
    """
    ck = cfg.get("checkpoint")
    bb = cfg.get("backbone") or {}
    if ck:
        from excb.zoo import resolve_checkpoint  # zoo:NAME -> cached file (+ the entry's format and arch)

        ck, fmt, arch, zoo_rec = resolve_checkpoint(ck, cfg.get("format", "auto"), cfg.get("arch"))
        path = Path(ck)
        if not path.exists():
            raise ExcbError(f"checkpoint: file '{path}' not found; pass an existing checkpoint (or checkpoint=null for a random-init row)")
        from excb.checkpoint_formats import load_backbone  # lazy: the registry is heavy and optional here

        kw: Dict[str, Any] = {"format": fmt, "which": cfg.get("which", "teacher"), "arch": arch}
        params = inspect.signature(load_backbone).parameters
        for name in ("trust_pickle", "trust_checkpoint", "trust"):   # tolerate a renamed keyword
            if name in params:
                kw[name] = bool(cfg.get("trust_checkpoint", False))
                break
        model, dim, info = load_backbone(str(path), **kw)
        info = dict(info or {})
        rec = {"path": str(path), "sha256": _sha256_cached(path), "format": info.pop("format", cfg.get("format")),
               "arch": info.pop("arch", getattr(model, "arch", None))}
        rec.update({k: v for k, v in info.items() if isinstance(v, (str, int, float, bool, type(None), list, dict))})
        rec["trusted_pickle"] = bool(cfg.get("trust_checkpoint", False))   # provenance: loaded with --trust-checkpoint
        if zoo_rec:
            rec["zoo"] = zoo_rec
        warning = resolution_warning(model, crop)
        if warning:
            rec["warnings"] = [*rec.get("warnings", []), warning]
        return model, int(dim), rec
    name = bb.get("name")
    kwargs = dict(bb.get("kwargs") or {})
    if name == "pixels":
        size = int(kwargs.get("size") or crop)
        return PixelBackbone(size), 3 * size * size, {"path": None, "sha256": None, "format": "pixels",
                                                      "arch": "pixels", "init": f"raw pixels {size}x{size}"}
    if not name:
        raise ExcbError("backbone.name: required when checkpoint is null (e.g. resnet50, or pixels)")
    from excb.backbones import create_backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg.get("seed", 0)))
        model, dim = create_backbone(name, **kwargs)
    return model, int(dim), {"path": None, "sha256": None, "format": "random-init", "arch": name,
                             "init": f"random (seed {cfg.get('seed', 0)})"}


def checkpoint_key(info: Dict[str, Any], cfg: Dict[str, Any]) -> Dict[str, Any]:
    """What identifies the weights for feature caching: the file hash, or the random-init recipe."""
    if info.get("sha256"):
        return {"sha256": info["sha256"], "which": cfg.get("which"), "format": info.get("format")}
    return {"init": info.get("format"), "backbone": cfg.get("backbone"), "seed": cfg.get("seed")}


# ----------------------------------------------------------------------------- resumable state
class EpochState:
    """``<run_dir>/state.pth``: everything a training stage needs to continue after epoch ``e``.

    Written atomically once per epoch by rank 0. A state written under another config is
    refused (one line, with a hint) rather than silently mixed into this run.
    """

    def __init__(self, run_dir: Path, cfg: Dict[str, Any], ignore: Sequence[str] = ("progress", "num_workers",
                                                                                   "stop_after_epoch")):
        self.path = Path(run_dir) / "state.pth"
        self.cfg_hash = sha256_json({k: v for k, v in cfg.items() if k not in ignore})

    def load(self) -> Optional[Dict[str, Any]]:
        """The saved state, or None when there is none or it is damaged (the stage starts over).

        The file is read weights-only: one that needs a full unpickle (it could run code) is an
        error naming its globals, and is neither loaded nor replaced."""
        st = None
        try:
            st = read_torch_file(self.path, what="stage state", unsafe_hint=OWN_FILE_HINT, missing_ok=True)
        except UnreadableFileError as e:   # truncated by a crash or a bad disk: redo the stage's epochs
            print(f"[excb-bench] {e}; starting this stage over")
            return None
        if st is None:
            return None
        if not isinstance(st, dict):
            print(f"[excb-bench] {self.path}: not a stage state (top level is {type(st).__name__}); "
                  f"starting this stage over")
            return None
        if st.get("config_hash") != self.cfg_hash:
            raise ExcbError(f"{self.path}: written by a run with another config; delete it (or use another "
                            f"--output-dir) to start over with this config")
        return st

    def save(self, state: Dict[str, Any]) -> None:
        if D.is_main():
            atomic_torch_save(self.path, {**state, "config_hash": self.cfg_hash})
        D.barrier()


# ----------------------------------------------------------------------------- results
def write_results(run_dir: Path, stage: str, *, metrics: Dict[str, Any], protocol: Dict[str, Any],
                  data: Dict[str, Any], checkpoint: Dict[str, Any], seed: int, t0: float,
                  extra: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Assemble results.json (DESIGN.md's contract) and write it atomically from rank 0."""
    res = {"stage": stage, "status": "complete", "metrics": metrics, "protocol": protocol, "data": data,
           "checkpoint": checkpoint, "seed": seed, "world_size": D.world_size(), "wall_s": round(time.time() - t0, 3),
           "versions": package_versions()}
    if extra:
        res.update(extra)
    if D.is_main():
        atomic_write_json(Path(run_dir) / "results.json", res)
    D.barrier()
    return res


def stopped_result(stage: str, epoch: int) -> Dict[str, Any]:
    """What a stage returns when ``stop_after_epoch`` ended it early (the pipeline keeps it 'running')."""
    return {"stage": stage, "status": "stopped", "epochs_done": epoch}


SKIPPED_SHOWN = 10   # names listed in results.json's data.skipped.first (the count covers all)


def skipped_record(stage: str, *datasets: Any) -> Optional[Dict[str, Any]]:
    """``{"count", "first": [...]}`` of the unreadable images that ``data.on_error=skip`` dropped from
    ``datasets`` (paths relative to ``data.root``), also printed once on the console; None if none."""
    names: List[str] = []
    for ds in datasets:
        root = Path(getattr(ds, "root", "") or "")
        for p in getattr(ds, "skipped", None) or []:
            rel = os.path.relpath(p, root.parent) if root.parent != Path("") else str(p)
            if rel not in names:
                names.append(rel)
    if not names:
        return None
    if D.is_main():
        shown = ", ".join(names[:3]) + (f", ... (+{len(names) - 3} more)" if len(names) > 3 else "")
        print(f"[excb-bench] {stage}: skipped {len(names)} unreadable image(s) (data.on_error=skip): {shown}; "
              f"the count and the first {SKIPPED_SHOWN} names are in results.json (data.skipped)", flush=True)
    return {"count": len(names), "first": names[:SKIPPED_SHOWN]}


def data_record(cfg: Dict[str, Any], n_train: int, n_val: int, skipped: Optional[Dict[str, Any]] = None,
                **extra: Any) -> Dict[str, Any]:
    """results.json's ``data``; ``skipped`` (from :func:`skipped_record`) is recorded only when images
    were dropped, as ``{"count": N, "first": [names]}``."""
    rec = {"name": cfg["data"]["name"], "n_train": n_train, "n_val": n_val, **extra}
    if skipped:
        rec["skipped"] = skipped
    return rec


def protocol_record(cfg: Dict[str, Any], drop: Sequence[str] = ()) -> Dict[str, Any]:
    """All hyperparameters of a stage (the config without the backbone-locating keys)."""
    skip = set(BACKBONE_KEYS) | {"data", "progress", "stop_after_epoch"} | set(drop)
    return {k: copy.deepcopy(v) for k, v in cfg.items() if k not in skip}


def progress(iterable, total: Optional[int] = None, desc: str = "", enabled: bool = True):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True,
                disable=(not enabled) or (not D.is_main()) or os.environ.get("EXCB_NO_PROGRESS") == "1")
