"""Leaderboard: the paper's published rows + rows measured in run directories -> Markdown / LaTeX / CSV.

Two inputs:

* published rows, one YAML file per paper table in ``configs/baselines/`` (``table: <name>``,
  ``rows: [{method, arch, batch, epochs, multi_crop?, protocol, data, metrics: {...}, source}]``);
* measured rows, read from run directories (layout below; every path is a config key)::

      <run>/pretrain/results.json          batch, epochs, arch, multi-crop of "ExCB (ours)"
      <run>/<stage>/results.json           stage in knn, linear, semisup_1, semisup_10, detect
      <run>/sanity_random/<stage>/results.json   random-initialised backbone (sanity row)
      <run>/sanity_pixels/<stage>/results.json   k-NN on raw pixels (sanity row)
      <run>/eval_<name>/<stage>/results.json     third-party checkpoints (``excb-bench eval``);
      <run>/eval_<name>/label.txt | eval.json {"label": ...}   the row's name (else <name>)

Rows are only compared with *comparable* rows: every table is split into sections, one per
(data set, protocol) — published ImageNet/COCO rows never share a section with rows measured
on the demo data. Inside a measured section, cells of one column whose stage protocol differs
(e.g. k-NN with k=20 vs k=10) get variant labels (a), (b) explained in the section notes, and
best (bold) / second best (underlined) are chosen within each variant only. Rows marked
``reference: true`` (the supervised rows) are shown but never ranked.

``build_tables(baseline_rows, measured_rows)`` is pure (dicts in, dicts out) and
``render(table, fmt)`` turns one table into text, so both can be tested cell by cell.
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import yaml

from excb import ExcbError
from excb.config import flatten, resolve_config
from excb.io import atomic_write_json, atomic_write_text, package_versions, read_json

REPO_ROOT = Path(__file__).resolve().parent.parent
STAGES = ("knn", "linear", "semisup_1", "semisup_10", "detect")

DEFAULTS: Dict[str, Any] = {
    "baselines_dir": "",            # "" -> <repo>/configs/baselines
    "baseline_files": [],           # [] -> every *.yaml in baselines_dir
    "runs": [],                     # run directories; [] -> the parent of this stage's folder
    "tables": ["table1", "table2", "table3", "table4", "table5", "ablations"],
    "paths": {                      # relative to a run directory (or to an eval_/sanity_ folder)
        "pretrain": "pretrain/results.json",
        "stages": {s: f"{s}/results.json" for s in STAGES},
        "sanity": {"random": "sanity_random", "pixels": "sanity_pixels"},
        "eval_glob": "eval_*",
        "eval_label_files": ["label.txt", "label.json", "eval.json", "meta.json"],
    },
    # Where a measured table column comes from: "stage:key|fallback|..." (dotted keys into
    # results.json "metrics"; the first present wins).
    "metric_sources": {
        "knn_top1": "knn:top1|knn_top1|acc1|top1_k20",
        "linear_top1": "linear:top1|linear_top1|acc1",
        "semisup_1_top1": "semisup_1:top1|acc1",
        "semisup_1_top5": "semisup_1:top5|acc5",
        "semisup_10_top1": "semisup_10:top1|acc1",
        "semisup_10_top5": "semisup_10:top5|acc5",
        "ap_box": "detect:bbox.AP|ap_box|AP_box|box_AP",
        "ap50_box": "detect:bbox.AP50|ap50_box|AP50_box",
        "ap75_box": "detect:bbox.AP75|ap75_box|AP75_box",
        "ap_mask": "detect:segm.AP|ap_mask|AP_mask|mask_AP",
        "ap50_mask": "detect:segm.AP50|ap50_mask|AP50_mask",
        "ap75_mask": "detect:segm.AP75|ap75_mask|AP75_mask",
    },
    # Row facts of "ours" from <run>/pretrain/results.json ("a|b": first present wins).
    "pretrain_keys": {
        "batch": "protocol.batch_size",
        "epochs": "metrics.epochs_done|protocol.epochs",
        "arch": "protocol.backbone.name",
        "n_local": "protocol.augment.n_local",
    },
    "eval_arch_keys": "checkpoint.arch|protocol.arch|protocol.backbone.name|protocol.backbone",
    # Protocol keys that do not change what a number means (paths, workers, seeds, the
    # backbone under test itself); any dotted component matching drops the key.
    "protocol_ignore_keys": ["data", "checkpoint", "format", "which", "arch", "backbone", "features",
                             "feature_source", "init", "sanity", "label", "num_workers", "device", "seed",
                             "pin_memory", "cache", "cache_dir", "output_dir", "run_dir", "progress",
                             "log_every", "resume", "extract_batch_size", "world_size", "amp", "recipe"],
    "measured_scale": 1.0,          # multiply measured metrics (e.g. 100 if a stage wrote fractions)
    "method_name": "ExCB",
    "sanity_labels": {"random": "Random init (sanity)", "pixels": "Raw pixels (sanity)"},
    "data_labels": {"imagenet": "ImageNet", "coco": "COCO", "demo": "demo: Fashion-MNIST subset",
                    "imagefolder": "ImageFolder"},
    "decimals": 1,
    "markdown": {"bold": ["**", "**"], "underline": ["<u>", "</u>"]},
}


# ----------------------------------------------------------------------------- layouts
def latex_escape(s: Any) -> str:
    """Escape LaTeX's special characters in plain text."""
    rep = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
           "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(rep.get(ch, ch) for ch in str(s))


@dataclass
class Column:
    key: str
    md: str                       # header in Markdown / CSV
    tex: str                      # header in LaTeX (raw)
    metric: bool = False


@dataclass
class Layout:
    """How one paper table looks: its columns and how its rows split into sections."""

    title: str
    columns: List[Column]
    pivot: Optional[Tuple[str, str]] = None     # (row field, metric): one column per value of field
    section_by: Tuple[str, ...] = ()            # extra row fields that split published sections
    measured: Tuple[str, ...] = ()              # metric keys measured rows can fill ("" = none)
    method_col: str = "Method"


def _c(key: str, md: str, tex: Optional[str] = None, metric: bool = False) -> Column:
    return Column(key, md, tex if tex is not None else latex_escape(md), metric)


_META = [_c("method", "Method"), _c("arch", "Arch"), _c("batch", "Batch"), _c("epochs", "Epochs")]
AP_COLS = [_c("ap_box", "AP^b", "AP$^{b}$", True), _c("ap50_box", "AP^b_50", "AP$^{b}_{50}$", True),
           _c("ap75_box", "AP^b_75", "AP$^{b}_{75}$", True), _c("ap_mask", "AP^m", "AP$^{m}$", True),
           _c("ap50_mask", "AP^m_50", "AP$^{m}_{50}$", True), _c("ap75_mask", "AP^m_75", "AP$^{m}_{75}$", True)]

LAYOUTS: Dict[str, Layout] = {
    "table1": Layout("Table 1 — Linear & k-NN classification (top-1 %)",
                     _META + [_c("linear_top1", "Linear", metric=True), _c("knn_top1", "k-NN", metric=True)],
                     measured=("linear_top1", "knn_top1")),
    "table2": Layout("Table 2 — Linear classification with ViT-S/16 (top-1 %) by pretraining epochs",
                     [_c("method", "Method"), _c("batch", "Batch")], pivot=("epochs", "linear_top1")),
    "table3": Layout("Table 3 — Linear classification, ResNet-50 (top-1 %) by pretraining epochs",
                     [_c("method", "Method"), _c("batch", "Batch")], pivot=("epochs", "linear_top1"),
                     section_by=("multi_crop",)),
    "table4": Layout("Table 4 — Semi-supervised fine-tuning (1 % / 10 % labels)",
                     _META + [_c("semisup_1_top1", "1% Top-1", metric=True), _c("semisup_1_top5", "1% Top-5", metric=True),
                              _c("semisup_10_top1", "10% Top-1", metric=True),
                              _c("semisup_10_top5", "10% Top-5", metric=True)],
                     measured=("semisup_1_top1", "semisup_1_top5", "semisup_10_top1", "semisup_10_top5")),
    "table5": Layout("Table 5 — Object detection & instance segmentation (Mask R-CNN R50-C4, 1x)",
                     _META + AP_COLS, measured=tuple(c.key for c in AP_COLS)),
    "ablations": Layout("Tables 6–8 — Ablations (ResNet-50, 100 epochs, linear top-1 %)",
                        [_c("setting", "Setting"), _c("batch", "Batch"), _c("linear_top1", "Linear", metric=True)],
                        section_by=("ablation",)),
}

REQUIRED_ROW_KEYS = ("method", "arch", "batch", "epochs", "protocol", "data", "metrics", "source")


# ----------------------------------------------------------------------------- small helpers
def _get_path(obj: Any, dotted: str) -> Any:
    cur = obj
    for part in dotted.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            return None
    return cur


def first_present(obj: Any, alternatives: str) -> Any:
    """Value of the first of ``"a.b|c|d"`` that exists (and is not None) in ``obj``."""
    for alt in alternatives.split("|"):
        v = _get_path(obj, alt.strip())
        if v is not None:
            return v
    return None


def parse_source(spec: str) -> Tuple[str, str]:
    if ":" not in spec:
        raise ExcbError(f"leaderboard.metric_sources: '{spec}' must be 'stage:key|fallback', e.g. 'knn:top1|acc1'")
    stage, keys = spec.split(":", 1)
    return stage.strip(), keys


def _num(v: Any) -> Optional[float]:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    return None


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


# ----------------------------------------------------------------------------- measured rows
def _read_results(path: Path, warnings: List[str]) -> Optional[Dict[str, Any]]:
    if not path.is_file():
        return None
    try:
        res = read_json(path)
    except ExcbError as e:
        warnings.append(str(e))
        return None
    if not isinstance(res, dict) or not isinstance(res.get("metrics"), dict):
        warnings.append(f"{path}: no 'metrics' mapping; ignored")
        return None
    status = res.get("status")
    if status not in (None, "complete", "completed", "ok", "done"):
        warnings.append(f"{path}: status '{status}' (shown anyway)")
    return res


def _stages_in(folder: Path, cfg: Dict[str, Any], warnings: List[str]) -> Dict[str, Dict[str, Any]]:
    out = {}
    for stage, rel in cfg["paths"]["stages"].items():
        res = _read_results(folder / rel, warnings)
        if res is not None:
            out[stage] = res
    return out


def _eval_label(folder: Path, stages: Dict[str, Dict[str, Any]], cfg: Dict[str, Any]) -> str:
    for name in cfg["paths"]["eval_label_files"]:
        p = folder / name
        if not p.is_file():
            continue
        if p.suffix == ".json":
            try:
                lab = read_json(p).get("label")
            except (ExcbError, AttributeError):
                lab = None
        else:
            lab = p.read_text(encoding="utf-8").strip().splitlines()[0:1]
            lab = lab[0].strip() if lab else None
        if lab:
            return str(lab)
    for res in stages.values():
        lab = res.get("label") or _get_path(res, "checkpoint.label")
        if lab:
            return str(lab)
    name = folder.name
    return name[len("eval_"):] if name.startswith("eval_") and len(name) > 5 else name


def _labelled_rows(ours: Dict[str, Any], tag: str) -> List[Dict[str, Any]]:
    """Stages of ``<run>/<stage>`` that recorded a checkpoint label (e.g. ``detect`` given a
    torchvision file) are not ours: move them out of the ours row into rows of their own."""
    out: Dict[str, Dict[str, Any]] = {}
    for stage, res in list(ours["stages"].items()):
        lab = _get_path(res, "checkpoint.label")
        if lab:
            row = out.setdefault(str(lab), {**ours, "method": str(lab) + (f" ({tag[2:]})" if tag else ""),
                                            "kind": "eval", "batch": None, "epochs": None, "multi_crop": None,
                                            "arch": _get_path(res, "checkpoint.arch"), "stages": {}})
            row["stages"][stage] = ours["stages"].pop(stage)
    return list(out.values())


def collect_measured(runs: Sequence[Path], cfg: Dict[str, Any], warnings: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """Measured rows of every run directory: ours, sanity rows, third-party evaluations.

    A row is ``{"method", "kind" (ours|sanity|eval), "arch", "batch", "epochs", "multi_crop",
    "run", "source", "stages": {stage: results dict}}``; rows without any stage result are dropped.
    """
    warnings = warnings if warnings is not None else []
    rows: List[Dict[str, Any]] = []
    runs = [Path(r) for r in runs]
    for run in runs:
        if not run.is_dir():
            warnings.append(f"{run}: run directory not found; skipped")
            continue
        tag = "" if len(runs) == 1 else f", {run.name}"
        pre = _read_results(run / cfg["paths"]["pretrain"], warnings) or {}
        pk = cfg["pretrain_keys"]
        n_local = first_present(pre, pk["n_local"])
        arch = first_present(pre, pk["arch"])
        ours = {"method": f"{cfg['method_name']} (ours{tag})", "kind": "ours", "arch": arch,
                "batch": first_present(pre, pk["batch"]), "epochs": first_present(pre, pk["epochs"]),
                "multi_crop": (n_local > 0) if isinstance(n_local, (int, float)) else None,
                "run": str(run), "source": f"measured: {run}", "stages": _stages_in(run, cfg, warnings)}
        rows.append(ours)
        rows += _labelled_rows(ours, tag)
        for kind, rel in cfg["paths"]["sanity"].items():
            folder = run / rel
            stages = _stages_in(folder, cfg, warnings)
            label = cfg["sanity_labels"].get(kind, f"{kind} (sanity)")
            if tag:
                label = label[:-1] + f"{tag})" if label.endswith(")") else label + f" ({run.name})"
            rows.append({"method": label, "kind": "sanity", "sanity": kind,
                         "arch": "raw pixels" if kind == "pixels" else arch, "batch": None, "epochs": None,
                         "multi_crop": None, "run": str(run), "source": f"measured: {folder}", "stages": stages})
        for folder in sorted(p for p in run.glob(cfg["paths"]["eval_glob"]) if p.is_dir()):
            stages = _stages_in(folder, cfg, warnings)
            label = _eval_label(folder, stages, cfg)
            arch = None
            for res in stages.values():
                a = first_present(res, cfg["eval_arch_keys"])
                if isinstance(a, str):
                    arch = a
                    break
            rows.append({"method": label + (f" ({run.name})" if tag else ""), "kind": "eval", "arch": arch,
                         "batch": None, "epochs": None, "multi_crop": None, "run": str(run),
                         "source": f"measured: {folder}", "stages": stages})
    return [r for r in rows if r["stages"]]


# ----------------------------------------------------------------------------- building tables
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


def _new_section(title: str, kind: str, data: Any, protocol: str) -> Dict[str, Any]:
    return {"title": title, "kind": kind, "data": data, "protocol": protocol, "rows": [], "notes": []}


def _row(cells: Dict[str, Any], *, rank: bool = True, source: str = "", note: Optional[str] = None,
         kind: str = "published", variant: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    return {"cells": cells, "emph": {}, "variant": variant or {}, "rank": rank, "source": source,
            "note": note, "kind": kind}


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
            sections[key] = _new_section(title, "published", r["data"], r["protocol_text"])
            order.append(key)
        sec = sections[key]
        if layout.pivot:
            field_, metric = layout.pivot
            ident = (r["method"], r.get("batch"))
            existing = next((x for x in sec["rows"] if x.get("_ident") == ident), None)
            if existing is None:
                existing = _row({"method": r["method"], "arch": r.get("arch"), "batch": r.get("batch")},
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
            sec["rows"].append(_row(cells, rank=not r.get("reference", False), source=_source_text(r),
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
        per_data: Dict[Tuple, Dict[str, Any]] = {}
        for c in metrics:
            stage, keys = sources[c.key]
            res = mr["stages"].get(stage)
            if res is None:
                continue
            v = _num(first_present(res.get("metrics", {}), keys))
            if v is None:
                continue
            if str(res.get("metrics", {}).get("units", "")).lower() == "fraction":
                v *= 100.0
            dk = _data_key(res)
            fp = protocol_fingerprint(res.get("protocol"), cfg["protocol_ignore_keys"])
            per_data.setdefault(dk, {})[c.key] = (v * scale, stage, fp, res.get("protocol"))
        for dk, vals in per_data.items():
            if dk not in sections:
                title = f"{_data_title(dk, cfg['data_labels'])} · measured"
                sections[dk] = _new_section(title, "measured", dk[0], "as recorded in each results.json")
                fps[dk], diffs[dk] = {}, {}
                order.append(dk)
            cells = {c.key: mr.get(c.key) for c in layout.columns if not c.metric}
            cells["method"] = mr["method"]
            variant_fp = {}
            for key, (v, stage, fp, proto) in vals.items():
                cells[key] = v
                variant_fp[key] = (stage, fp)
                diffs[dk].setdefault(stage, {})[fp] = proto
            for c in metrics:
                cells.setdefault(c.key, None)
            row = _row(cells, source=mr.get("source", ""), kind=mr.get("kind", "measured"))
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


# ----------------------------------------------------------------------------- rendering
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


def render(table: Dict[str, Any], fmt: str, cfg: Optional[Dict[str, Any]] = None) -> str:
    """One built table as ``md`` (a pipe table per section), ``tex`` (booktabs) or ``csv``
    (tidy: one line per row and metric, header included)."""
    cfg = resolve_config(DEFAULTS, base=cfg) if cfg is not None else DEFAULTS
    if fmt not in RENDERERS:
        raise ExcbError(f"leaderboard: unknown format '{fmt}'; use one of {', '.join(RENDERERS)}")
    return RENDERERS[fmt](table, cfg)


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


def _render_tex(table: Dict[str, Any], cfg: Dict[str, Any]) -> str:
    cols = table["columns"]
    n = len(cols)
    spec = "".join("l" if c["key"] in ("method", "arch", "setting") else "r" for c in cols)
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{latex_escape(table['title'])}}}", rf"\label{{tab:excb-{table['name']}}}",
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


RENDERERS: Dict[str, Callable[[Dict[str, Any], Dict[str, Any]], str]] = {
    "md": _render_md, "tex": _render_tex, "csv": _render_csv}


def render_all(tables: Dict[str, Dict[str, Any]], fmt: str, cfg: Optional[Dict[str, Any]] = None) -> str:
    parts = [render(t, fmt, cfg) for t in tables.values()]
    if fmt == "csv":   # one header for the whole file
        return parts[0] + "".join(p.split("\n", 1)[1] for p in parts[1:]) if parts else ",".join(CSV_FIELDS) + "\n"
    if fmt == "md":
        return "# excb-bench leaderboard\n\n" + "\n".join(parts)
    return "% excb-bench leaderboard (needs \\usepackage{booktabs})\n\n" + "\n".join(parts)


# ----------------------------------------------------------------------------- stage
def _runs(cfg: Dict[str, Any], run_dir: Path) -> List[Path]:
    return [Path(r) for r in cfg["runs"]] if cfg["runs"] else [Path(run_dir).resolve().parent]


def inputs(cfg: Dict[str, Any], run_dir: Path) -> List[Path]:
    """Every file this stage reads (for the pipeline's input hashes)."""
    cfg = resolve_config(DEFAULTS, base=cfg)
    files = list(baseline_files(cfg))
    for run in _runs(cfg, run_dir):
        folders = [run] + [run / rel for rel in cfg["paths"]["sanity"].values()]
        folders += sorted(p for p in run.glob(cfg["paths"]["eval_glob"]) if p.is_dir())
        files += [f / rel for f in folders for rel in cfg["paths"]["stages"].values() if (f / rel).is_file()]
        if (run / cfg["paths"]["pretrain"]).is_file():
            files.append(run / cfg["paths"]["pretrain"])
    return files


def run(cfg: Dict[str, Any], run_dir: Path) -> Dict[str, Any]:
    """Build every table and write ``leaderboard.{md,tex,csv}`` + ``results.json`` into ``run_dir``."""
    t0 = time.time()
    cfg = resolve_config(DEFAULTS, base=cfg)
    run_dir = Path(run_dir)
    warnings: List[str] = []
    base = load_baselines(baseline_files(cfg))
    measured = collect_measured(_runs(cfg, run_dir), cfg, warnings)
    tables = build_tables(base, measured, cfg)
    outputs = {}
    for fmt, ext in (("md", "md"), ("tex", "tex"), ("csv", "csv")):
        path = run_dir / f"leaderboard.{ext}"
        atomic_write_text(path, render_all(tables, fmt, cfg))
        outputs[fmt] = str(path)
    n_meas = sum(len(s["rows"]) for t in tables.values() for s in t["sections"] if s["kind"] == "measured")
    if not measured:
        warnings.append(f"no measured results found under {', '.join(str(r) for r in _runs(cfg, run_dir))}")
    results = {
        "stage": "leaderboard",
        "metrics": {"n_tables": len(tables), "n_baseline_rows": len(base), "n_measured_rows": n_meas,
                    "n_measured_sources": len(measured)},
        "protocol": cfg,
        "data": {"name": None, "n_train": None, "n_val": None},
        "checkpoint": {"path": None, "sha256": None, "format": None},
        "seed": None, "world_size": 1, "wall_s": time.time() - t0, "versions": package_versions(),
        "outputs": outputs,
        "measured": [{"method": m["method"], "kind": m["kind"], "source": m["source"], "stages": sorted(m["stages"])}
                     for m in measured],
        "warnings": warnings,
    }
    atomic_write_json(run_dir / "results.json", results)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Build the leaderboard (published + measured rows) as Markdown/LaTeX/CSV.")
    p.add_argument("--config", help="YAML with leaderboard keys (see benchmarks/leaderboard.py DEFAULTS)")
    p.add_argument("--output-dir", "-o", required=True, help="stage folder, e.g. <run>/leaderboard")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. runs=[runs/a,runs/b]")
    a = p.parse_args(argv)
    cfg = resolve_config(DEFAULTS, a.config, a.overrides)
    res = run(cfg, Path(a.output_dir))
    print(Path(res["outputs"]["md"]).read_text(encoding="utf-8"))
    for w in res["warnings"]:
        print(f"[excb] warning: {w}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
