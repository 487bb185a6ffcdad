"""The leaderboard stage: read baselines and run directories, write leaderboard.{md,tex,csv} + results.json."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from excb.config import resolve_config
from excb.io import atomic_write_json, atomic_write_text, package_versions

from benchmarks.leaderboard.defaults import DEFAULTS
from benchmarks.leaderboard.published import baseline_files, load_baselines
from benchmarks.leaderboard.render import render_all
from benchmarks.leaderboard.rows import collect_measured
from benchmarks.leaderboard.tables import build_tables


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
