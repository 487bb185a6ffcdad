"""A built table as Markdown: one pipe table per section, notes below it."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from benchmarks.leaderboard.cells import _cell_text


def _render_md(table: Dict[str, Any], cfg: Dict[str, Any]) -> str:
    from tabulate import tabulate

    cols = table["columns"]
    out = [f"## {table['title']}", ""]
    if not table["sections"]:
        out += ["(no rows)", ""]
    for sec in table["sections"]:
        out += [f"**{sec['title']}**" + (f" — protocol: {sec['protocol']}" if sec["protocol"] else ""), ""]
        body = [[_cell_text(r, c, "md", cfg) for c in cols] for r in sec["rows"]]
        align = ["left" if not c["metric"] and c["key"] in ("method", "arch", "setting") else "right" for c in cols]
        out.append(tabulate(body, headers=[c["md"] for c in cols], tablefmt="pipe", colalign=align,
                            disable_numparse=True))
        if sec["notes"]:
            out.append("")
            out += [f"- {n}" for n in sec["notes"]]
        out.append("")
    return "\n".join(out) + "\n"
