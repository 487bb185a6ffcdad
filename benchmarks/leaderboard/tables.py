"""``build_tables``: rows in, tables out (pure, so it can be tested cell by cell)."""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from excb import ExcbError
from excb.config import resolve_config

from benchmarks.leaderboard.comparison import build_comparison
from benchmarks.leaderboard.defaults import DEFAULTS
from benchmarks.leaderboard.layouts import LAYOUTS, Column
from benchmarks.leaderboard.published import _published_sections
from benchmarks.leaderboard.sections import _measured_sections, mark_best


def build_tables(baseline_rows: Sequence[Dict[str, Any]], measured_rows: Sequence[Dict[str, Any]],
                 cfg: Optional[Dict[str, Any]] = None, tables: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Any]]:
    """Pure: rows in, ``{name: table}`` out.

    A table is ``{"name", "title", "columns": [{"key", "md", "tex", "metric"}], "sections":
    [{"title", "kind", "data", "protocol", "notes", "rows": [{"cells": {key: value|None},
    "emph": {key: "best"|"second"}, "variant": {key: letter}, "rank", "source", "note", "kind"}]}]}``.
    """
    cfg = resolve_config(DEFAULTS, base=cfg) if cfg is not None else copy.deepcopy(DEFAULTS)
    names = list(tables if tables is not None else cfg["tables"])
    out: Dict[str, Dict[str, Any]] = {}
    for name in names:
        if name == "zoo":   # measured vs published, row by row (its own builder)
            out[name] = build_comparison(list(measured_rows), list(baseline_rows), cfg)
            continue
        if name not in LAYOUTS:
            raise ExcbError(f"leaderboard.tables: unknown table '{name}'; known: {', '.join(LAYOUTS)}")
        layout = LAYOUTS[name]
        rows = [r for r in baseline_rows if r.get("table") == name]
        sections = _published_sections(layout, rows, cfg)
        sections += _measured_sections(layout, list(measured_rows), cfg)
        columns = [Column(**vars(c)) for c in layout.columns]
        if layout.pivot:
            field_, metric = layout.pivot
            values = sorted({r.get(field_) for r in rows}, key=lambda v: (str(type(v)), v))
            columns += [Column(f"{field_}={v}", f"{v} ep", f"{v} ep", True) for v in values]
        metric_keys = [c.key for c in columns if c.metric]
        for sec in sections:
            for row in sec["rows"]:
                for c in columns:
                    row["cells"].setdefault(c.key, None)
            mark_best(sec, metric_keys)
        out[name] = {"name": name, "title": layout.title, "columns": [vars(c) for c in columns],
                     "sections": sections}
    return out
