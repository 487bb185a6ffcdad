"""The leaderboard stage's config keys (every path and metric source is data)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

REPO_ROOT = Path(__file__).resolve().parents[2]
STAGES = ("knn", "linear", "semisup_1", "semisup_10", "detect")

DEFAULTS: Dict[str, Any] = {
    "baselines_dir": "",            # "" -> <repo>/configs/baselines
    "baseline_files": [],           # [] -> every *.yaml in baselines_dir
    "runs": [],                     # run directories; [] -> the parent of this stage's folder
    "tables": ["zoo", "table1", "table2", "table3", "table4", "table5", "ablations"],   # zoo: measured vs published
    "paths": {                      # relative to a run directory (or to an eval_/sanity_ folder)
        "pretrain": "pretrain/results.json",
        "stages": {s: f"{s}/results.json" for s in STAGES},
        "sanity": {"random": "sanity_random", "pixels": "sanity_pixels"},
        "eval_glob": "eval_*",
        "eval_label_files": ["label.txt", "label.json", "eval.json", "meta.json"],
    },
    # Where a measured table column comes from: "stage:key|fallback|..." (dotted keys into
    # results.json "metrics"; the first present wins).
    "metric_sources": {
        "knn_top1": "knn:top1|knn_top1|acc1|top1_k20",
        "linear_top1": "linear:top1|linear_top1|acc1",
        "semisup_1_top1": "semisup_1:top1|acc1",
        "semisup_1_top5": "semisup_1:top5|acc5",
        "semisup_10_top1": "semisup_10:top1|acc1",
        "semisup_10_top5": "semisup_10:top5|acc5",
        "ap_box": "detect:bbox.AP|ap_box|AP_box|box_AP",
        "ap50_box": "detect:bbox.AP50|ap50_box|AP50_box",
        "ap75_box": "detect:bbox.AP75|ap75_box|AP75_box",
        "ap_mask": "detect:segm.AP|ap_mask|AP_mask|mask_AP",
        "ap50_mask": "detect:segm.AP50|ap50_mask|AP50_mask",
        "ap75_mask": "detect:segm.AP75|ap75_mask|AP75_mask",
    },
    # Row facts of "ours" from <run>/pretrain/results.json ("a|b": first present wins).
    "pretrain_keys": {
        "batch": "protocol.batch_size",
        "epochs": "metrics.epochs_done|protocol.epochs",
        "arch": "protocol.backbone.name",
        "n_local": "protocol.augment.n_local",
    },
    "eval_arch_keys": "checkpoint.arch|protocol.arch|protocol.backbone.name|protocol.backbone",
    # Protocol keys that do not change what a number means (paths, workers, seeds, the
    # backbone under test itself); any dotted component matching drops the key.
    "protocol_ignore_keys": ["data", "checkpoint", "format", "which", "arch", "backbone", "features",
                             "feature_source", "init", "sanity", "label", "num_workers", "device", "seed",
                             "pin_memory", "cache", "cache_dir", "output_dir", "run_dir", "progress",
                             "log_every", "resume", "extract_batch_size", "world_size", "amp", "recipe"],
    "measured_scale": 1.0,          # multiply measured metrics (e.g. 100 if a stage wrote fractions)
    "method_name": "ExCB",
    "sanity_labels": {"random": "Random init (sanity)", "pixels": "Raw pixels (sanity)"},
    "data_labels": {"imagenet": "ImageNet", "coco": "COCO", "demo": "demo: Fashion-MNIST subset",
                    "imagefolder": "ImageFolder"},
    "decimals": 1,
    "markdown": {"bold": ["**", "**"], "underline": ["<u>", "</u>"]},
}
