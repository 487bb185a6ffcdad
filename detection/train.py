"""The ``detect`` stage: Mask R-CNN R50-C4 on COCO with Detectron2 (Table 5; SPEC section 9).

    excb-bench detect --checkpoint runs/x/pretrain/checkpoint.pth --coco /data/coco --num-gpus 8

Steps, all inside the stage's folder ``run_dir``:

1. check the inputs: COCO's standard layout under ``coco_root`` and the categories of its
   annotation files (:mod:`detection.categories`; they set ``NUM_CLASSES``), or generate the
   small synthetic set, :mod:`detection.synthetic`, for smoke runs; then that Detectron2
   imports (else :class:`DetectronMissing`, which the pipeline records as a skipped stage);
2. convert the backbone (any format :func:`excb.checkpoint_formats.load_backbone` reads) to
   Detectron2 names -> ``backbone_d2.pkl`` (:mod:`detection.convert`), refusing leftovers;
3. build the Detectron2 config: ``get_cfg()`` <- Detectron2's ``Base-RCNN-C4.yaml`` (from the
   installed package, when found) <- ``detection/configs/<d2_config>`` <- the smoke config
   (``smoke=true``) <- run-time keys <- ``opts``; synchronised BN falls back to plain BN on
   one process -> ``config_d2.yaml`` (what Detectron2 actually ran);
4. train and evaluate through Detectron2's ``launch`` (multi-GPU, multi-machine), resuming
   from its last checkpoint in ``run_dir/d2`` (``resume``), or only evaluate (``eval_only``);
5. write ``results.json``: AP^b, AP^b_50, AP^b_75, AP^m, AP^m_50, AP^m_75 (percent), the row
   label and the true iteration count (:mod:`detection.records`). A finished run with the same
   inputs is reported as recorded instead of being run again (step 4 is skipped).

Everything here except :func:`run`'s Detectron2 step runs and is tested without Detectron2.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from excb import ExcbError
from excb.config import deep_update as _merge
from excb.config import get_dotted as get_key
from excb.data import DATA_DEFAULTS
from excb.io import atomic_write_json, package_versions, read_json, sha256_file

from detection.categories import dataset_categories, resolve_num_classes
from detection.records import checkpoint_label, finished_result, iteration_record, stage_fingerprint

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
FULL_CONFIG = "mask_rcnn_R50_C4_1x_moco.yaml"
SMOKE_CONFIG = "mask_rcnn_R50_C4_smoke_cpu.yaml"
D2_BASE_CONFIG = "Base-RCNN-C4.yaml"
INSTALL_URL = "https://detectron2.readthedocs.io/en/latest/tutorials/install.html"
STAGE = "detect"

DEFAULTS: Dict[str, Any] = {
    # --- the backbone under test (same keys as the other stages)
    "checkpoint": None,          # backbone checkpoint (ours or third-party); null = random init (sanity row)
    "format": "auto",            # checkpoint format (see `excb-bench formats`)
    "which": "teacher",          # teacher or student of a teacher/student checkpoint
    "arch": None,                # architecture, when the checkpoint does not say
    "trust_checkpoint": False,   # allow full unpickling (only for files you trust)
    "backbone": {"name": "resnet50", "kwargs": {}},   # random-init depth when checkpoint is null
    # --- data: the stage reads COCO, not the classification data set
    "data": dict(DATA_DEFAULTS),  # kept for the stage contract; data.name=demo selects the synthetic set (dataset=auto)
    "dataset": "auto",           # coco | synthetic | auto (coco if coco_root is set, synthetic if data.name=demo)
    "coco_root": None,           # annotations/instances_{train,val}2017.json, train2017/, val2017/
    "synthetic": {"root": None, "n_train": 16, "n_val": 8, "image_size": 96, "seed": 0},  # root null: <run_dir>/synthetic_coco
    "num_classes": None,         # null: the number of categories in the annotation files (must match when set)
    # --- Detectron2 config
    "d2_config": FULL_CONFIG,    # a file in detection/configs/ or a path
    "smoke": False,              # merge the CPU smoke config (tiny sizes, few ROIs, 8 iterations)
    "opts": {},                  # Detectron2 keys, nested or dotted: {SOLVER: {MAX_ITER: 100}} or {"SOLVER.MAX_ITER": 100}
    # --- launch (Detectron2's launcher)
    "num_gpus": 0,               # processes per machine: 0 = every visible GPU (one process on a CPU-only machine)
    "num_machines": 1,
    "machine_rank": 0,
    "dist_url": "auto",          # tcp://host:port of machine 0 for multi-machine runs; auto = a free local port
    "device": "auto",            # auto (cuda if available) | cpu | cuda
    "num_workers": None,         # data-loader workers per process; null = the config's DATALOADER.NUM_WORKERS
    "eval_only": False,          # evaluate the finished model in run_dir/d2 (or `weights`) without training
    "weights": None,             # eval_only: a Detectron2 model file to evaluate instead of run_dir/d2's last checkpoint
    "resume": True,              # continue from run_dir/d2's last checkpoint when there is one
    "seed": 0,                   # Detectron2 SEED (each process adds its rank); AP varies ~0.3 between seeds
    "label": None,               # leaderboard row name; null: ours for our checkpoints, else from the checkpoint
    "progress": True,
}

METRIC_KEYS = {"bbox": "box", "segm": "mask"}
HEADLINE = ("AP", "AP50", "AP75")
EXTRA = ("APs", "APm", "APl")


class DetectronMissing(ExcbError):
    """Detectron2 is not importable: the pipeline marks the detect stage skipped."""

    skip_stage = True


# ----------------------------------------------------------------------------- Detectron2 presence
def require_detectron2() -> None:
    """Import the parts of Detectron2 the stage uses, or raise :class:`DetectronMissing` (one line)."""
    try:
        import detectron2  # noqa: F401
    except ImportError as e:
        raise DetectronMissing(f"Detectron2 is not installed (it is not on PyPI): build it from source as described at "
                               f"{INSTALL_URL} (CPU-only: FORCE_CUDA=0 pip install --no-build-isolation -e <detectron2 "
                               f"checkout>), then rerun this stage") from e
    try:
        import detectron2.engine  # noqa: F401
        import detectron2.evaluation  # noqa: F401
    except ImportError as e:
        raise DetectronMissing(f"Detectron2 is installed but does not import ({e}); install its missing dependency "
                               f"(see {INSTALL_URL}) and rerun this stage") from e


def detectron2_config_file(name: str = D2_BASE_CONFIG) -> Optional[Path]:
    """A config file shipped with the installed Detectron2, without ``detectron2.model_zoo``
    (it imports ``pkg_resources``, gone from recent setuptools). A wheel install keeps them in
    ``detectron2/model_zoo/configs``; an editable install in the checkout's ``configs/``."""
    import importlib.util

    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for pkg in spec.submodule_search_locations:
        for cand in (Path(pkg) / "model_zoo" / "configs" / name, Path(pkg).parent / "configs" / name):
            if cand.is_file():
                return cand
    return None


# ----------------------------------------------------------------------------- COCO layout
def coco_paths(root: Path) -> Dict[str, Path]:
    root = Path(root)
    return {"train_json": root / "annotations" / "instances_train2017.json", "train_images": root / "train2017",
            "val_json": root / "annotations" / "instances_val2017.json", "val_images": root / "val2017"}


def validate_coco_root(root: Optional[str | Path], need_train: bool = True) -> Dict[str, Path]:
    """The standard COCO layout under ``root``; a missing piece is a one-line error naming it."""
    layout = "annotations/instances_{train,val}2017.json, train2017/, val2017/"
    if not root:
        raise ExcbError(f"coco_root: required (a folder with {layout}); pass --coco PATH or coco_root=PATH, "
                        f"or dataset=synthetic for a smoke run")
    root = Path(root)
    if not root.is_dir():
        raise ExcbError(f"coco_root: folder '{root}' not found; expected a folder with {layout}")
    paths = coco_paths(root)
    for key in (("train_json", "train_images") if need_train else ()) + ("val_json", "val_images"):
        p = paths[key]
        ok = p.is_file() if key.endswith("json") else p.is_dir()
        if not ok:
            kind = "file" if key.endswith("json") else "folder"
            raise ExcbError(f"coco_root: {kind} '{p}' not found; COCO must be in the standard layout ({layout})")
    return paths


def count_images(json_path: Path, chunk: int = 1 << 22) -> int:
    """Images in a COCO annotation file without parsing it: only image records hold
    ``"file_name"`` (the train file is ~450 MB; ``json.load`` would need GBs)."""
    needle = b'"file_name"'
    n, tail = 0, b""
    with open(json_path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            buf = tail + block
            n += buf.count(needle)
            # the last len-1 bytes cannot hold a whole needle, so carrying them over counts a
            # needle split across two blocks exactly once
            tail = buf[-(len(needle) - 1):]
    return n


# ----------------------------------------------------------------------------- config layering
def _norm_opts(opts: Any) -> Dict[str, Any]:
    """``opts`` as a nested Detectron2 dict: accepts nested mappings, dotted keys, or a flat
    ``[KEY, VALUE, KEY, VALUE]`` list (Detectron2's command-line form)."""
    if opts is None:
        return {}
    if isinstance(opts, (list, tuple)):
        if len(opts) % 2:
            raise ExcbError(f"opts: a list must hold KEY VALUE pairs, got {len(opts)} items ({opts!r})")
        opts = {str(opts[i]): opts[i + 1] for i in range(0, len(opts), 2)}
    if not isinstance(opts, Mapping):
        raise ExcbError(f"opts: expected a mapping of Detectron2 keys (e.g. {{SOLVER.MAX_ITER: 100}}), got {opts!r}")
    out: Dict[str, Any] = {}
    for k, v in opts.items():
        node = out
        parts = str(k).split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if isinstance(v, Mapping):
            node[parts[-1]] = _merge(node.get(parts[-1], {}), _norm_opts(v))
        else:
            node[parts[-1]] = v
    return out


def load_d2_yaml(name_or_path: str) -> Dict[str, Any]:
    """A Detectron2 YAML of ours (a name in detection/configs/ or a path) as a dict."""
    p = Path(name_or_path)
    if not p.is_file():
        p = CONFIG_DIR / name_or_path
    if not p.is_file():
        known = ", ".join(sorted(x.name for x in CONFIG_DIR.glob("*.yaml")))
        raise ExcbError(f"d2_config: '{name_or_path}' not found (neither a path nor in {CONFIG_DIR}; known: {known})")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ExcbError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict):
        raise ExcbError(f"{p}: a Detectron2 config must be a mapping")
    if "_BASE_" in data:
        raise ExcbError(f"{p}: _BASE_ is not supported here; the stage merges Detectron2's Base-RCNN-C4.yaml itself")
    return data


def effective_norm(norm: str, world_size: int, cuda: bool) -> str:
    """Synchronised BN needs more than one process (and torch's SyncBN needs CUDA):
    one process -> plain BN (the statistics are the same); CPU processes -> naiveSyncBN."""
    if norm in ("SyncBN", "naiveSyncBN", "nnSyncBN") and world_size <= 1:
        return "BN"
    if norm in ("SyncBN", "nnSyncBN") and not cuda:
        return "naiveSyncBN"
    return norm


def build_d2_overrides(cfg: Mapping[str, Any], *, run_dir: Path, datasets: Tuple[str, str], weights: str,
                       world_size: int, cuda: bool, arch: Optional[Mapping[str, Any]] = None,
                       num_classes: Optional[int] = None) -> Dict[str, Any]:
    """Everything our side sets, as one nested Detectron2 dict (merged over the base config).

    Layers, later wins: ``d2_config`` <- smoke config <- run-time keys <- ``opts``; then the
    BN fallback, which is a rule of the process count, not a preference.
    """
    d = load_d2_yaml(cfg["d2_config"])
    if cfg.get("smoke"):
        d = _merge(d, load_d2_yaml(SMOKE_CONFIG))
    rt: Dict[str, Any] = {
        "MODEL": {"WEIGHTS": weights, "DEVICE": "cuda" if cuda else "cpu"},
        "DATASETS": {"TRAIN": [datasets[0]], "TEST": [datasets[1]]},
        "OUTPUT_DIR": str(Path(run_dir) / "d2"),
        "SEED": int(cfg.get("seed", 0)),
    }
    if arch and arch.get("depth"):
        rt["MODEL"]["RESNETS"] = {"DEPTH": int(arch["depth"])}
        if int(arch["depth"]) in (18, 34):
            rt["MODEL"]["RESNETS"]["RES2_OUT_CHANNELS"] = 64  # Detectron2's requirement for basic blocks
    if num_classes:
        rt["MODEL"]["ROI_HEADS"] = {"NUM_CLASSES": int(num_classes)}
    if cfg.get("num_workers") is not None:
        rt["DATALOADER"] = {"NUM_WORKERS": int(cfg["num_workers"])}
    d = _merge(d, rt)
    d = _merge(d, _norm_opts(cfg.get("opts")))
    norm = get_key(d, "MODEL.RESNETS.NORM", "FrozenBN")
    d.setdefault("MODEL", {}).setdefault("RESNETS", {})["NORM"] = effective_norm(str(norm), world_size, cuda)
    return d


# ----------------------------------------------------------------------------- results
def _num(v: Any) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) or math.isinf(f) else round(f, 4)


def parse_detectron2_metrics(d: Mapping[str, Any]) -> Dict[str, Any]:
    """Detectron2's evaluation dict (``{"bbox": {"AP": ..}, "segm": {..}}``, percent) ->
    flat results metrics ``AP_box, AP50_box, AP75_box, AP_mask, AP50_mask, AP75_mask`` (+ the
    small/medium/large APs). NaN (no detections at all) becomes null."""
    if not isinstance(d, Mapping) or not any(k in d for k in METRIC_KEYS):
        have = ", ".join(map(str, d)) if isinstance(d, Mapping) else type(d).__name__
        raise ExcbError(f"Detectron2 results: no 'bbox' or 'segm' entry (got: {have or 'nothing'}); "
                        f"was the test set evaluated with COCOEvaluator?")
    out: Dict[str, Any] = {}
    for task, suffix in METRIC_KEYS.items():
        res = d.get(task) or {}
        for k in HEADLINE + EXTRA:
            out[f"{k}_{suffix}"] = _num(res.get(k))
    out["units"] = "percent"
    return out


# ----------------------------------------------------------------------------- the stage
def _resolve_dataset(cfg: Mapping[str, Any]) -> str:
    ds = cfg.get("dataset", "auto")
    if ds == "auto":
        if cfg.get("coco_root"):
            return "coco"
        if (cfg.get("data") or {}).get("name") == "demo":
            return "synthetic"
        return "coco"  # validate_coco_root then names what is missing
    if ds not in ("coco", "synthetic"):
        raise ExcbError(f"dataset: unknown value '{ds}'; use coco, synthetic or auto")
    if ds == "synthetic" and cfg.get("coco_root"):
        raise ExcbError(f"coco_root: '{cfg['coco_root']}' is given but dataset=synthetic would ignore it; use "
                        f"dataset=coco (or auto, or the --coco flag) to train on that COCO-format set, or drop coco_root for the generated one")
    return ds


def _validate(cfg: Mapping[str, Any]) -> None:
    for k in ("num_gpus",):
        if int(cfg.get(k, 0)) < 0:
            raise ExcbError(f"{k}: must be >= 0 (0 = every visible GPU), got {cfg[k]!r}")
    if int(cfg.get("num_machines", 1)) < 1:
        raise ExcbError(f"num_machines: must be >= 1, got {cfg['num_machines']!r}")
    if not 0 <= int(cfg.get("machine_rank", 0)) < int(cfg.get("num_machines", 1)):
        raise ExcbError(f"machine_rank: must be in [0, num_machines), got {cfg['machine_rank']!r}")
    if cfg.get("device", "auto") not in ("auto", "cpu", "cuda"):
        raise ExcbError(f"device: unknown value '{cfg['device']}'; use auto, cpu or cuda")


def _device(cfg: Mapping[str, Any]) -> Tuple[bool, int]:
    """(use CUDA, processes per machine)."""
    import torch

    want = cfg.get("device", "auto")
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if want == "cuda" and n_cuda == 0:
        raise ExcbError("device: 'cuda' requested but no GPU is visible; use device=auto or device=cpu")
    cuda = n_cuda > 0 and want != "cpu"
    n = int(cfg.get("num_gpus", 0)) or (n_cuda if cuda else 1)
    if cuda and n > n_cuda:
        raise ExcbError(f"num_gpus: {n} requested but only {n_cuda} GPU(s) are visible")
    return cuda, n


def _prepare_data(cfg: Mapping[str, Any], run_dir: Path, kind: str) -> Tuple[Dict[str, Path], Dict[str, Any]]:
    if kind == "synthetic":
        from detection.synthetic import make_synthetic_coco

        s = {**DEFAULTS["synthetic"], **(cfg.get("synthetic") or {})}
        root = Path(s["root"]) if s.get("root") else Path(run_dir) / "synthetic_coco"
        make_synthetic_coco(root, n_train=s["n_train"], n_val=s["n_val"], image_size=s["image_size"], seed=s["seed"])
        paths = coco_paths(root)
        name = "synthetic-coco"
    else:
        paths = validate_coco_root(cfg.get("coco_root"), need_train=not cfg.get("eval_only"))
        name = "coco"
    rec = {"name": name, "root": str(paths["val_json"].parent.parent),
           "n_train": count_images(paths["train_json"]) if paths["train_json"].is_file() else None,
           "n_val": count_images(paths["val_json"]), "train": "train2017", "val": "val2017"}
    return paths, rec


def _convert(cfg: Mapping[str, Any], run_dir: Path) -> Tuple[str, Dict[str, Any], Optional[Dict[str, Any]]]:
    """(MODEL.WEIGHTS, checkpoint record, arch hint)."""
    from detection.convert import convert_checkpoint, require_complete  # noqa: F401

    ck = cfg.get("checkpoint")
    if not ck:
        name = (cfg.get("backbone") or {}).get("name", "resnet50")
        depth = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}.get(name)
        if depth is None:
            raise ExcbError(f"backbone.name: '{name}' has no Detectron2 ResNet counterpart; use resnet18/34/50/101")
        return "", {"path": None, "sha256": None, "format": "random-init", "arch": name,
                    "init": "Detectron2's own random initialisation"}, {"depth": depth}
    from excb.zoo import resolve_checkpoint  # zoo:NAME -> cached file (+ the entry's format and arch)

    ck, fmt, arch, zoo_rec = resolve_checkpoint(ck, cfg.get("format", "auto"), cfg.get("arch"))
    path = Path(ck)
    if not path.is_file():
        raise ExcbError(f"checkpoint: file '{path}' not found; pass an existing checkpoint (or checkpoint=null for a "
                        f"random-init row)")
    out = Path(run_dir) / "backbone_d2.pkl"
    report, info = convert_checkpoint(path, out, format=fmt, which=cfg.get("which", "teacher"),
                                      arch=arch, trust_pickle=bool(cfg.get("trust_checkpoint", False)))
    rec = {"path": str(path), "sha256": info.get("sha256") or sha256_file(path), "format": info.get("format"),
           "which": info.get("which"), "arch": info.get("arch"), "converted": str(out),
           "converted_sha256": sha256_file(out), "trusted_pickle": bool(cfg.get("trust_checkpoint", False)),
           "conversion": {k: report[k] for k in ("n_in", "n_mapped", "dropped")}}
    if zoo_rec:
        rec["zoo"] = zoo_rec
    if not (report.get("arch_hint") or {}).get("depth"):
        raise ExcbError(f"{path}: converted a ResNet with {report['arch_hint']['blocks']} blocks per stage, which "
                        f"matches no Detectron2 depth (18/34/50/101/152)")
    return str(out), rec, report["arch_hint"]


# stage keys that locate inputs or launch processes: not part of the protocol
NON_PROTOCOL = ("checkpoint", "format", "which", "arch", "trust_checkpoint", "backbone", "data", "progress", "label",
                "coco_root", "num_gpus", "num_machines", "machine_rank", "dist_url", "device", "num_workers", "eval_only",
                "weights", "resume")
# the Detectron2 values that define the protocol, copied into results.json
D2_PROTOCOL_KEYS = ("MODEL.RESNETS.DEPTH", "MODEL.RESNETS.NORM", "MODEL.RESNETS.STRIDE_IN_1X1",
                    "MODEL.BACKBONE.FREEZE_AT", "MODEL.ROI_HEADS.NAME", "MODEL.MASK_ON", "MODEL.PIXEL_MEAN",
                    "MODEL.PIXEL_STD", "INPUT.FORMAT", "INPUT.MIN_SIZE_TRAIN", "INPUT.MIN_SIZE_TEST",
                    "SOLVER.IMS_PER_BATCH", "SOLVER.BASE_LR", "SOLVER.STEPS", "SOLVER.MAX_ITER",
                    "TEST.PRECISE_BN.ENABLED")


def protocol_record(cfg: Mapping[str, Any], d2_over: Mapping[str, Any]) -> Dict[str, Any]:
    """The stage's hyperparameters plus the Detectron2 values that define the protocol."""
    out = {k: copy.deepcopy(v) for k, v in cfg.items() if k not in NON_PROTOCOL}
    if out.get("dataset") == "synthetic" or isinstance(out.get("synthetic"), dict):
        syn = {**DEFAULTS["synthetic"], **(cfg.get("synthetic") or {})}
        out["synthetic"] = {k: v for k, v in syn.items() if k != "root"}
    out["detectron2"] = {k: copy.deepcopy(get_key(d2_over, k)) for k in D2_PROTOCOL_KEYS}
    return out


def _trained_config(cfg: Mapping[str, Any], run_dir: Path, num_classes: int, val_json: Path) -> Optional[Dict[str, Any]]:
    """The config the model in ``run_dir/d2`` was trained with (None when evaluating a given
    ``weights`` file or nothing is recorded); its class count must be the val file's."""
    prev = run_dir / "config_d2.yaml"
    if cfg.get("weights") or not prev.is_file():
        return None
    old = yaml.safe_load(prev.read_text(encoding="utf-8")) or {}
    trained_n = get_key(old, "MODEL.ROI_HEADS.NUM_CLASSES")
    if trained_n is not None and int(trained_n) != num_classes:
        raise ExcbError(f"{prev}: the model in {run_dir / 'd2'} was trained for {trained_n} classes but {val_json} "
                        f"has {num_classes} categories; evaluate it on the data set it was trained on")
    return old


def _eval_only_source(cfg: Mapping[str, Any], run_dir: Path, arch: Optional[Dict[str, Any]], num_classes: int,
                      val_json: Path) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]]]:
    """Evaluating a finished model: its depth and class count are the ones it was trained
    with (``run_dir/config_d2.yaml``), and its row is the one of the checkpoint it was trained
    from (the previous results.json)."""
    old = _trained_config(cfg, run_dir, num_classes, val_json)
    depth = get_key(old, "MODEL.RESNETS.DEPTH") if old else None
    arch = {"depth": depth} if depth else arch
    trained_from = None
    if not cfg.get("weights") and (run_dir / "results.json").is_file():
        try:
            old_ck = read_json(run_dir / "results.json").get("checkpoint") or {}
        except (ExcbError, AttributeError):
            old_ck = {}
        if isinstance(old_ck, dict):
            trained_from = old_ck.get("trained_from") or (old_ck if old_ck.get("format") != "detectron2-model" else None)
    rec = {"path": cfg.get("weights") or str(run_dir / "d2"), "sha256": None, "format": "detectron2-model",
           "arch": f"resnet{arch['depth']}" if arch and arch.get("depth") else None, "trained_from": trained_from}
    return rec, arch


def plan(cfg: Mapping[str, Any], run_dir: Path, *, world_size: int = 1, cuda: bool = False,
         base_config: Optional[Path] = None) -> Dict[str, Any]:
    """Everything before Detectron2 runs (no Detectron2 needed): the data (generated when
    synthetic), its categories -> ``MODEL.ROI_HEADS.NUM_CLASSES``, the converted backbone, the
    Detectron2 overrides and the fingerprint of a training run with these inputs."""
    cfg = {**copy.deepcopy(DEFAULTS), **copy.deepcopy(dict(cfg))}
    run_dir = Path(run_dir)
    kind = _resolve_dataset(cfg)
    eval_only = bool(cfg.get("eval_only"))
    paths, data_rec = _prepare_data(cfg, run_dir, kind)
    cats = dataset_categories(paths, need_train=not eval_only)
    num_classes = resolve_num_classes(cfg.get("num_classes"), cats, paths["val_json"])
    data_rec.update({"num_classes": num_classes,
                     "categories": {"ids": cats["ids"], "names": cats["names"], "order": "sorted dataset id"}})
    weights, ck_rec, arch = _convert(cfg, run_dir)
    if eval_only and not cfg.get("checkpoint"):
        ck_rec, arch = _eval_only_source(cfg, run_dir, arch, num_classes, paths["val_json"])
    elif eval_only:
        _trained_config(cfg, run_dir, num_classes, paths["val_json"])
    ck_rec["label"] = checkpoint_label(ck_rec, cfg.get("label"))
    tag = (ck_rec.get("sha256") or "init")[:10]
    datasets = (f"excb_{data_rec['name']}_train_{tag}", f"excb_{data_rec['name']}_val_{tag}")
    over = build_d2_overrides(cfg, run_dir=run_dir, datasets=datasets, weights=weights, world_size=world_size,
                              cuda=cuda, arch=arch, num_classes=num_classes)
    return {"cfg": cfg, "kind": kind, "paths": paths, "data": data_rec, "weights": weights, "checkpoint": ck_rec,
            "arch": arch, "datasets": datasets, "overrides": over,
            "fingerprint": stage_fingerprint(over, ck_rec, data_rec, world_size, str(base_config) if base_config else None)}


def compose_results(raw: Mapping[str, Any], *, plan_: Mapping[str, Any], d2_config: Mapping[str, Any],
                    config_path: str, base_config: Optional[str], world_size: int, wall_s: float) -> Dict[str, Any]:
    """results.json from the worker's ``metrics_detectron2.json`` (``raw``) and the plan."""
    cfg = plan_["cfg"]
    metrics = parse_detectron2_metrics(raw.get("results"))
    protocol = protocol_record(cfg, d2_config)
    max_iter = raw.get("max_iter") if raw.get("max_iter") is not None else get_key(d2_config, "SOLVER.MAX_ITER")
    if raw.get("start_iter") is None:   # evaluation of a model whose iteration is unknown
        iters: Dict[str, Any] = {"iterations_done": None, "iterations_this_run": 0, "resumed_from": None}
    else:
        iters = iteration_record(int(raw["start_iter"]), raw.get("iter"), int(max_iter))
    protocol["detectron2"].update({"config": config_path, "base_config": base_config, **iters})
    return {"stage": STAGE, "status": "complete", "mode": "eval_only" if cfg.get("eval_only") else "train",
            "label": plan_["checkpoint"].get("label"), "metrics": metrics, "protocol": protocol, "data": plan_["data"],
            "checkpoint": plan_["checkpoint"], "seed": int(cfg["seed"]), "world_size": int(world_size),
            "wall_s": round(float(wall_s), 3), "fingerprint": plan_["fingerprint"],
            "versions": {**package_versions(), "detectron2": raw.get("detectron2_version")},
            "detectron2_results": raw.get("results")}


def run(cfg: Dict[str, Any], run_dir: Path) -> Dict[str, Any]:
    """Convert, configure, train and evaluate; write and return ``run_dir/results.json``.

    A finished training run with the same inputs (``resume=true``) is not run again: its
    results.json is returned as recorded (``eval_only=true`` re-evaluates, ``resume=false`` retrains)."""
    t0 = time.time()
    run_dir = Path(run_dir)
    cfg = {**copy.deepcopy(DEFAULTS), **copy.deepcopy(cfg)}
    _validate(cfg)
    kind = _resolve_dataset(cfg)
    if kind == "coco":  # the user's data is checked before anything slow or optional
        paths = validate_coco_root(cfg.get("coco_root"), need_train=not cfg.get("eval_only"))
        cats = dataset_categories(paths, need_train=not cfg.get("eval_only"))
        resolve_num_classes(cfg.get("num_classes"), cats, paths["val_json"])
    require_detectron2()
    cuda, per_machine = _device(cfg)
    world = per_machine * int(cfg["num_machines"])
    run_dir.mkdir(parents=True, exist_ok=True)
    base = detectron2_config_file()
    p = plan(cfg, run_dir, world_size=world, cuda=cuda, base_config=base)
    # one machine only: on several, the other machines would wait for machine 0 at the rendezvous
    if not cfg["eval_only"] and cfg["resume"] and int(cfg["num_machines"]) == 1:
        done = finished_result(run_dir, p["fingerprint"])
        if done is not None:
            print(f"[excb-bench] detect: {run_dir / 'results.json'} already holds this run (same inputs, finished); "
                  f"reporting it as recorded (eval_only=true re-evaluates, resume=false retrains)", file=sys.stderr)
            return done

    from detection import d2  # Detectron2-dependent half of the stage

    job = d2.prepare_job(p["overrides"], run_dir=run_dir, paths=p["paths"], datasets=p["datasets"],
                         eval_only=bool(cfg["eval_only"]), resume=bool(cfg["resume"]), weights=cfg.get("weights"),
                         check_weights=p["weights"] or None, base_config=base)
    d2.launch_job(job, num_gpus=per_machine, num_machines=int(cfg["num_machines"]),
                  machine_rank=int(cfg["machine_rank"]), dist_url=str(cfg["dist_url"]), cuda=cuda)
    if int(cfg["machine_rank"]) != 0:  # only machine 0 holds the evaluation results
        return {"stage": STAGE, "status": "worker", "machine_rank": int(cfg["machine_rank"])}
    raw = read_json(job["metrics_path"])
    # the values Detectron2 actually ran with (base file + ours), not only the ones we set
    d2_cfg = yaml.safe_load(Path(job["config_path"]).read_text(encoding="utf-8")) or p["overrides"]
    res = compose_results(raw, plan_=p, d2_config=d2_cfg, config_path=str(run_dir / "config_d2.yaml"),
                          base_config=job["base_config"], world_size=world, wall_s=time.time() - t0)
    atomic_write_json(run_dir / "results.json", res)
    return res


__all__ = ["run", "plan", "compose_results", "DEFAULTS", "DetectronMissing", "parse_detectron2_metrics", "validate_coco_root",
           "build_d2_overrides", "effective_norm", "detectron2_config_file", "count_images", "require_detectron2"]
