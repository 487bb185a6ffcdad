"""Measured rows: what the stages wrote into run directories (ours, sanity rows, evaluations)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from excb import ExcbError
from excb.io import read_json

from benchmarks.leaderboard.util import _get_path, first_present


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
            ck = next((res.get("checkpoint") for res in stages.values() if isinstance(res.get("checkpoint"), dict)), {})
            entry = zoo_entry((ck.get("zoo") or {}).get("name") if isinstance(ck.get("zoo"), dict) else None)
            rows.append({"method": label + (f" ({run.name})" if tag else ""), "kind": "eval", "arch": arch,
                         "batch": entry.batch if entry else None, "epochs": entry.epochs if entry else None,
                         "multi_crop": entry.multi_crop if entry else None, "run": str(run), "zoo": entry,
                         "sha256": ck.get("sha256"), "source": f"measured: {folder}", "stages": stages})
    rows = [r for r in rows if r["stages"]]
    _disambiguate(rows)
    return rows


def zoo_entry(name: Optional[str]):
    """The zoo registry entry a row was measured from (its published numbers, epochs, batch), or None."""
    if not name:
        return None
    from excb import zoo

    try:
        return zoo.load_registry().get(name)
    except ExcbError:
        return None


def _disambiguate(rows: List[Dict[str, Any]]) -> None:
    """Two rows must never look like one: equal labels of different checkpoints get the short sha256."""
    by_label: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        by_label.setdefault(r["method"], []).append(r)
    for label, group in by_label.items():
        if len(group) > 1 and len({r.get("sha256") for r in group}) > 1:
            for r in group:
                r["method"] = f"{label} [{(r.get('sha256') or 'no sha')[:8]}]"
