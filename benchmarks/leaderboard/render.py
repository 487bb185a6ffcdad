"""Dispatch to the Markdown / LaTeX / CSV renderers; one file for all tables."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from excb import ExcbError
from excb.config import resolve_config

from benchmarks.leaderboard.defaults import DEFAULTS
from benchmarks.leaderboard.render_csv import CSV_FIELDS, _render_csv
from benchmarks.leaderboard.render_md import _render_md
from benchmarks.leaderboard.render_tex import _render_tex


def render(table: Dict[str, Any], fmt: str, cfg: Optional[Dict[str, Any]] = None) -> str:
    """One built table as ``md`` (a pipe table per section), ``tex`` (booktabs) or ``csv``
    (tidy: one line per row and metric, header included)."""
    cfg = resolve_config(DEFAULTS, base=cfg) if cfg is not None else DEFAULTS
    if fmt not in RENDERERS:
        raise ExcbError(f"leaderboard: unknown format '{fmt}'; use one of {', '.join(RENDERERS)}")
    return RENDERERS[fmt](table, cfg)


RENDERERS: Dict[str, Callable[[Dict[str, Any], Dict[str, Any]], str]] = {
    "md": _render_md, "tex": _render_tex, "csv": _render_csv}


def render_all(tables: Dict[str, Dict[str, Any]], fmt: str, cfg: Optional[Dict[str, Any]] = None) -> str:
    parts = [render(t, fmt, cfg) for t in tables.values()]
    if fmt == "csv":   # one header for the whole file
        return parts[0] + "".join(p.split("\n", 1)[1] for p in parts[1:]) if parts else ",".join(CSV_FIELDS) + "\n"
    if fmt == "md":
        return "# excb-bench leaderboard\n\n" + "\n".join(parts)
    return "% excb-bench leaderboard (needs \\usepackage{booktabs})\n\n" + "\n".join(parts)
