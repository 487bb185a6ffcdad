"""Measured sections: one per data set, protocol variants labelled, best/second marked."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from excb.config import flatten

from benchmarks.leaderboard.layouts import Layout, is_vit_arch
from benchmarks.leaderboard.provenance import TRUST_MARK, row_provenance, trusted
from benchmarks.leaderboard.util import metric_percent, parse_source


def protocol_fingerprint(protocol: Any, ignore: Sequence[str]) -> Tuple[Tuple[str, str], ...]:
    """The hyperparameters that change what a number means, as a hashable sorted tuple."""
    if not isinstance(protocol, dict):
        return ()
    ign = set(ignore)
    items = []
    for k, v in flatten(protocol).items():
        if any(part in ign for part in k.split(".")):
            continue
        items.append((k, repr(v)))
    return tuple(sorted(items))


def _data_key(res: Dict[str, Any]) -> Tuple[Any, Any, Any]:
    d = res.get("data") or {}
    return (d.get("name"), d.get("n_train"), d.get("n_val"))


def _data_title(key: Tuple[Any, Any, Any], labels: Dict[str, str]) -> str:
    name, n_train, n_val = key
    base = labels.get(str(name), str(name)) if name is not None else "unknown data"
    sizes = []
    if n_train is not None:
        sizes.append(f"{n_train} train")
    if n_val is not None:
        sizes.append(f"{n_val} val")
    return base + (f" ({' / '.join(sizes)})" if sizes else "")


def new_section(title: str, kind: str, data: Any, protocol: str) -> Dict[str, Any]:
    return {"title": title, "kind": kind, "data": data, "protocol": protocol, "rows": [], "notes": []}


def table_row(cells: Dict[str, Any], *, rank: bool = True, source: str = "", note: Optional[str] = None,
         kind: str = "published", variant: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    return {"cells": cells, "emph": {}, "variant": variant or {}, "rank": rank, "source": source,
            "note": note, "kind": kind}


def _measured_sections(layout: Layout, rows: List[Dict[str, Any]], cfg: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One section per data set; one table row per (measured row, data set) with any value."""
    metrics = [c for c in layout.columns if c.metric and c.key in layout.measured]
    if not metrics:
        return []
    sources = {c.key: parse_source(cfg["metric_sources"][c.key]) for c in metrics}
    sections: Dict[Tuple, Dict[str, Any]] = {}
    fps: Dict[Tuple, Dict[str, Dict[Tuple, str]]] = {}   # section -> column -> fingerprint -> letter
    diffs: Dict[Tuple, Dict[str, Dict[str, Dict]]] = {}
    order: List[Tuple] = []
    scale = float(cfg["measured_scale"])
    for mr in rows:
        if layout.vit is not None and is_vit_arch(mr.get("arch")) != layout.vit:
            continue   # ViT rows go to the ViT table, the others to the ResNet tables
        per_data: Dict[Tuple, Dict[str, Any]] = {}
        for c in metrics:
            stage, keys = sources[c.key]
            res = mr["stages"].get(stage)
            if res is None:
                continue
            v = metric_percent(res, keys)
            if v is None:
                continue
            dk = _data_key(res)
            fp = protocol_fingerprint(res.get("protocol"), cfg["protocol_ignore_keys"])
            per_data.setdefault(dk, {})[c.key] = (v * scale, stage, fp, res.get("protocol"))
        for dk, vals in per_data.items():
            if dk not in sections:
                title = f"{_data_title(dk, cfg['data_labels'])} · measured"
                sections[dk] = new_section(title, "measured", dk[0], "as recorded in each results.json")
                fps[dk], diffs[dk] = {}, {}
                order.append(dk)
            cells = {c.key: mr.get(c.key) for c in layout.columns if not c.metric}
            cells["method"] = mr["method"] + (f" {TRUST_MARK}" if trusted(mr) else "")
            used = sorted({stage for _, stage, _, _ in vals.values()})
            sections[dk].setdefault("provenance", []).append(f"{cells['method']}: {row_provenance(mr, only=used)}")
            variant_fp = {}
            for key, (v, stage, fp, proto) in vals.items():
                cells[key] = v
                variant_fp[key] = (stage, fp)
                diffs[dk].setdefault(stage, {})[fp] = proto
            for c in metrics:
                cells.setdefault(c.key, None)
            row = table_row(cells, source=mr.get("source", ""), kind=mr.get("kind", "measured"))
            for stage in sorted({st for _, st, _, _ in vals.values()}):   # data.on_error=skip dropped images
                sk = (mr["stages"][stage].get("data") or {}).get("skipped") or {}
                if sk.get("count"):
                    sections[dk]["notes"].append(
                        f"{mr['method']}, {stage}: {sk['count']} unreadable image(s) skipped (data.on_error=skip), "
                        f"e.g. {', '.join(sk.get('first', [])[:3])}.")
            row["_fp"] = variant_fp
            sections[dk]["rows"].append(row)
    out = []
    for dk in order:
        sec = sections[dk]
        # label protocol variants per stage where a section holds more than one
        letters: Dict[str, Dict[Tuple, str]] = {}
        for stage, protos in diffs[dk].items():
            if len(protos) > 1:
                letters[stage] = {fp: chr(ord("a") + i) for i, fp in enumerate(protos)}
                sec["notes"].append(_variant_note(stage, protos, letters[stage]))
        for row in sec["rows"]:
            for key, (stage, fp) in row.pop("_fp").items():
                if stage in letters:
                    row["variant"][key] = letters[stage][fp]
        sec["notes"] += [f"Provenance — {p}" for p in sec.pop("provenance", [])]
        if any(TRUST_MARK in str(r["cells"].get("method")) for r in sec["rows"]):
            sec["notes"].append(f"{TRUST_MARK} checkpoint loaded with --trust-checkpoint (full unpickle of a file "
                                f"the user vouched for)")
        if any(r["kind"] == "sanity" for r in sec["rows"]):
            sec["notes"].append("Sanity rows: a random-initialised backbone and k-NN on raw pixels, same data and "
                                "protocol; on small data sets they are strong baselines.")
        out.append(sec)
    return out


def _variant_note(stage: str, protos: Dict[Tuple, Any], letters: Dict[Tuple, str]) -> str:
    dicts = {fp: dict(fp) for fp in protos}
    keys = sorted(set().union(*[set(d) for d in dicts.values()]))
    differing = [k for k in keys if len({dicts[fp].get(k) for fp in dicts}) > 1]
    parts = []
    for fp, letter in letters.items():
        desc = ", ".join(f"{k}={dicts[fp].get(k, '–')}" for k in differing) or "same keys"
        parts.append(f"({letter}) {desc}")
    return f"{stage}: protocols differ, ranked separately — " + "; ".join(parts)


def mark_best(section: Dict[str, Any], metric_keys: Sequence[str]) -> None:
    """Bold the best and underline the second best value per column, within comparable cells.

    Comparable = same section, same protocol variant, row ranked; ties share the mark; a
    column needs at least two ranked values to mark anything.
    """
    for key in metric_keys:
        groups: Dict[Optional[str], List[Tuple[float, Dict]]] = {}
        for row in section["rows"]:
            v = row["cells"].get(key)
            if row["rank"] and isinstance(v, (int, float)) and not isinstance(v, bool):
                groups.setdefault(row["variant"].get(key), []).append((float(v), row))
        for members in groups.values():
            if len(members) < 2:
                continue
            distinct = sorted({round(v, 9) for v, _ in members}, reverse=True)
            for v, row in members:
                if round(v, 9) == distinct[0]:
                    row["emph"][key] = "best"
                elif len(distinct) > 1 and round(v, 9) == distinct[1]:
                    row["emph"][key] = "second"
