"""Small lookups shared by the leaderboard modules."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from excb import ExcbError


# ----------------------------------------------------------------------------- small helpers
def _get_path(obj: Any, dotted: str) -> Any:
    cur = obj
    for part in dotted.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return None
    return cur


def first_present(obj: Any, alternatives: str) -> Any:
    """Value of the first of ``"a.b|c|d"`` that exists (and is not None) in ``obj``."""
    for alt in alternatives.split("|"):
        v = _get_path(obj, alt.strip())
        if v is not None:
            return v
    return None


def parse_source(spec: str) -> Tuple[str, str]:
    if ":" not in spec:
        raise ExcbError(f"leaderboard.metric_sources: '{spec}' must be 'stage:key|fallback', e.g. 'knn:top1|acc1'")
    stage, keys = spec.split(":", 1)
    return stage.strip(), keys


def _num(v: Any) -> Optional[float]:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    return None


def metric_percent(res: Dict[str, Any], keys: str) -> Optional[float]:
    """A stage's metric (first of ``"top1|acc1"`` in ``results.json["metrics"]``) in %; stages that
    report fractions say so with ``metrics.units: fraction``."""
    metrics = res.get("metrics", {})
    v = _num(first_present(metrics, keys))
    if v is not None and str(metrics.get("units", "")).lower() == "fraction":
        v *= 100.0
    return v
