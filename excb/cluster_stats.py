"""The three cluster-size figures of a run, named so that a reader knows which is which.

All sizes are relative: count x K / N, so 1 is an equal share of the rows.

* ``train_assign_*`` — the **balanced training assignments** of one epoch: the argmax of the
  balanced teacher output (Eq. 8-10) over every global view the epoch trained on. Logged per
  epoch. Healthy: every cluster used and min/max within a small factor of 1 (the paper: 0.7-1.3 on
  ImageNet with K = 65,536); a max near K or few clusters used means the balancing failed.
* ``s_estimate_*`` — the **running size estimate s** (Eq. 9, s x K): an EMA with momentum m_s of
  those balanced counts, which the balancer uses to re-weight the next step. Logged per step and
  epoch. Healthy: near 1 and slowly moving; a spread of several x means the raw teacher keeps
  favouring some clusters and the balancer is working against it.
* ``final_pass_*`` — one **final eval-mode pass over the training set** after training (App. A):
  the raw teacher argmax without any balancing, one centre crop per image. Written to results.json
  and ``final_cluster_counts.npy``. Healthy after a full run: few empty clusters (the paper after
  ImageNet pretraining: 1.6 % empty, largest 19.5; DINO 74.7 %, 555.9). After a short run (a few
  hundred steps) 50-85 % of clusters are empty here while the training assignments are balanced:
  the raw teacher spreads its argmax only slowly; that is expected, not a failure.

Logs written before these names used ``cluster_size_min/max``, ``clusters_used``, ``s_min_rel/
s_max_rel`` and ``final_empty_fraction/final_max_rel_size/final_purity``; :func:`get_stat` reads
both.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

OLD_NAMES: Dict[str, str] = {
    "train_assign_size_min": "cluster_size_min",
    "train_assign_size_max": "cluster_size_max",
    "train_assign_used": "clusters_used",
    "s_estimate_min": "s_min_rel",
    "s_estimate_max": "s_max_rel",
    "final_pass_empty_fraction": "final_empty_fraction",
    "final_pass_max_size": "final_max_rel_size",
    "final_pass_purity": "final_purity",
}
NEW_NAMES = {old: new for new, old in OLD_NAMES.items()}

# one line each, for figure captions and the console
HEALTHY = {
    "train_assign": "balanced training assignments per epoch: healthy = all clusters used, min/max near 1 "
                    "(paper: 0.7-1.3 on ImageNet)",
    "s_estimate": "running size estimate s (EMA, m_s): healthy = near 1, slowly moving",
    "final_pass": "final eval-mode pass (raw teacher argmax, no balancing): after a full run few clusters are "
                  "empty (paper: 1.6 %); after a few hundred steps 50-85 % empty is expected while the "
                  "training assignments are balanced",
}


def get_stat(record: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``record[key]``, or the value under the key's pre-rename name (logs of older runs)."""
    if key in record:
        return record[key]
    return record.get(OLD_NAMES.get(key, key), default)


def renamed(stats: Mapping[str, Any]) -> Dict[str, Any]:
    """``stats`` with old names (e.g. a balancer's ``s_min_rel``) replaced by the current ones."""
    return {NEW_NAMES.get(k, k): v for k, v in stats.items()}


def _range(rec: Mapping[str, Any], lo: str, hi: str) -> Optional[str]:
    a, b = get_stat(rec, lo), get_stat(rec, hi)
    return None if a is None or b is None else f"{a:.2f}-{b:.2f}"


def console_line(ep: Mapping[str, Any]) -> str:
    """The cluster part of the per-epoch console line, each figure named."""
    parts = []
    if (r := _range(ep, "train_assign_size_min", "train_assign_size_max")) is not None:
        used = get_stat(ep, "train_assign_used")
        parts.append(f"train_assign_size={r}" + (f" ({100 * used:.0f}% used)" if used is not None else ""))
    if (r := _range(ep, "s_estimate_min", "s_estimate_max")) is not None:
        parts.append(f"s_estimate={r}")
    return "  ".join(parts)


def final_pass_line(final: Mapping[str, Any], steps: int) -> str:
    """What the final pass found, and what that means on a run of ``steps`` steps."""
    empty, largest = get_stat(final, "final_pass_empty_fraction"), get_stat(final, "final_pass_max_size")
    if empty is None or largest is None:
        return ""
    note = (" — expected after a short run: the raw teacher argmax spreads over the clusters slowly, while the "
            "balanced training assignments above are what the loss uses") if steps < 5000 and empty > 0.3 else ""
    return (f"final eval-mode pass over the training set (raw teacher argmax, no balancing): "
            f"{100 * empty:.1f}% of clusters empty, largest {largest:.1f}x an equal share{note}")
