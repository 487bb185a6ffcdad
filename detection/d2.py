"""The half of the detect stage that imports Detectron2 (only imported once it is known to be there).

* :class:`Res5ROIHeadsExtraNorm` — the C4 box head of MoCo's recipe: res5 followed by one more
  norm layer (the pretrained res5 never saw a norm after its residual sum; the extra layer
  re-normalises its output for the new heads). For ResNet-18/34 checkpoints (the CPU demo)
  res5 is built from basic blocks so their pretrained res5 transfers too.
* :func:`prepare_job` — final Detectron2 config (base file <- our overrides) written to
  ``config_d2.yaml``, and a refusal to resume a checkpoint folder made under another config.
* :func:`launch_job` / :func:`worker` — Detectron2's ``launch`` (one process per GPU, or CPU
  processes with gloo), training with its ``DefaultTrainer`` (resume via its checkpointer,
  precise BN, COCO evaluation) or evaluation only; rank 0 writes ``metrics_detectron2.json``.
* :func:`verify_backbone_loaded` — after loading the converted weights, every backbone
  tensor of the model must hold exactly the converted value (a silently half-initialised
  backbone gives plausible but wrong APs).
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
import yaml
from torch import nn

import detectron2
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import DefaultTrainer, launch
from detectron2.evaluation import COCOEvaluator
from detectron2.layers import get_norm
from detectron2.modeling.backbone.resnet import BasicBlock, ResNet
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from excb import ExcbError
from excb.io import atomic_write_json, atomic_write_text

logger = logging.getLogger("excb.detection")


# ----------------------------------------------------------------------------- model
def _build_res5_extra_norm(cls, cfg) -> Tuple[nn.Sequential, int]:
    depth = cfg.MODEL.RESNETS.DEPTH
    norm = cfg.MODEL.RESNETS.NORM
    if depth in (18, 34):
        # Detectron2's Res5ROIHeads only knows bottleneck blocks; a basic-block res5 keeps the
        # pretrained res5 of small ResNets usable (512 channels in, as in their backbone)
        out_channels = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS * 8
        blocks = ResNet.make_stage(BasicBlock, {18: 2, 34: 3}[depth], stride_per_block=[2] + [1] * ({18: 2, 34: 3}[depth] - 1),
                                   in_channels=out_channels // 2, out_channels=out_channels, norm=norm)
        seq = nn.Sequential(*blocks)
    else:
        seq, out_channels = Res5ROIHeads._build_res5_block.__func__(cls, cfg)
    seq.add_module("norm", get_norm(norm, out_channels))
    return seq, out_channels


if "Res5ROIHeadsExtraNorm" not in ROI_HEADS_REGISTRY:
    @ROI_HEADS_REGISTRY.register()
    class Res5ROIHeadsExtraNorm(Res5ROIHeads):
        """Res5ROIHeads with a norm layer after res5 (MoCo's detection recipe)."""

        _build_res5_block = classmethod(_build_res5_extra_norm)


# ----------------------------------------------------------------------------- weights check
def _match(model_keys: List[str], key: str) -> List[str]:
    return [m for m in model_keys if m == key or m.endswith("." + key)]


def verify_backbone_loaded(model: nn.Module, d2_weights: Mapping[str, Any]) -> Dict[str, List[str]]:
    """Compare the model's tensors with the converted weights.

    Returns ``{"not_found": converted keys with no model tensor, "ambiguous": ..., "differ":
    model tensors whose value is not the converted one, "uninitialised": backbone/res5 tensors
    of the model that no converted tensor covers}``. ``roi_heads.res5.norm`` (the extra norm)
    and the new heads are expected to be fresh.
    """
    sd = model.state_dict()
    keys = list(sd)
    out: Dict[str, List[str]] = {"not_found": [], "ambiguous": [], "differ": [], "uninitialised": []}
    covered = set()
    for k, v in d2_weights.items():
        m = _match(keys, k)
        if not m:
            out["not_found"].append(k)
            continue
        if len(m) > 1:
            out["ambiguous"].append(k)
            continue
        covered.add(m[0])
        want = torch.as_tensor(np.asarray(v))
        have = sd[m[0]].detach().cpu()
        if tuple(want.shape) != tuple(have.shape) or not torch.equal(have.to(want.dtype), want):
            out["differ"].append(m[0])
    for k in keys:
        is_backbone = k.startswith("backbone.") or (k.startswith("roi_heads.res5.") and not k.startswith("roi_heads.res5.norm."))
        if is_backbone and k not in covered:
            out["uninitialised"].append(k)
    return out


def _check_loaded(model: nn.Module, weights_path: str) -> None:
    from detection.convert import load_detectron2_pickle

    rep = verify_backbone_loaded(model, load_detectron2_pickle(weights_path)["model"])
    bad = {k: v for k, v in rep.items() if v}
    if bad:
        parts = "; ".join(f"{k}: {', '.join(v[:4])}{' ...' if len(v) > 4 else ''} ({len(v)})" for k, v in bad.items())
        raise ExcbError(f"{weights_path}: the converted backbone did not load into the Detectron2 model ({parts}); "
                        f"check MODEL.RESNETS.DEPTH / opts against the checkpoint's architecture")
    logger.info("converted backbone verified: every backbone tensor holds its converted value")


# ----------------------------------------------------------------------------- config and data
def prepare_job(overrides: Dict[str, Any], *, run_dir: Path, paths: Mapping[str, Path], datasets: Tuple[str, str],
                eval_only: bool, resume: bool, weights: Optional[str], check_weights: Optional[str],
                base_config: Optional[Path]) -> Dict[str, Any]:
    """Merge base <- overrides into a Detectron2 config, write ``config_d2.yaml``; the job for the workers."""
    run_dir = Path(run_dir)
    cfg = get_cfg()
    if base_config is not None:
        cfg.merge_from_file(str(base_config))
    over_path = run_dir / "config_d2_overrides.yaml"
    atomic_write_text(over_path, yaml.safe_dump(overrides, sort_keys=False))
    try:
        cfg.merge_from_file(str(over_path))
    except (KeyError, ValueError, AssertionError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ExcbError(f"{over_path}: Detectron2 rejects a key or value ({msg}); check d2_config and opts") from e
    cfg.freeze()
    text = cfg.dump()
    final = run_dir / "config_d2.yaml"
    out_dir = Path(cfg.OUTPUT_DIR)
    has_ck = (out_dir / "last_checkpoint").is_file()
    if has_ck and resume and not eval_only and final.is_file() and final.read_text(encoding="utf-8") != text:
        raise ExcbError(f"{out_dir}: holds Detectron2 checkpoints of a run with another config ({final} differs); "
                        f"delete the folder, use another --output-dir, or resume=false to start over")
    if weights and not Path(weights).is_file():
        raise ExcbError(f"weights: file '{weights}' not found; pass a Detectron2 model file (e.g. <output>/d2/model_final.pth)")
    if eval_only and not weights and not has_ck:
        raise ExcbError(f"eval_only: no trained model in {out_dir} (no last_checkpoint); train first, or pass "
                        f"weights=<model_final.pth>")
    atomic_write_text(final, text)
    return {"config_path": str(final), "run_dir": str(run_dir), "datasets": list(datasets),
            "paths": {k: str(v) for k, v in paths.items()}, "eval_only": eval_only, "resume": resume,
            "weights": weights, "check_weights": check_weights,
            "base_config": str(base_config) if base_config else None,
            "metrics_path": str(run_dir / "metrics_detectron2.json")}


def register_datasets(job: Mapping[str, Any]) -> None:
    """Register train/val under the job's names (idempotent: launch may run in this process)."""
    p = job["paths"]
    for name, js, img in ((job["datasets"][0], p["train_json"], p["train_images"]),
                          (job["datasets"][1], p["val_json"], p["val_images"])):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, js, img)


class Trainer(DefaultTrainer):
    """DefaultTrainer with COCO evaluation (boxes and masks) of the test set."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name):
        # the test loader has loaded the set by now, so its contiguous classes are known; a
        # mismatch would otherwise surface as COCOEvaluator's crash after all the training
        classes = MetadataCatalog.get(dataset_name).get("thing_classes")
        if classes is not None and len(classes) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise ExcbError(f"{dataset_name}: {len(classes)} categories but MODEL.ROI_HEADS.NUM_CLASSES="
                            f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES}; leave num_classes=null (read from the annotations)")
        return COCOEvaluator(dataset_name, output_dir=os.path.join(cfg.OUTPUT_DIR, "inference"),
                             allow_cached_coco=False)


def _load_cfg(job: Mapping[str, Any]) -> CfgNode:
    cfg = get_cfg()
    cfg.merge_from_file(job["config_path"])
    cfg.freeze()
    return cfg


def _ddp_cpu(model: nn.Module, *, fp16_compression: bool = False, **kwargs: Any) -> nn.Module:
    """DDP for CPU processes: Detectron2's ``create_ddp_model`` always passes the GPU index as
    ``device_ids``, which torch refuses for a CPU module."""
    if comm.get_world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, **kwargs)


def worker(job: Dict[str, Any]) -> None:
    """One process of the job (called by Detectron2's ``launch``)."""
    cfg = _load_cfg(job)
    if cfg.MODEL.DEVICE == "cpu" and comm.get_world_size() > 1:
        import detectron2.engine.defaults as d2_defaults

        d2_defaults.create_ddp_model = _ddp_cpu  # this process only; DefaultTrainer looks it up at call time
    rank = comm.get_rank()
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="detectron2")
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=rank, name="excb.detection", abbrev_name="excb")
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    register_datasets(job)
    torch.backends.cudnn.benchmark = False

    if job["eval_only"]:
        model = Trainer.build_model(cfg)
        ck = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        if job.get("weights"):
            extra = ck.load(job["weights"])
        else:
            extra = ck.resume_or_load("", resume=True)
        results = Trainer.test(cfg, model)
        # the checkpoint's last finished iteration (Detectron2 stores the 0-based index)
        done = (extra or {}).get("iteration")
        start, it = (int(done) + 1 if isinstance(done, int) else None), None
    else:
        trainer = Trainer(cfg)
        resuming = job["resume"] and trainer.checkpointer.has_checkpoint()
        trainer.resume_or_load(resume=job["resume"])
        if not resuming and job.get("check_weights"):
            _check_loaded(trainer.model.module if hasattr(trainer.model, "module") else trainer.model,
                          job["check_weights"])
        start = trainer.start_iter
        trainer.train()
        # EvalHook evaluated after the last iteration (every rank has the attribute; only rank 0
        # holds numbers); evaluate here only if it did not run, on every rank alike
        if hasattr(trainer, "_last_eval_results"):
            results = trainer._last_eval_results
        else:
            results = Trainer.test(cfg, trainer.model)
        it = trainer.iter  # MAX_ITER + 1 when nothing was left to train (detection.records)
    if comm.is_main_process():
        atomic_write_json(job["metrics_path"], {"results": _plain(results), "start_iter": start, "iter": it,
                                                "max_iter": cfg.SOLVER.MAX_ITER,
                                                "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
                                                "world_size": comm.get_world_size(),
                                                "detectron2_version": getattr(detectron2, "__version__", None)})
    comm.synchronize()


def _plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.generic,)):
        return x.item()
    return x


def launch_job(job: Dict[str, Any], *, num_gpus: int, num_machines: int, machine_rank: int, dist_url: str,
               cuda: bool) -> None:
    """Run :func:`worker` in ``num_gpus`` processes per machine (in this process when the world is 1)."""
    Path(job["metrics_path"]).unlink(missing_ok=True)  # never report a previous run's numbers
    launch(worker, num_gpus, num_machines=num_machines, machine_rank=machine_rank,
           dist_url=dist_url if num_gpus * num_machines > 1 else None, args=(job,))
    if machine_rank == 0 and not Path(job["metrics_path"]).is_file():
        raise ExcbError(f"{job['metrics_path']}: Detectron2 finished without evaluation results; see "
                        f"{Path(job['run_dir']) / 'd2' / 'log.txt'}")


__all__ = ["Res5ROIHeadsExtraNorm", "verify_backbone_loaded", "prepare_job", "register_datasets", "worker",
           "launch_job", "Trainer"]
