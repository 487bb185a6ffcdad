"""Where a measured number comes from, in one line: checkpoint (short sha256, format, teacher or
student, zoo name, trusted unpickle) and each stage's protocol (k and T, epochs, selected lr,
resolution). Read only from the results.json files the stages wrote."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

TRUST_MARK = "†"


def checkpoint_text(res: Dict[str, Any]) -> str:
    ck = res.get("checkpoint") or {}
    sha = ck.get("sha256")
    if not sha:
        return str(ck.get("init") or ck.get("format") or "no checkpoint")
    parts = [f"sha256 {sha[:8]}", str(ck.get("format") or "?")]
    if ck.get("which"):
        parts.append(str(ck["which"]))
    zoo = ck.get("zoo")
    if isinstance(zoo, dict) and zoo.get("name"):
        parts.append(f"zoo:{zoo['name']}")
    if ck.get("trusted_pickle"):
        parts.append(f"{TRUST_MARK} loaded with --trust-checkpoint")
    return ", ".join(parts)


def _px(p: Dict[str, Any]) -> str:
    crop, resize = p.get("crop"), p.get("resize")
    if crop is None:
        return ""
    return f"{crop} px" + (f" (resize {resize})" if resize is not None else "")


def _knn(res: Dict[str, Any]) -> str:
    p, m = res.get("protocol") or {}, res.get("metrics") or {}
    k = p.get("headline_k") or m.get("k") or p.get("k")
    return ", ".join(x for x in (f"k={k}", f"T={p.get('temperature')}", _px(p)) if x)


def _linear(res: Dict[str, Any]) -> str:
    p, m = res.get("protocol") or {}, res.get("metrics") or {}
    lr = m.get("selected_lr")
    if lr is None and isinstance(p.get("lrs"), list) and len(p["lrs"]) == 1:
        lr = p["lrs"][0]
    bits = [f"{p.get('epochs')} ep" if p.get("epochs") is not None else "",
            f"lr {lr:g}" if isinstance(lr, (int, float)) else "", _px(p)]
    return ", ".join(b for b in bits if b)


def _semisup(res: Dict[str, Any]) -> str:
    p = res.get("protocol") or {}
    bits = [f"{p.get('percent')} %" if p.get("percent") is not None else "",
            f"{p.get('epochs')} ep" if p.get("epochs") is not None else "", _px(p)]
    return ", ".join(b for b in bits if b)


def _detect(res: Dict[str, Any]) -> str:
    p = res.get("protocol") or {}
    it = p.get("max_iter") or (res.get("metrics") or {}).get("iterations")
    return f"{it} iterations" if it else ""


STAGE_TEXT = {"knn": ("k-NN", _knn), "linear": ("linear", _linear), "semisup_1": ("semi-sup.", _semisup),
              "semisup_10": ("semi-sup.", _semisup), "detect": ("detection", _detect)}


def protocol_text(stages: Dict[str, Dict[str, Any]], only: Optional[List[str]] = None) -> str:
    parts = []
    for stage, (name, fn) in STAGE_TEXT.items():
        if stage in stages and (only is None or stage in only):
            txt = fn(stages[stage])
            parts.append(f"{name}: {txt}" if txt else name)
    return "; ".join(parts)


def row_provenance(mr: Dict[str, Any], only: Optional[List[str]] = None) -> str:
    """``"checkpoint sha256 1a2b3c4d, excb-bench, teacher · k-NN: k=20, T=0.07, 32 px (resize 36)"``."""
    stages = {s: r for s, r in mr.get("stages", {}).items() if only is None or s in only}
    first = next(iter(stages.values()), {})
    ck = checkpoint_text(first)
    return f"checkpoint {ck} · {protocol_text(stages)}" if stages else ck


def trusted(mr: Dict[str, Any]) -> bool:
    return any((r.get("checkpoint") or {}).get("trusted_pickle") for r in mr.get("stages", {}).values())
