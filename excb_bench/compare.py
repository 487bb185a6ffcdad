"""Measured baselines inside a pipeline: the ``compare`` section runs evaluation stages on more
checkpoints — zoo entries and files of your own — in the same run directory.

    compare:
      stages: [knn, linear]            # which evaluations (their sections are this pipeline's)
      zoo: [arch:resnet50]             # zoo names, or arch:NAME for every entry of that architecture
      checkpoints:                     # your own files (<run>/ = inside the run directory)
        excb: /path/to/excb_checkpoint.pth
        prev: {path: "<run>/pretrain/checkpoint_prev.pth", label: "ExCB (ours), one epoch earlier"}

Each (checkpoint, stage) becomes a pipeline stage named ``STAGE@KEY`` (e.g. ``knn@swav_800ep``)
placed before the summary stages, so it is skipped when done, resumes when interrupted and can
be named in ``--only`` / ``--force``. Its folder is ``<run>/eval_<sha256[:12]>/<stage>/``: keyed by
the checkpoint's content (decided when the stage runs, after a zoo download), labelled for display.
"""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from excb import ExcbError

SEP = "@"
EVAL_STAGES = ("knn", "linear", "semisup_1", "semisup_10", "detect")
RUN_PREFIX = "<run>/"
_KEYS = ("stages", "zoo", "checkpoints")


def is_compare_stage(name: str) -> bool:
    return SEP in name


def split(name: str) -> Tuple[str, str]:
    base, key = name.split(SEP, 1)
    return base, key


def _entries(spec: List[Any], source: str) -> List[Tuple[str, Dict[str, Any]]]:
    from excb import zoo

    out: List[Tuple[str, Dict[str, Any]]] = []
    reg = zoo.load_registry()
    for item in spec:
        item = str(item)
        if item.startswith("arch:"):
            arch = item[len("arch:"):]
            names = [e.name for e in reg.values() if e.arch == arch and (e.urls or zoo.locate(e))]
            if not names:
                raise ExcbError(f"{source}: compare.zoo '{item}': no zoo entry of architecture '{arch}' "
                                f"(architectures: {', '.join(sorted({e.arch for e in reg.values()}))})")
        else:
            names = [zoo.get_entry(item).name]   # unknown names: one line listing the names
        for n in names:
            e = reg[n]
            out.append((n, {"checkpoint": f"zoo:{n}", "label": f"{e.method} (zoo:{n})"}))
    return out


def expand(cfg: Dict[str, Any], section_for: Callable[[str], Dict[str, Any]], source: str) -> None:
    """Add the ``STAGE@KEY`` stages of ``cfg['compare']`` (in place) before the summary stages."""
    comp = cfg.get("compare")
    cfg["stages"] = [s for s in cfg["stages"] if not is_compare_stage(s)]
    for k in [k for k in cfg if is_compare_stage(k)]:
        del cfg[k]
    if not comp:
        return
    if not isinstance(comp, dict) or any(k not in _KEYS for k in comp):
        bad = [k for k in comp if k not in _KEYS] if isinstance(comp, dict) else [type(comp).__name__]
        raise ExcbError(f"{source}: compare: unknown key(s) {', '.join(map(str, bad))}; use {', '.join(_KEYS)}")
    stages = list(comp.get("stages") or ["knn"])
    for s in stages:
        if s not in EVAL_STAGES:
            raise ExcbError(f"{source}: compare.stages: '{s}' is not an evaluation stage ({', '.join(EVAL_STAGES)})")
    items = _entries(list(comp.get("zoo") or []), source)
    for key, val in (comp.get("checkpoints") or {}).items():
        if val is None or val == "":
            continue   # a slot left empty (e.g. your own checkpoint, filled by an override)
        if isinstance(val, str):
            val = {"path": val}
        if not isinstance(val, dict) or "path" not in val:
            raise ExcbError(f"{source}: compare.checkpoints.{key}: give a path or {{path: ..., label: ...}}")
        items.append((str(key), {"checkpoint": str(val["path"]), "label": str(val.get("label") or key)}))
    summary = [s for s in cfg["stages"] if s in ("leaderboard", "figures")]
    rest = [s for s in cfg["stages"] if s not in summary]
    added = []
    for key, _ in items:
        if SEP in key or "/" in key:
            raise ExcbError(f"{source}: compare: key '{key}' may not contain '{SEP}' or '/'")
    for s in stages:              # every checkpoint's k-NN first: the cheap numbers arrive early
        for key, item in items:
            scfg = copy.deepcopy(section_for(s))
            scfg.update({"checkpoint": item["checkpoint"], "format": "auto", "arch": None})
            scfg["_label"] = item["label"]
            name = f"{s}{SEP}{key}"
            cfg[name] = scfg
            added.append(name)
    cfg["stages"] = rest + added + summary


def stage_label(scfg: Dict[str, Any]) -> Optional[str]:
    return scfg.get("_label")


def strip_private(scfg: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in scfg.items() if not k.startswith("_")}


def resolve_run_path(ck: Any, run_dir: Path) -> Any:
    if isinstance(ck, str) and ck.startswith(RUN_PREFIX):
        return str(run_dir / ck[len(RUN_PREFIX):])
    return ck


def stage_dir(name: str, scfg: Dict[str, Any], label: Optional[str], run_dir: Path, previous: Optional[str]) -> Path:
    """``<run>/eval_<sha>/<stage>`` for a compare stage (claims the folder, writes its label). A folder
    this stage used before for another checkpoint content moves to ``<run>/eval.prev/``."""
    from excb.io import sha256_file_cached
    from excb.zoo import is_zoo_ref, resolve_checkpoint, zoo_name
    from excb_bench.eval_dirs import claim_eval_dir

    base, key = split(name)
    ck = scfg.get("checkpoint")
    path = resolve_checkpoint(ck)[0] if is_zoo_ref(ck) else ck
    if not path or not Path(path).is_file():
        raise ExcbError(f"compare.checkpoints.{key}: file '{path}' not found" +
                        (" (made by pretraining: run the pretrain stage first)" if str(ck).startswith(str(run_dir)) else ""))
    folder = claim_eval_dir(run_dir, sha256_file_cached(path), label or key, which=scfg.get("which", "teacher"),
                            checkpoint=str(ck), zoo=zoo_name(ck) if is_zoo_ref(ck) else None,
                            trusted=bool(scfg.get("trust_checkpoint")), explicit_label=False)
    if previous and (run_dir / previous).resolve() != folder.resolve() and (run_dir / previous).is_dir():
        old = run_dir / previous
        dest = run_dir / "eval.prev" / old.name
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(old, dest)
        print(f"[excb-bench] {name}: the checkpoint changed; previous results moved to {dest.relative_to(run_dir)}")
    return folder / base
