"""A built table as a booktabs LaTeX table."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from benchmarks.leaderboard.cells import _cell_text
from benchmarks.leaderboard.layouts import latex_escape


def caption(table: Dict[str, Any]) -> str:
    """Title, then every section's data set and protocol: a LaTeX table read alone still says what
    data and protocol each block of numbers is on."""
    parts = []
    for sec in table["sections"]:
        proto = sec.get("protocol") or ""
        if proto == "as recorded in each results.json":
            proto = "protocol per row in the notes"
        parts.append(f"{sec['title']}" + (f" ({proto})" if proto else ""))
    return table["title"] + (". " + "; ".join(parts) if parts else "") + "."


def _render_tex(table: Dict[str, Any], cfg: Dict[str, Any]) -> str:
    cols = table["columns"]
    n = len(cols)
    spec = "".join("l" if c["key"] in ("method", "arch", "setting") else "r" for c in cols)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{latex_escape(caption(table))}}}", rf"\label{{tab:excb-{table['name']}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
             " & ".join(c["tex"] for c in cols) + r" \\"]
    notes: List[str] = []
    for sec in table["sections"]:
        lines.append(r"\midrule")
        lines.append(rf"\multicolumn{{{n}}}{{l}}{{\textit{{{latex_escape(sec['title'])}}}}} \\")
        lines.append(r"\midrule")
        for r in sec["rows"]:
            lines.append(" & ".join(_cell_text(r, c, "tex", cfg) for c in cols) + r" \\")
        notes += [f"{sec['title']}: {x}" for x in sec["notes"]]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if notes:
        lines.append(r"\par\smallskip\footnotesize")
        lines += [latex_escape(x) + r"\\" for x in notes]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"
