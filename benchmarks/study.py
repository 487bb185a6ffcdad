"""The small-batch balancing study: balancer x batch size on one data set, backbone and budget.

    excb-bench study balancers                              # embedded demo, <= 30 min on 2 CPU cores
    excb-bench study balancers batch_sizes=[16,64] pretrain.epochs=8
    excb-bench study balancers -c my_study.yaml -o runs/study-imagenet   # any data set, on GPUs

Every cell (balancer, batch) is an ordinary ExCB pretraining (``excb.train.train``) into
``<out>/<balancer>_b<batch>/`` with only ``balancer.name`` and ``batch_size`` changed; the
number of images seen is the same in every cell (``pretrain.epochs`` passes over the same
``data.limit_train`` images; a batch that does not divide the set is reported). The learning
rate follows the recipe's linear scaling rule (lr x batch / 256) unless the config turns it off.

Per cell it reports k-NN top-1 of the teacher backbone (DINO's weighted 20-NN), cluster usage
from the final inference pass over the training set (fraction of non-empty clusters, largest
relative size) and per-epoch cluster statistics from ``log.jsonl``. Outputs in ``<out>/``:
``study.md`` (table), ``study.json`` (all numbers), ``cluster_sizes.png`` (figure),
``results.json`` (stage-contract summary). Finished cells are skipped on rerun; an
interrupted cell resumes from its last epoch checkpoint.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from excb import ExcbError
from excb.cluster_stats import get_stat
from excb.io import atomic_write, atomic_write_json, atomic_write_text, package_versions, read_json, read_jsonl, sha256_json

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "study" / "balancers_demo.yaml"
DEFAULT_OUTPUT = Path("runs/study-balancers")


def _defaults() -> Dict[str, Any]:
    from excb.train import PRETRAIN_DEFAULTS

    return {
        "balancers": ["excb", "dino-centering", "sinkhorn", "none"],
        "batch_sizes": [16, 64, 256],
        "pretrain": copy.deepcopy(PRETRAIN_DEFAULTS),   # the shared recipe; every cell changes 2 keys
        "knn": {"k": 20, "temperature": 0.07, "limit_train": 0, "limit_val": 0, "batch_size": 256},
    }


def resolve_study_config(path: Optional[str | Path], overrides: List[str]) -> Dict[str, Any]:
    from excb.balancing import list_balancers
    from excb.config import resolve_config

    cfg = resolve_config(_defaults(), path, overrides)
    if not cfg["balancers"] or not cfg["batch_sizes"]:
        raise ExcbError(f"{path or 'study config'}: keys 'balancers' and 'batch_sizes' must be non-empty lists")
    for b in cfg["balancers"]:
        if b not in list_balancers():
            raise ExcbError(f"{path or 'study config'}: key 'balancers' has unknown balancer '{b}'; "
                            f"use some of {list_balancers()}")
    for B in cfg["batch_sizes"]:
        if not isinstance(B, int) or B <= 0:
            raise ExcbError(f"{path or 'study config'}: key 'batch_sizes' must hold positive integers, got {B!r}")
    return cfg


def cell_name(balancer: str, batch: int) -> str:
    return f"{balancer}_b{batch}"


def cell_config(cfg: Dict[str, Any], balancer: str, batch: int) -> Dict[str, Any]:
    c = copy.deepcopy(cfg["pretrain"])
    c["balancer"]["name"] = balancer
    c["batch_size"] = int(batch)
    return c


# ----------------------------------------------------------------------------- one cell
def _pretrain_done(cell_dir: Path, ccfg: Dict[str, Any]) -> bool:
    p = cell_dir / "results.json"
    if not p.exists():
        return False
    try:
        r = read_json(p)
    except Exception:  # noqa: BLE001 - a torn file means: not done
        return False
    return r.get("status") == "complete" and sha256_json(r.get("protocol")) == sha256_json(ccfg)


def _load_teacher_backbone(ckpt: Path):
    """The teacher backbone of our checkpoint through the one public loader."""
    from excb.checkpoint_formats import load_backbone

    model, dim, _ = load_backbone(ckpt, format="auto", which="teacher")
    return model


def _features(model, data_cfg: Dict[str, Any], split: str, limit: int, resize: int, crop: int, batch: int):
    from excb.data import build_dataset

    dcfg = dict(data_cfg)
    dcfg[f"limit_{split}"] = int(limit)
    try:
        from benchmarks.features import eval_transform, extract_features
    except ImportError:  # fallback (not expected): the library's own eval view and a plain loop
        from excb.augment import eval_transform
        extract_features = None
    ds = build_dataset(dcfg, split, eval_transform(resize, crop))
    if extract_features is not None:
        return extract_features(model, ds, batch_size=batch, show_progress=False, desc=f"{split} features")
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=False)
    model.eval()
    fs, ys = [], []
    with torch.inference_mode():
        for x, y in loader:
            fs.append(model(x).float())
            ys.append(torch.as_tensor(y))
    return torch.cat(fs), torch.cat(ys)


def knn_top1(model, pcfg: Dict[str, Any], kcfg: Dict[str, Any]) -> Dict[str, float]:
    """Weighted k-NN top-1 (%) of ``model`` on the val split, bank = the train split."""
    a = pcfg["augment"]
    crop = int(a["global_size"])
    resize = int(round(crop * a["eval_resize"] / a["eval_crop"]))
    tr_f, tr_y = _features(model, pcfg["data"], "train", kcfg["limit_train"], resize, crop, kcfg["batch_size"])
    te_f, te_y = _features(model, pcfg["data"], "val", kcfg["limit_val"], resize, crop, kcfg["batch_size"])
    C = int(max(int(tr_y.max()), int(te_y.max())) + 1)
    k = int(kcfg["k"])
    from benchmarks.knn import knn_classify

    preds = knn_classify(tr_f, tr_y, te_f, [k], T=float(kcfg["temperature"]), num_classes=C)[k]
    top1 = 100.0 * float((preds[:, 0] == te_y.view(-1)).float().mean())
    return {"knn_top1": top1, "knn_k": k, "knn_n_train": int(tr_f.shape[0]), "knn_n_val": int(te_f.shape[0])}


def run_cell(cfg: Dict[str, Any], out_dir: Path, balancer: str, batch: int) -> Dict[str, Any]:
    """Pretrain (or resume / skip) one cell, then its k-NN; returns the cell's row."""
    from excb.train import train

    name = cell_name(balancer, batch)
    cell_dir = out_dir / name
    ccfg = cell_config(cfg, balancer, batch)
    t0 = time.time()
    if _pretrain_done(cell_dir, ccfg):
        print(f"[study] {name}: pretraining done, skipped")
        res = read_json(cell_dir / "results.json")
    else:
        print(f"[study] {name}: pretraining ({ccfg['epochs']} epochs, batch {batch})")
        res = train(ccfg, cell_dir)
    knn_path = cell_dir / "knn.json"
    key = sha256_json({"pretrain": sha256_json(ccfg), "wall": res.get("wall_s"), "knn": cfg["knn"]})
    knn = read_json(knn_path) if knn_path.exists() else None
    if not knn or knn.get("key") != key:
        model = _load_teacher_backbone(cell_dir / "checkpoint.pth")
        knn = {"key": key, **knn_top1(model, ccfg, cfg["knn"])}
        atomic_write_json(knn_path, knn)
    m = res.get("metrics", {})
    n_train = int(res.get("data", {}).get("n_train") or 0)
    steps = n_train // batch
    epochs = [r for r in read_jsonl(cell_dir / "log.jsonl") if r.get("kind") == "epoch"]
    return {
        "balancer": balancer, "batch": batch, "cell": name, "steps": steps * int(ccfg["epochs"]),
        "images_seen": steps * batch * int(ccfg["epochs"]), "knn_top1": knn["knn_top1"],
        # the final eval-mode pass and the last epoch's balanced training assignments (excb/cluster_stats.py)
        "final_used_fraction": (None if get_stat(m, "final_pass_empty_fraction") is None
                                else 1.0 - get_stat(m, "final_pass_empty_fraction")),
        "final_max_rel_size": get_stat(m, "final_pass_max_size"),
        "last_epoch_clusters_used": get_stat(m, "train_assign_used"),
        "last_epoch_cluster_size_max": get_stat(m, "train_assign_size_max"),
        "purity": get_stat(m, "final_pass_purity", m.get("purity")), "loss": m.get("loss"),
        "pretrain_wall_s": res.get("wall_s"), "cell_s": time.time() - t0,
        "curve": {"epoch": [r.get("epoch") for r in epochs],
                  "cluster_size_max": [get_stat(r, "train_assign_size_max") for r in epochs],
                  "clusters_used": [get_stat(r, "train_assign_used") for r in epochs]},
    }


# ----------------------------------------------------------------------------- outputs
def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return format(v, spec)


def markdown_table(rows: List[Dict[str, Any]], K: int) -> str:
    head = ("| balancer | batch | steps | images seen | k-NN top-1 (%) | clusters used (final pass) | "
            "max cluster size (× K/N, final) | max cluster size (last epoch) | purity |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['balancer']} | {r['batch']} | {r['steps']} | {r['images_seen']:,} | {_fmt(r['knn_top1'], '.1f')} | "
                     f"{_fmt(None if r['final_used_fraction'] is None else 100 * r['final_used_fraction'], '.1f')} % | "
                     f"{_fmt(r['final_max_rel_size'], '.1f')} | {_fmt(r['last_epoch_cluster_size_max'], '.1f')} | "
                     f"{_fmt(r['purity'], '.3f')} |")
    return "\n".join(lines) + f"\n\nK = {K} clusters; a relative size of 1 is an equal share (N/K rows).\n"


def plot_cluster_sizes(rows: List[Dict[str, Any]], path: Path) -> Optional[Path]:
    """Largest relative cluster size and fraction of clusters used per epoch, one column per batch size."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("[study] matplotlib not installed: no figure (pip install matplotlib)")
        return None
    batches = sorted({r["batch"] for r in rows})
    balancers = list(dict.fromkeys(r["balancer"] for r in rows))
    fig, axes = plt.subplots(2, len(batches), figsize=(4.2 * len(batches), 6.4), squeeze=False, sharex="col")
    colors = {b: plt.get_cmap("tab10")(i) for i, b in enumerate(balancers)}
    for j, B in enumerate(batches):
        for r in (r for r in rows if r["batch"] == B):
            c = r["curve"]
            if not c["epoch"]:
                continue
            axes[0, j].plot(c["epoch"], c["cluster_size_max"], "o-", color=colors[r["balancer"]], label=r["balancer"])
            axes[1, j].plot(c["epoch"], [100 * (u or 0) for u in c["clusters_used"]], "o-", color=colors[r["balancer"]],
                            label=r["balancer"])
        axes[0, j].set_title(f"batch {B}")
        axes[0, j].set_yscale("log")
        axes[1, j].set_xlabel("epoch")
        axes[1, j].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes[1, j].set_ylim(0, 102)
    axes[0, 0].set_ylabel("largest cluster (× equal share)")
    axes[1, 0].set_ylabel("clusters used in the epoch (%)")
    axes[0, -1].legend(fontsize=8)
    fig.suptitle("Cluster sizes over training (teacher hard assignments per epoch)")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def write_outputs(cfg: Dict[str, Any], out_dir: Path, rows: List[Dict[str, Any]], t_start: float) -> Dict[str, Any]:
    K = int(cfg["pretrain"]["centroids"]["K"])
    table = markdown_table(rows, K)
    atomic_write_text(out_dir / "study.md", table)
    atomic_write_json(out_dir / "study.json", {"rows": rows, "config": cfg})
    plot_cluster_sizes(rows, out_dir / "cluster_sizes.png")
    results = {
        "stage": "study-balancers",
        "metrics": {r["cell"]: {k: r[k] for k in ("knn_top1", "final_used_fraction", "final_max_rel_size")} for r in rows},
        "protocol": cfg,
        "data": {"name": cfg["pretrain"]["data"]["name"], "n_train": None, "n_val": None},
        "checkpoint": {"path": None, "sha256": None, "format": None},
        "seed": cfg["pretrain"]["seed"], "world_size": 1, "wall_s": time.time() - t_start,
        "versions": package_versions(),
    }
    atomic_write_json(out_dir / "results.json", results)
    return results


def run_study(cfg: Dict[str, Any], out_dir: str | Path) -> Dict[str, Any]:
    """Every cell of the grid (skipping finished ones), then table, figure and results.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    rows = []
    for B in cfg["batch_sizes"]:
        for bal in cfg["balancers"]:
            rows.append(run_cell(cfg, out_dir, bal, int(B)))
            write_outputs(cfg, out_dir, rows, t0)   # partial results are visible while the grid runs
    seen = {r["images_seen"] for r in rows}
    if len(seen) > 1:
        print(f"[study] note: images seen differ between cells ({sorted(seen)}): the batch sizes do not all divide "
              f"the training set; set data.limit_train to a multiple of every batch size")
    res = write_outputs(cfg, out_dir, rows, t0)
    print(markdown_table(rows, int(cfg["pretrain"]["centroids"]["K"])))
    print(f"[study] table: {out_dir / 'study.md'}  figure: {out_dir / 'cluster_sizes.png'}  ({time.time() - t0:.0f} s)")
    return res


def main(args) -> int:
    """``excb-bench study balancers``: args.what, args.config, args.output_dir, args.overrides."""
    from excb.config import dump_yaml

    if getattr(args, "what", "balancers") != "balancers":
        raise ExcbError(f"study: unknown study '{args.what}'; use 'balancers'")
    path = Path(args.config) if getattr(args, "config", None) else DEFAULT_CONFIG
    if not path.exists():
        raise ExcbError(f"{path}: study config not found; pass --config with a YAML like {DEFAULT_CONFIG.name}")
    cfg = resolve_study_config(path, list(getattr(args, "overrides", None) or []))
    out = Path(getattr(args, "output_dir", None) or DEFAULT_OUTPUT)
    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    run_study(cfg, out)
    return 0
