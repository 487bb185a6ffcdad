"""The console summary of ``run-all``: where the minutes went, stage by stage.

Times come from the run's manifest (each stage's own ``wall_s``, or end - start for a stage
that was skipped), so the printed figures are the ones ``manifest.json`` keeps.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional


def format_seconds(s: Optional[float]) -> str:
    """``75.3`` -> ``"1 min 15 s"``; ``9.2`` -> ``"9.2 s"``; None -> ``"-"``."""
    if s is None:
        return "-"
    m, sec = divmod(float(s), 60.0)
    return f"{int(m)} min {sec:02.0f} s" if m >= 1 else f"{sec:.1f} s"


def stage_seconds(entry: Mapping[str, Any]) -> Optional[float]:
    if entry.get("wall_s") is not None:
        return float(entry["wall_s"])
    if entry.get("start") and entry.get("end"):
        return float(entry["end"]) - float(entry["start"])
    return None


def stage_times_table(statuses: Mapping[str, str], manifest: Mapping[str, Any], total_s: Optional[float] = None) -> str:
    """One line per stage run by this invocation: status and time; up-to-date stages show the
    time they took when they ran; then this invocation's total."""
    stages: Dict[str, Any] = manifest.get("stages", {})
    width = max([len(k) for k in statuses] + [5])
    lines = ["[excb-bench] stage times:"]
    for name, status in statuses.items():
        e = stages.get(name, {})
        t = stage_seconds(e)
        if status == "up-to-date":
            shown = f"(ran earlier: {format_seconds(t)})" if t is not None else ""
        else:
            shown = format_seconds(t)
        lines.append(f"  {name:<{width}s}  {status:<10s}  {shown}")
    if total_s is not None:
        lines.append(f"  {'total':<{width}s}  {'':<10s}  {format_seconds(total_s)}")
    return "\n".join(lines)
