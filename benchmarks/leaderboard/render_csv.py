"""A built table as tidy CSV: one line per row and metric."""
from __future__ import annotations

import csv
import io
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple


CSV_FIELDS = ["table", "section", "kind", "data", "protocol", "method", "arch", "batch", "epochs", "metric",
              "value", "emphasis", "variant", "ranked", "source"]


def _render_csv(table: Dict[str, Any], cfg: Dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for row in csv_rows(table):
        w.writerow([row[k] for k in CSV_FIELDS])
    return buf.getvalue()


def csv_rows(table: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Tidy rows (one per table row and metric); missing values are empty strings."""
    out = []
    for sec in table["sections"]:
        for r in sec["rows"]:
            for c in table["columns"]:
                if not c["metric"]:
                    continue
                v = r["cells"].get(c["key"])
                out.append({"table": table["name"], "section": sec["title"], "kind": r["kind"],
                            "data": sec["data"] if sec["data"] is not None else "", "protocol": sec["protocol"],
                            "method": _csv_method(r["cells"]),
                            "arch": _blank(r["cells"].get("arch")), "batch": _blank(r["cells"].get("batch")),
                            "epochs": _blank(r["cells"].get("epochs")), "metric": c["md"],
                            "value": "" if v is None else v, "emphasis": r["emph"].get(c["key"], ""),
                            "variant": r["variant"].get(c["key"], ""), "ranked": int(bool(r["rank"])),
                            "source": r["source"]})
    return out


def _csv_method(cells: Dict[str, Any]) -> str:
    m, s = cells.get("method") or "", cells.get("setting")
    return f"{m} — {s}" if s else str(m)


def _blank(v: Any) -> Any:
    return "" if v is None else v
