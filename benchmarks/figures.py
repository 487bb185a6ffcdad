"""Figures of a run: training statistics (paper Fig. 4), cluster sizes after training (App. A /
Fig. 5) and a t-SNE of backbone features coloured by class (App. C).

Inputs, relative to the run directory (config keys under ``paths``)::

    pretrain/log.jsonl                 records {"kind": "epoch", "epoch", "loss", "c_avg",
                                       "train_assign_size_min", "train_assign_size_max",
                                       "s_estimate_min", "s_estimate_max", "agreement",
                                       "purity"?, "lr", "momentum", "images_per_s"}
                                       (logs of older runs: cluster_size_min/max, s_min_rel/s_max_rel)
    pretrain/final_cluster_counts.npy  int64 count per cluster of the final eval-mode pass over train

The three cluster-size figures (excb/cluster_stats.py): the balanced training assignments per epoch
and the running estimate s are panel (c) of training_stats.png; the final eval-mode pass (raw teacher
argmax, no balancing) is cluster_sizes.png — far from balanced after short runs, by design.
    pretrain/checkpoint.pth            backbone for the t-SNE (via excb.checkpoint_formats)
    pretrain/log.jsonl (kind monitor)  online k-NN top-1 per epoch and its random-init value
                                       (excb/monitor.py, pretraining's monitor.knn_every)

A figure whose input is missing is skipped with the reason recorded in results.json
(``skipped``), never a crash. PNGs are written atomically.
"""
from __future__ import annotations

import argparse
import copy
import io
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from excb import ExcbError
from excb.cluster_stats import get_stat
from excb.config import resolve_config
from excb.data import DATA_DEFAULTS
from excb.io import atomic_write_bytes, atomic_write_json, package_versions, read_json, read_jsonl

FIGURES = ("training_stats", "cluster_sizes", "tsne", "online_knn")

DEFAULTS: Dict[str, Any] = {
    "data": dict(DATA_DEFAULTS),     # t-SNE data; replaced by the pretraining data when data_from_pretrain
    "run": "",                       # run directory; "" -> the parent of this stage's folder
    "paths": {
        "log": "pretrain/log.jsonl",
        "counts": "pretrain/final_cluster_counts.npy",
        "checkpoint": "pretrain/checkpoint.pth",
        "pretrain_results": "pretrain/results.json",
    },
    "figures": list(FIGURES),
    "dpi": 120,
    "balanced_band": [0.7, 1.3],     # relative-size band the paper reports for ImageNet (Fig. 4c)
    "tsne": {
        "data_from_pretrain": True,  # use the data section the checkpoint was trained on
        "split": "val",
        "max_samples": 1000,         # t-SNE is O(n log n) but slow on CPU: cap the subset
        "perplexity": 30.0,
        "pca_dim": 50,               # PCA before t-SNE (0 = off), the usual speed-up
        "max_iter": 1000,
        "threads": 1,                # OpenMP threads for t-SNE; 1 avoids spin-wait stalls on busy CPUs (0 = default)
        "seed": 0,
        "which": "teacher",
        "format": "auto",
        "eval_resize": 0,            # 0 -> the pretraining config's augment.eval_resize (else 256)
        "eval_crop": 0,              # 0 -> augment.eval_crop (else 224)
        "batch_size": 128,
        "num_workers": 0,
        "device": "cpu",
    },
}


# ----------------------------------------------------------------------------- helpers
def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=True)   # headless; never open a window
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: Path, dpi: int) -> Path:
    """Render ``fig`` to PNG bytes in memory, then write them atomically."""
    plt = _mpl()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def load_epoch_records(path: Path) -> List[Dict[str, Any]]:
    """Epoch records of a JSONL log, one per epoch (the last wins: a resumed run relogs)."""
    by_epoch: Dict[int, Dict[str, Any]] = {}
    for rec in read_jsonl(path):
        if rec.get("kind") == "epoch" and isinstance(rec.get("epoch"), (int, float)):
            by_epoch[int(rec["epoch"])] = rec
    return [by_epoch[e] for e in sorted(by_epoch)]


def _series(records: Sequence[Dict[str, Any]], key: str) -> Tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for r in records:
        v = get_stat(r, key)   # old logs: the names before the rename
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(r["epoch"])
            ys.append(float(v))
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def cluster_size_stats(counts: np.ndarray, band: Sequence[float] = (0.7, 1.3)) -> Dict[str, Any]:
    """App. A statistics of a hard-assignment count vector.

    relative size = count · K / N (1 = the uniform share). Returns K, N, number and fraction of
    empty clusters, largest / smallest relative size (smallest also over non-empty clusters)
    and the fraction of clusters whose relative size lies inside ``band``.
    """
    c = np.asarray(counts).reshape(-1)
    if c.size == 0:
        raise ExcbError("cluster counts: empty array; expected one count per cluster")
    if np.any(c < 0):
        raise ExcbError("cluster counts: negative counts; expected non-negative integers per cluster")
    K, N = int(c.size), float(c.sum())
    if N <= 0:
        raise ExcbError("cluster counts: all zero (no samples assigned); rerun the final cluster pass")
    rel = c.astype(np.float64) * K / N
    nonempty = rel[c > 0]
    lo, hi = float(band[0]), float(band[1])
    return {"n_clusters": K, "n_samples": int(N), "n_empty": int((c == 0).sum()),
            "empty_fraction": float((c == 0).mean()), "max_relative_size": float(rel.max()),
            "min_relative_size": float(rel.min()), "min_relative_size_nonempty": float(nonempty.min()),
            "band": [lo, hi], "band_fraction": float(((rel >= lo) & (rel <= hi)).mean())}


# ----------------------------------------------------------------------------- figure 1: training stats
PANELS = (("loss", "loss", "(a) training loss"),
          ("c_avg", "c_avg", "(b) teacher confidence $c_{avg}$"),
          (None, "relative size (x equal share)", "(c) balanced training assignments and s, min / max"),
          ("agreement", "a_avg", "(d) view agreement $a_{avg}$"),
          ("purity", "purity", "(e) cluster purity"),
          (None, "value", "(f) schedules"))


def plot_training_stats(records: Sequence[Dict[str, Any]], path: Path, dpi: int = 120,
                        band: Sequence[float] = (0.7, 1.3)) -> Path:
    """Fig. 4-style panels over epochs; a metric that was not logged shows 'not logged'."""
    if not records:
        raise ExcbError(f"{path}: no epoch records to plot")
    plt = _mpl()
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    style = dict(marker="o" if len(records) < 30 else None, markersize=3, linewidth=1.5)
    for ax, (key, ylabel, title) in zip(axes.flat, PANELS):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if title.startswith("(c)"):
            drawn = False
            for k, lab, col, ls in (("train_assign_size_max", "training assignments max", "tab:red", "-"),
                                    ("train_assign_size_min", "training assignments min", "tab:blue", "-"),
                                    ("s_estimate_max", "s estimate max", "tab:red", ":"),
                                    ("s_estimate_min", "s estimate min", "tab:blue", ":")):
                x, y = _series(records, k)
                if len(x):
                    ax.plot(x, y, label=lab, color=col, **{**style, "linestyle": ls})
                    drawn = True
            if drawn:
                ax.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="equal share")
                ax.axhspan(band[0], band[1], color="gray", alpha=0.12, label=f"{band[0]}–{band[1]} (paper, ImageNet)")
                ax.legend(fontsize=7)
                ax.set_title(title + "\nhealthy: near 1, all used (final pass: cluster_sizes.png)", fontsize=9)
            else:
                _not_logged(ax, "train_assign_size_min/max")
        elif title.startswith("(f)"):
            x, y = _series(records, "lr")
            x2, y2 = _series(records, "momentum")
            if len(x):
                ax.plot(x, y, color="tab:green", label="lr", **style)
                ax.set_ylabel("learning rate")
            if len(x2):
                ax2 = ax.twinx()
                ax2.plot(x2, y2, color="tab:purple", label="teacher momentum", **style)
                ax2.set_ylabel("teacher momentum")
            if not len(x) and not len(x2):
                _not_logged(ax, "lr / momentum")
        else:
            x, y = _series(records, key)
            if len(x):
                ax.plot(x, y, color="tab:blue", **style)
            else:
                _not_logged(ax, key)
    _, ips = _series(records, "images_per_s")
    sub = f" — mean throughput {ips.mean():.0f} images/s" if len(ips) else ""
    fig.suptitle(f"Training statistics over {len(records)} epoch(s){sub}")
    fig.tight_layout()
    return save_png(fig, path, dpi)


def plot_online_knn(curve: Dict[str, Any], path: Path, dpi: int = 120) -> Path:
    """The online k-NN top-1 over epochs beside the random-init value of the same subset."""
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(curve["epochs"], curve["top1"], marker="o", markersize=3, color="tab:blue", label="teacher backbone")
    if curve["random_init"] is not None:
        ax.axhline(curve["random_init"], color="gray", linestyle="--", linewidth=1, label="random init")
    ax.set_xlabel("epoch")
    ax.set_ylabel("20-NN top-1 (%)")
    ax.set_title("Online k-NN during pretraining (fixed labelled subset)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path, dpi)


def _not_logged(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}\nnot logged", ha="center", va="center", transform=ax.transAxes, color="gray")


# ----------------------------------------------------------------------------- figure 2: cluster sizes
def plot_cluster_sizes(counts: np.ndarray, path: Path, dpi: int = 120,
                       band: Sequence[float] = (0.7, 1.3)) -> Tuple[Path, Dict[str, Any]]:
    """Sorted relative cluster sizes (log scale) with the empty fraction and the largest size."""
    stats = cluster_size_stats(counts, band)
    plt = _mpl()
    c = np.asarray(counts).reshape(-1)
    rel = np.sort(c.astype(np.float64) * stats["n_clusters"] / stats["n_samples"])[::-1]
    rank = np.arange(1, rel.size + 1) / rel.size
    fig, ax = plt.subplots(figsize=(7, 4.5))
    nz = rel > 0   # log scale cannot show empty clusters: they are counted in the annotation
    ax.plot(rank[nz], rel[nz], color="tab:blue", linewidth=1.5, label="non-empty clusters")
    ax.set_yscale("log")
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="uniform share (1/K)")
    if stats["n_empty"]:
        ax.axvspan(rank[nz][-1] if nz.any() else 0.0, 1.0, color="tab:red", alpha=0.12, label="empty clusters")
    ax.set_xlim(0, 1)
    ax.set_xlabel("clusters, sorted by size (fraction of K)")
    ax.set_ylabel("relative size (count · K / N)")
    ax.set_title(f"Final eval-mode pass over the training set (K={stats['n_clusters']}, N={stats['n_samples']})\n"
                 f"raw teacher argmax, one centre crop per image, no balancing", fontsize=10)
    txt = (f"empty clusters: {stats['n_empty']} ({100 * stats['empty_fraction']:.1f} %)\n"
           f"largest relative size: {stats['max_relative_size']:.2f}\n"
           f"within {band[0]}–{band[1]}: {100 * stats['band_fraction']:.1f} %")
    ax.text(0.98, 0.97, txt, ha="right", va="top", transform=ax.transAxes, fontsize=9,
            bbox=dict(boxstyle="round", facecolor="white", alpha=0.85))
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower left", fontsize=8)
    # not the balanced training assignments (training_stats.png, panel c): say so where it is drawn
    fig.text(0.01, -0.02, "This is not what training used: the loss sees the balanced assignments (training_stats.png "
             "(c)), which stay near 1.\nAfter a short run (a few hundred steps) 50-85 % of clusters empty here is "
             "expected: the raw argmax spreads slowly.\nAfter a full run few should be empty (paper, ImageNet: "
             "1.6 % empty, largest 19.5).", fontsize=7.5, color="dimgray", va="top")
    fig.tight_layout()
    return save_png(fig, path, dpi), stats


# ----------------------------------------------------------------------------- figure 3: t-SNE
def subsample(n: int, max_samples: int, seed: int) -> np.ndarray:
    """Sorted indices of a fixed-seed random subset of size min(n, max_samples)."""
    if max_samples <= 0 or n <= max_samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))


def tsne_embed(features: np.ndarray, seed: int = 0, perplexity: float = 30.0, pca_dim: int = 50,
               max_iter: int = 1000, threads: int = 1) -> np.ndarray:
    """L2-normalised features -> (optional PCA) -> 2-d t-SNE."""
    from threadpoolctl import threadpool_limits

    # Barnes-Hut t-SNE with several OpenMP threads on an oversubscribed CPU was measured 4x
    # slower than one thread here (1000 x 512 features: 31 s vs 7 s).
    with threadpool_limits(limits=threads if threads > 0 else None):
        return _tsne_embed(features, seed, perplexity, pca_dim, max_iter)


def _tsne_embed(features: np.ndarray, seed: int, perplexity: float, pca_dim: int, max_iter: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    if len(x) < 5:
        raise ExcbError(f"t-SNE: {len(x)} samples are too few; need at least 5")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if pca_dim and x.shape[1] > pca_dim and len(x) > pca_dim:
        x = PCA(n_components=pca_dim, random_state=seed).fit_transform(x)
    perp = float(min(perplexity, max(1.0, (len(x) - 1) / 3.0)))   # sklearn needs perplexity < n
    tsne = TSNE(n_components=2, perplexity=perp, init="pca", learning_rate="auto", random_state=seed,
                max_iter=max(250, int(max_iter)))
    return tsne.fit_transform(x)


def plot_tsne(features: np.ndarray, labels: np.ndarray, path: Path, class_names: Optional[Sequence[str]] = None,
              max_samples: int = 1000, seed: int = 0, perplexity: float = 30.0, pca_dim: int = 50,
              max_iter: int = 1000, dpi: int = 120, title: str = "t-SNE of backbone features",
              threads: int = 1) -> Path:
    features = np.asarray(features)
    labels = np.asarray(labels).reshape(-1)
    if len(features) != len(labels):
        raise ExcbError(f"t-SNE: {len(features)} feature rows but {len(labels)} labels")
    idx = subsample(len(features), max_samples, seed)
    emb = tsne_embed(features[idx], seed, perplexity, pca_dim, max_iter, threads)
    lab = labels[idx]
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    classes = np.unique(lab)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "hsv")
    for i, c in enumerate(classes):
        m = lab == c
        name = class_names[int(c)] if class_names is not None and 0 <= int(c) < len(class_names) else str(c)
        ax.scatter(emb[m, 0], emb[m, 1], s=8, color=cmap(i % cmap.N if len(classes) <= 20 else i / len(classes)),
                   label=name, alpha=0.8, linewidths=0)
    if len(classes) <= 20:
        ax.legend(fontsize=7, markerscale=2.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{title} (n={len(idx)})")
    fig.tight_layout()
    return save_png(fig, path, dpi)


class _SubsetView:
    """A subset that keeps the data-set interface (targets, classes, sample_ids, load_image)."""

    def __init__(self, ds: Any, indices: np.ndarray):
        self.ds, self.indices = ds, [int(i) for i in indices]
        self.targets = [int(ds.targets[i]) for i in self.indices]
        self.classes = list(getattr(ds, "classes", []))
        ids = getattr(ds, "sample_ids", None)
        self.sample_ids = [ids[i] for i in self.indices] if ids is not None else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.ds[self.indices[i]]

    def load_image(self, i: int) -> Any:
        return self.ds.load_image(self.indices[i])


def extract_tsne_inputs(run: Path, cfg: Dict[str, Any]) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Backbone of ``<run>/pretrain/checkpoint.pth`` -> features of a capped subset of the data."""
    from benchmarks.features import extract_features          # lazy: heavy imports, other helper's module
    from excb.augment import eval_transform
    from excb.checkpoint_formats import load_backbone
    from excb.data import build_dataset, image_size_of

    t = cfg["tsne"]
    ckpt = run / cfg["paths"]["checkpoint"]
    pre_path = run / cfg["paths"]["pretrain_results"]
    proto = (read_json(pre_path).get("protocol") or {}) if pre_path.is_file() else {}
    data_cfg = dict(cfg["data"])
    if t["data_from_pretrain"] and isinstance(proto.get("data"), dict):
        data_cfg.update(proto["data"])
    aug = proto.get("augment") or {}
    native = image_size_of(data_cfg)          # the demo's 28 px images are not blown up to 224
    resize = t["eval_resize"] or int(aug.get("eval_resize", 256 if native >= 224 else native))
    crop = t["eval_crop"] or int(aug.get("eval_crop", 224 if native >= 224 else native))
    model, _dim, _info = load_backbone(str(ckpt), format=t["format"], which=t["which"])
    ds = build_dataset(data_cfg, t["split"], eval_transform(resize, crop))
    sub = _SubsetView(ds, subsample(len(ds), int(t["max_samples"]), int(t["seed"])))
    out = extract_features(model, sub, t["batch_size"], t["num_workers"], t["device"])
    feats = out[0] if isinstance(out, (tuple, list)) else out["features"] if isinstance(out, dict) else out
    if hasattr(feats, "detach"):
        feats = feats.detach().cpu().numpy()
    return np.asarray(feats), np.asarray(sub.targets), sub.classes


# ----------------------------------------------------------------------------- stage
def make_figures(run: Path, out_dir: Path, cfg: Dict[str, Any], features: Optional[np.ndarray] = None,
                 labels: Optional[np.ndarray] = None, class_names: Optional[Sequence[str]] = None
                 ) -> Tuple[List[str], Dict[str, str], Dict[str, Any]]:
    """Write every requested figure; returns (figure paths, {figure: reason skipped}, metrics)."""
    paths: List[str] = []
    skipped: Dict[str, str] = {}
    metrics: Dict[str, Any] = {}
    dpi, band = int(cfg["dpi"]), cfg["balanced_band"]
    for name in cfg["figures"]:
        if name not in FIGURES:
            raise ExcbError(f"figures.figures: unknown figure '{name}'; choose from {', '.join(FIGURES)}")
    want = set(cfg["figures"])
    if "training_stats" in want:
        log = run / cfg["paths"]["log"]
        recs = load_epoch_records(log) if log.is_file() else []
        if not log.is_file():
            skipped["training_stats"] = f"{log} not found (pretraining log)"
        elif not recs:
            skipped["training_stats"] = f"{log} has no records with kind 'epoch'"
        else:
            paths.append(str(plot_training_stats(recs, out_dir / "training_stats.png", dpi, band)))
            metrics["epochs_logged"] = len(recs)
    if "cluster_sizes" in want:
        cpath = run / cfg["paths"]["counts"]
        if not cpath.is_file():
            skipped["cluster_sizes"] = f"{cpath} not found (written by pretraining's final cluster pass)"
        else:
            try:
                counts = np.load(cpath, allow_pickle=False)
                p, stats = plot_cluster_sizes(counts, out_dir / "cluster_sizes.png", dpi, band)
                paths.append(str(p))
                metrics["cluster_sizes"] = stats
            except (ExcbError, ValueError, OSError) as e:
                skipped["cluster_sizes"] = f"{cpath}: {e}"
    if "tsne" in want:
        t = cfg["tsne"]
        reason = None
        if features is None:
            ckpt = run / cfg["paths"]["checkpoint"]
            if not ckpt.is_file():
                reason = f"{ckpt} not found (pretrained checkpoint)"
            else:
                try:
                    features, labels, class_names = extract_tsne_inputs(run, cfg)
                except ImportError as e:
                    reason = f"feature extraction unavailable ({e})"
                except ExcbError as e:
                    reason = str(e)
        elif labels is None:
            reason = "features given without labels"
        if reason:
            skipped["tsne"] = reason
        else:
            try:
                paths.append(str(plot_tsne(features, labels, out_dir / "tsne.png", class_names, int(t["max_samples"]),
                                           int(t["seed"]), float(t["perplexity"]), int(t["pca_dim"]),
                                           int(t["max_iter"]), dpi, threads=int(t["threads"]))))
                metrics["tsne_samples"] = int(min(len(features), t["max_samples"] or len(features)))
            except ExcbError as e:
                skipped["tsne"] = str(e)
    if "online_knn" in want:
        from excb.monitor import knn_curve

        log = run / cfg["paths"]["log"]
        curve = knn_curve(read_jsonl(log)) if log.is_file() else {"epochs": []}
        if not curve["epochs"]:
            skipped["online_knn"] = f"{log}: no online k-NN records (pretraining's monitor.knn_every was 0)"
        else:
            paths.append(str(plot_online_knn(curve, out_dir / "online_knn.png", dpi)))
            metrics["online_knn"] = {"last_top1": curve["top1"][-1], "random_init": curve["random_init"]}
    return paths, skipped, metrics


def run(cfg: Dict[str, Any], run_dir: Path, *, features: Optional[np.ndarray] = None,
        labels: Optional[np.ndarray] = None, class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Stage: figures of ``cfg['run']`` (default: parent of ``run_dir``) into ``run_dir``.

    ``features``/``labels`` (arrays) replace the t-SNE feature extraction, e.g. in tests.
    """
    t0 = time.time()
    cfg = resolve_config(DEFAULTS, base=cfg)
    run_dir = Path(run_dir)
    run_root = Path(cfg["run"]) if cfg["run"] else run_dir.resolve().parent
    paths, skipped, metrics = make_figures(run_root, run_dir, cfg, features, labels, class_names)
    results = {
        "stage": "figures",
        "metrics": metrics,
        "protocol": copy.deepcopy(cfg),
        "data": {"name": cfg["data"]["name"], "n_train": None, "n_val": None},
        "checkpoint": {"path": str(run_root / cfg["paths"]["checkpoint"]), "sha256": None, "format": None},
        "seed": cfg["tsne"]["seed"], "world_size": 1, "wall_s": time.time() - t0, "versions": package_versions(),
        "figures": paths,
        "skipped": skipped,
    }
    atomic_write_json(run_dir / "results.json", results)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Draw training statistics, cluster sizes and t-SNE figures of a run.")
    p.add_argument("--config", help="YAML with figures keys (see benchmarks/figures.py DEFAULTS)")
    p.add_argument("--output-dir", "-o", required=True, help="stage folder, e.g. <run>/figures")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. tsne.max_samples=500")
    a = p.parse_args(argv)
    res = run(resolve_config(DEFAULTS, a.config, a.overrides), Path(a.output_dir))
    for f in res["figures"]:
        print(f"[excb] wrote {f}")
    for k, why in res["skipped"].items():
        print(f"[excb] skipped {k}: {why}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
