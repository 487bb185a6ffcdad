"""The demo's budget: wall time of ``excb-bench run-all`` (no other arguments) and of each stage.

    python -m benchmarks.perf.time_demo                  # the embedded demo into a fresh temporary run dir
    python -m benchmarks.perf.time_demo --keep runs/demo-timed
    python -m benchmarks.perf.time_demo -- linear.epochs=1     # extra run-all arguments after --

Runs ``python -m excb_bench.cli run-all --output-dir <fresh dir>`` in a subprocess (the same
command a user types, only the run directory differs so an existing ``runs/demo`` is not reused),
passes its output through, and measures from its first line of output to its last — what a
user waits for. Then reads the run's ``manifest.json`` for each stage's own time and prints the
table, the machine (CPU model as ``lscpu`` names it, cores, load) and the ratio to the
10-minute budget. Timing the demo needs an otherwise idle machine; the 1-minute load average
before and after is printed so a loaded measurement can be recognised.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from benchmarks.perf._timing import cpu_model

BUDGET_S = 600.0


def fmt_s(s: Optional[float]) -> str:
    if s is None:
        return "-"
    m, sec = divmod(float(s), 60)
    return f"{int(m)} min {sec:04.1f} s" if m else f"{sec:.1f} s"


def run_and_time(cmd: List[str], env: Dict[str, str]) -> Dict[str, Any]:
    """Run ``cmd``, echo its output, return exit code and the first/last-line timestamps."""
    t_start = time.time()
    first = last = None
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, bufsize=0)
    assert proc.stdout is not None
    buf = b""
    while True:
        chunk = proc.stdout.read1(65536) if hasattr(proc.stdout, "read1") else proc.stdout.read(1)
        if not chunk:
            break
        now = time.time()
        if first is None and chunk.strip():
            first = now
        if chunk.strip():
            last = now
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        buf = (buf + chunk)[-4096:]
    rc = proc.wait()
    end = time.time()
    return {"returncode": rc, "process_s": end - t_start,
            "first_to_last_s": (last - first) if first is not None and last is not None else None,
            "start_to_first_s": (first - t_start) if first is not None else None}


def stage_table(run_dir: Path) -> List[Dict[str, Any]]:
    """Per stage: status and seconds from ``manifest.json`` (start/end of this run)."""
    man = json.loads((run_dir / "manifest.json").read_text())
    rows = []
    for name, e in man.get("stages", {}).items():
        t = e.get("wall_s")
        if t is None and e.get("start") and e.get("end"):
            t = e["end"] - e["start"]
        rows.append({"stage": name, "status": e.get("status"), "seconds": t})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", help="run directory to use and keep (default: a temporary one, deleted afterwards)")
    p.add_argument("--json", help="also write the report as JSON to this file")
    p.add_argument("extra", nargs="*", help="extra run-all arguments (after --), e.g. a smaller recipe for a check")
    args = p.parse_args(argv)

    tmp = None
    if args.keep:
        run_dir = Path(args.keep)
        if run_dir.exists():
            shutil.rmtree(run_dir)
    else:
        tmp = tempfile.mkdtemp(prefix="excb-demo-")
        run_dir = Path(tmp) / "demo"
    cmd = [sys.executable, "-m", "excb_bench.cli", "run-all", "--output-dir", str(run_dir), *args.extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    load0 = os.getloadavg()[0]
    print(f"[time_demo] {' '.join(cmd)}", flush=True)
    res = run_and_time(cmd, env)
    load1 = os.getloadavg()[0]
    rows = stage_table(run_dir) if (run_dir / "manifest.json").exists() else []
    total = res["first_to_last_s"]
    print()
    print(f"== excb-bench run-all{' ' + ' '.join(args.extra) if args.extra else ''}: exit {res['returncode']}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores (usable {len(os.sched_getaffinity(0))}), "
          f"load 1 min {load0:.2f} before / {load1:.2f} after")
    print("| stage | status | time |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['status']} | {fmt_s(r['seconds'])} |")
    staged = sum(r["seconds"] or 0.0 for r in rows)
    print(f"| (sum of stages) | | {fmt_s(staged)} |")
    print(f"| start-up before the first line | | {fmt_s(res['start_to_first_s'])} |")
    print(f"| **first line to last line** | | **{fmt_s(total)}** |")
    if total is not None:
        print(f"ratio demo time / budget ({BUDGET_S / 60:.0f} min): {total / BUDGET_S:.3f}  "
              f"({'within' if total <= BUDGET_S else 'OVER'} budget)")
    out = {"command": cmd, **res, "stages": rows, "budget_s": BUDGET_S, "cpu": cpu_model(),
           "cores": os.cpu_count(), "loadavg_1m_before": load0, "loadavg_1m_after": load1}
    if args.json:
        from excb.io import atomic_write_json

        atomic_write_json(args.json, out)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return res["returncode"]


if __name__ == "__main__":
    raise SystemExit(main())
