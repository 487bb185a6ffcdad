"""One cell's text in Markdown or LaTeX: value, emphasis, protocol-variant letter."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from benchmarks.leaderboard.layouts import latex_escape


def format_value(v: Any, decimals: int = 1) -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{decimals}f}"
    return str(v)


def _cell_text(row: Dict[str, Any], col: Dict[str, Any], fmt: str, cfg: Dict[str, Any]) -> str:
    v = row["cells"].get(col["key"])
    text = format_value(v, cfg["decimals"])
    if col["key"] == "method" and row.get("note"):
        text += "*"
    if fmt == "tex":
        text = latex_escape(text) if text != "–" else "--"
    letter = row["variant"].get(col["key"])
    emph = row["emph"].get(col["key"])
    if fmt == "md":
        text = text.replace("|", "\\|")
        if emph:
            a, b = cfg["markdown"]["bold" if emph == "best" else "underline"]
            text = f"{a}{text}{b}"
        if letter:
            text += f" ({letter})"
    elif fmt == "tex":
        if emph == "best":
            text = rf"\textbf{{{text}}}"
        elif emph == "second":
            text = rf"\underline{{{text}}}"
        if letter:
            text += f"$^{{{letter}}}$"
    return text
