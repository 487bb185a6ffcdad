"""Published rows: one YAML file per paper table in configs/baselines/ -> table sections."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml

from excb import ExcbError

from benchmarks.leaderboard.defaults import REPO_ROOT
from benchmarks.leaderboard.layouts import LAYOUTS, REQUIRED_ROW_KEYS, Layout
from benchmarks.leaderboard.sections import new_section, table_row
from benchmarks.leaderboard.util import _num


# ----------------------------------------------------------------------------- baselines
def default_baselines_dir() -> Path:
    return REPO_ROOT / "configs" / "baselines"


def load_baselines(files: Sequence[Path]) -> List[Dict[str, Any]]:
    """Read baseline YAML files -> flat list of row dicts, each with its ``table`` and file."""
    rows: List[Dict[str, Any]] = []
    for path in files:
        path = Path(path)
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ExcbError(f"{path}: baseline file not found; see configs/baselines/") from e
        except yaml.YAMLError as e:
            raise ExcbError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
        if not isinstance(doc, dict) or "table" not in doc or not isinstance(doc.get("rows"), list):
            raise ExcbError(f"{path}: a baseline file needs 'table: <name>' and 'rows: [...]' (see table1_r50_imagenet.yaml)")
        table = doc["table"]
        if table not in LAYOUTS:
            raise ExcbError(f"{path}: unknown table '{table}'; known tables: {', '.join(LAYOUTS)}")
        protocols = doc.get("protocols") or {}
        for i, r in enumerate(doc["rows"]):
            if not isinstance(r, dict):
                raise ExcbError(f"{path}: row {i} is not a mapping")
            missing = [k for k in REQUIRED_ROW_KEYS if k not in r]
            if missing:
                raise ExcbError(f"{path}: row {i} ({r.get('method', '?')}) lacks key(s) {', '.join(missing)}; "
                                f"every row needs {', '.join(REQUIRED_ROW_KEYS)} (null for '–')")
            if not isinstance(r["metrics"], dict):
                raise ExcbError(f"{path}: row {i} ({r['method']}): 'metrics' must be a mapping of metric -> number or null")
            for k, v in r["metrics"].items():
                if v is not None and _num(v) is None:
                    raise ExcbError(f"{path}: row {i} ({r['method']}): metric '{k}' = {v!r} is not a number "
                                    f"(use null for '–')")
            row = dict(r)
            row["table"] = table
            row["file"] = str(path)
            row["protocol_text"] = protocols.get(r["protocol"], r["protocol"])
            rows.append(row)
    return rows


def baseline_files(cfg: Dict[str, Any]) -> List[Path]:
    d = Path(cfg["baselines_dir"]) if cfg["baselines_dir"] else default_baselines_dir()
    if cfg["baseline_files"]:
        return [Path(f) if Path(f).is_absolute() else d / f for f in cfg["baseline_files"]]
    if not d.is_dir():
        raise ExcbError(f"leaderboard.baselines_dir: {d} is not a directory; point it at configs/baselines")
    return sorted(d.glob("*.yaml"))


def _published_sections(layout: Layout, rows: List[Dict[str, Any]], cfg: Dict[str, Any]) -> List[Dict[str, Any]]:
    sections: Dict[Tuple, Dict[str, Any]] = {}
    order: List[Tuple] = []
    for r in rows:
        key = (r["data"], r["protocol"]) + tuple(r.get(f) for f in layout.section_by)
        if key not in sections:
            extra = []
            for f in layout.section_by:
                v = r.get(f)
                if f == "multi_crop":
                    extra.append("with multi-crop" if v else "without multi-crop")
                elif v is not None:
                    extra.append(str(v))
            paper = str(r["source"].get("paper", "")) if isinstance(r["source"], dict) else str(r["source"])
            label = cfg["data_labels"].get(str(r["data"]), str(r["data"]))
            title = " · ".join([label, *extra, f"published ({paper})" if paper else "published"])
            sections[key] = new_section(title, "published", r["data"], r["protocol_text"])
            order.append(key)
        sec = sections[key]
        if layout.pivot:
            field_, metric = layout.pivot
            ident = (r["method"], r.get("batch"))
            existing = next((x for x in sec["rows"] if x.get("_ident") == ident), None)
            if existing is None:
                existing = table_row({"method": r["method"], "arch": r.get("arch"), "batch": r.get("batch")},
                                rank=not r.get("reference", False), source=_source_text(r), note=r.get("note"))
                existing["_ident"] = ident
                sec["rows"].append(existing)
            existing["cells"][f"{field_}={r.get(field_)}"] = _num(r["metrics"].get(metric))
        else:
            cells = {c.key: r.get(c.key) for c in layout.columns if not c.metric}
            cells["method"] = r["method"]
            for c in layout.columns:
                if c.metric:
                    cells[c.key] = _num(r["metrics"].get(c.key))
            sec["rows"].append(table_row(cells, rank=not r.get("reference", False), source=_source_text(r),
                                    note=r.get("note")))
    out = [sections[k] for k in order]
    for sec in out:
        notes = []
        for row in sec["rows"]:
            row.pop("_ident", None)
            if row["note"] and row["note"] not in notes:
                notes.append(row["note"])
        sec["notes"] = [f"* {n}" for n in notes]
        if any(not r["rank"] for r in sec["rows"]):
            sec["notes"].append("Reference rows (Supervised) are not ranked.")
    return out


def _source_text(r: Dict[str, Any]) -> str:
    s = r.get("source")
    if isinstance(s, dict):
        return "; ".join(str(v) for v in (s.get("paper"), s.get("cite") or s.get("cite_elsewhere")) if v)
    return str(s or "")
