"""The measured-vs-published table: for every measured row that has a published counterpart, the
measured number, the published one and Δ = measured − published side by side, per metric.

Published counterparts, first match wins:
1. the zoo entry a row was measured from (``checkpoint.zoo.name`` in its results.json; numbers
   and sources in configs/zoo.yaml);
2. a baseline row of ``table: zoo`` (configs/baselines/) with the same method label — the demo's
   reference run lives there;
3. for "ours": the zoo's entry of the same method, architecture and epochs.

Δ is computed only when the published number is on the same data set (ImageNet is recognised by
name or by its 1,281,167 / 50,000 split sizes); otherwise the cell says so. Nothing in this
table is ranked or bolded: it compares each row with its own published number only.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from benchmarks.leaderboard.layouts import Column, is_vit_arch
from benchmarks.leaderboard.provenance import TRUST_MARK, row_provenance, trusted
from benchmarks.leaderboard.sections import _data_key, _data_title, new_section, table_row
from benchmarks.leaderboard.util import _num, metric_percent, parse_source

TITLE = "Measured vs published — each row against its own published number (Δ = measured − published)"
# every metric a zoo entry publishes; a table shows the columns of the metrics it measured
METRICS = (("knn_top1", "k-NN"), ("linear_top1", "Linear"),
           ("semisup_1_top1", "1 % top-1"), ("semisup_1_top5", "1 % top-5"),
           ("semisup_10_top1", "10 % top-1"), ("semisup_10_top5", "10 % top-5"),
           ("ap_box", "AP box"), ("ap50_box", "AP50 box"), ("ap75_box", "AP75 box"),
           ("ap_mask", "AP mask"), ("ap50_mask", "AP50 mask"), ("ap75_mask", "AP75 mask"))
DEFAULT_METRICS = ("knn_top1", "linear_top1")
IMAGENET_SIZES = (1281167, 50000)
NOT_COMPARABLE = "≠ data"


def columns(measured: Optional[Sequence[str]] = None) -> List[Column]:
    """Row facts, then measured / published / Δ for each metric in ``measured`` (default k-NN, linear)."""
    keep = set(measured or DEFAULT_METRICS)
    cols = [Column("method", "Method", "Method"), Column("arch", "Arch", "Arch"),
            Column("epochs", "Epochs", "Epochs"), Column("batch", "Batch", "Batch")]
    for key, name in METRICS:
        if key not in keep:
            continue
        cols += [Column(key, f"{name}", f"{name}", True), Column(f"{key}@pub", f"{name} pub.", f"{name} pub.", True),
                 Column(f"{key}@delta", f"Δ {name}", rf"$\Delta$ {name}", True)]
    cols.append(Column("published_source", "Published in", "Published in"))
    return cols


def same_data(measured: Tuple[Any, Any, Any], published: Optional[str], sizes: Optional[Sequence[int]] = None) -> bool:
    name, n_train, n_val = measured
    if not published:
        return False
    if sizes and (n_train, n_val) != tuple(sizes):
        return False
    if str(name) == str(published):
        return True
    return published == "imagenet" and (n_train, n_val) == IMAGENET_SIZES


def _published(mr: Dict[str, Any], metric: str, baselines: Sequence[Dict[str, Any]], cfg: Dict[str, Any]
               ) -> Optional[Tuple[float, str, str, Optional[Sequence[int]]]]:
    entry = mr.get("zoo")
    if entry is not None:
        hit = entry.published_value(metric)
        if hit:
            return hit[0], hit[1], hit[2], None
    for b in baselines:
        if b.get("table") == "zoo" and b.get("method") == mr["method"]:
            v = _num((b.get("metrics") or {}).get(metric))
            if v is not None:
                src = b["source"].get("paper") if isinstance(b.get("source"), dict) else b.get("source")
                return v, str(src or ""), str(b.get("data")), b.get("data_sizes")
    if mr.get("kind") == "ours":
        from excb import ExcbError, zoo

        try:
            entries = zoo.load_registry().values()
        except ExcbError:
            entries = []
        for e in entries:
            if e.method == cfg["method_name"] and e.arch == mr.get("arch") and e.epochs == mr.get("epochs"):
                hit = e.published_value(metric)
                if hit:
                    return hit[0], hit[1], hit[2], None
    return None


def build_comparison(measured_rows: Sequence[Dict[str, Any]], baselines: Sequence[Dict[str, Any]],
                     cfg: Dict[str, Any]) -> Dict[str, Any]:
    sources = {key: parse_source(cfg["metric_sources"][key]) for key, _ in METRICS}
    sections: Dict[Tuple, Dict[str, Any]] = {}
    order: List[Tuple] = []
    for mr in measured_rows:
        per_data: Dict[Tuple, Dict[str, Any]] = {}
        for key, _ in METRICS:
            stage, keys = sources[key]
            res = mr["stages"].get(stage)
            if res is None:
                continue
            v = metric_percent(res, keys)
            if v is None:
                continue
            per_data.setdefault(_data_key(res), {})[key] = (v * float(cfg["measured_scale"]), stage)
        for dk, vals in per_data.items():
            pubs = {key: _published(mr, key, baselines, cfg) for key in vals}
            if not any(pubs.values()):
                continue   # not a baseline with a published number
            if dk not in sections:
                sections[dk] = new_section(f"{_data_title(dk, cfg['data_labels'])} · measured vs published",
                                           "comparison", dk[0], "measured: per row in the notes; published: as in "
                                                                "its source")
                sections[dk]["provenance"] = []
                order.append(dk)
            method = mr["method"] + (f" {TRUST_MARK}" if trusted(mr) else "")
            cells: Dict[str, Any] = {"method": method, "arch": mr.get("arch"), "epochs": mr.get("epochs"),
                                     "batch": mr.get("batch")}
            srcs = []
            for key, (v, _stage) in vals.items():
                cells[key] = v
                pub = pubs.get(key)
                if pub is None:
                    continue
                pv, src, pdata, sizes = pub
                cells[f"{key}@pub"] = pv
                if same_data(dk, pdata, sizes):
                    cells[f"{key}@delta"] = f"{v - pv:+.1f}"
                else:
                    cells[f"{key}@delta"] = NOT_COMPARABLE
                    sections[dk].setdefault("mismatch", set()).add(pdata)
                if src not in srcs:
                    srcs.append(src)
            cells["published_source"] = "; ".join(srcs)
            row = table_row(cells, rank=False, source=mr.get("source", ""), kind=mr.get("kind", "measured"))
            sections[dk]["rows"].append(row)
            sections[dk]["provenance"].append(f"{method}: {row_provenance(mr, only=sorted({s for _, s in vals.values()}))}")
    out = []
    for dk in order:
        sec = sections[dk]
        sec["notes"] += [f"Provenance — {p}" for p in sec.pop("provenance")]
        mismatch = sec.pop("mismatch", set())
        if mismatch:
            sec["notes"].append(f"{NOT_COMPARABLE}: the published number is on {', '.join(sorted(map(str, mismatch)))}, "
                                f"this row on {_data_title(dk, cfg['data_labels'])}; no Δ across data sets.")
        if any(r["kind"] != "eval" for r in sec["rows"]):
            sec["notes"].append("Rows are not ranked: each is compared with its own published number only.")
        out.append(sec)
    measured = [key for key, _ in METRICS
                if any(row["cells"].get(key) is not None for sec in out for row in sec["rows"])]
    cols = columns(measured)
    for sec in out:
        for row in sec["rows"]:
            for c in cols:
                row["cells"].setdefault(c.key, None)
    return {"name": "zoo", "title": TITLE, "columns": [vars(c) for c in cols], "sections": out}


__all__ = ["build_comparison", "same_data", "columns", "TITLE", "NOT_COMPARABLE", "is_vit_arch"]
