"""Benchmark 6: peak memory of a training step against batch size, and the largest batch that
fits in 8 GB at the demo settings (``configs/pretrain/demo.yaml``: ResNet-18, 2x32 + 2x16 px,
K 512, heads 512-128).

    python -m benchmarks.perf.bench_memory                     # batches 32..512 at the demo settings
    python -m benchmarks.perf.bench_memory --quick
    python -m benchmarks.perf.bench_memory --preset step       # the settings of benchmark 1 instead

Every batch size runs in a fresh process (so peaks do not mix): build the models, optimiser and
balancer, run two ExCB steps through ``excb.train.train_one_epoch``, report the peak. On CUDA the
peak is ``torch.cuda.max_memory_allocated``; on CPU it is the peak resident set size minus the
resident size after importing the libraries (models + optimiser state + activations + temporaries).
The 8 GB figure is the linear fit peak = a + b x batch solved for 8 GiB (activations grow
linearly with the batch; the fit's worst residual is printed).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any, Dict, List

DEMO = {"backbone": "resnet18", "global_size": 32, "local_size": 16, "n_global": 2, "n_local": 2, "K": 512,
        "hidden_dim": 512, "out_dim": 128, "balancer": "excb", "steps": 2}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(settings: Dict[str, Any]) -> Dict[str, Any]:
    """Runs in the subprocess: peak memory of ``steps`` ExCB steps at these settings."""
    import resource

    import torch

    from benchmarks.perf.bench_step import StepSetup
    import excb.backbones, excb.model, excb.train  # noqa: F401,E401 - libraries count as baseline, not as step memory

    base = _rss_bytes()

    cuda = torch.cuda.is_available()
    st = StepSetup(settings)
    if cuda:
        for m in (st.student, st.teacher, st.balancer):
            m.cuda()
        st.views = [v.cuda() for v in st.views]
        torch.cuda.reset_peak_memory_stats()
    params = sum(p.numel() for p in st.student.parameters()) + sum(p.numel() for p in st.teacher.parameters())
    if cuda:
        st.loader = [(st.views, st.labels.cuda())] * settings["steps"]
        from excb.train import train_one_epoch

        train_one_epoch(st.student, st.student, st.teacher, st.balancer, st.optimizer, None, st.loader, st.schedules, 0,
                        st.cfg, torch.device("cuda"), st.logger, progress=False)
        peak = torch.cuda.max_memory_allocated()
    else:
        st.excb_steps()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"batch": settings["batch"], "peak_bytes": int(peak), "params": int(params), "device": "cuda" if cuda else "cpu"}


def measure(settings: Dict[str, Any]) -> Dict[str, Any]:
    code = ("import json,sys; from benchmarks.perf.bench_memory import child; "
            "print('RESULT ' + json.dumps(child(json.loads(sys.argv[1]))))")
    env = dict(os.environ)
    env.setdefault("PYTHONPATH", os.getcwd())
    r = subprocess.run([sys.executable, "-c", code, json.dumps(settings)], capture_output=True, text=True, env=env)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"memory child failed (batch {settings['batch']}): {r.stderr.strip().splitlines()[-1:]}")


def fit_line(xs: List[float], ys: List[float]):
    import numpy as np

    b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    pred = a + b * np.asarray(xs, float)
    worst = float(np.max(np.abs(pred - np.asarray(ys, float)) / np.asarray(ys, float)))
    return float(a), float(b), worst


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="two tiny batches (checks the script runs)")
    p.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128, 256, 512])
    p.add_argument("--preset", choices=["demo", "step"], default="demo")
    p.add_argument("--budget-gib", type=float, default=8.0)
    p.add_argument("--json", help="also write the table as JSON")
    args = p.parse_args(argv)
    from benchmarks.perf.bench_step import FULL

    base = dict(DEMO if args.preset == "demo" else {**FULL, "steps": 2})
    batches = [4, 8] if args.quick else args.batches
    if args.quick:
        base.update(K=64, hidden_dim=64, out_dim=32)
    rows = [measure({**base, "batch": B}) for B in batches]
    print(f"== Peak memory of an ExCB training step ({rows[0]['device']}), settings: "
          + ", ".join(f"{k}={v}" for k, v in base.items() if k != "steps"))
    print(f"| batch | peak memory (MiB) | per image (MiB) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['peak_bytes'] / 2 ** 20:,.0f} | {r['peak_bytes'] / 2 ** 20 / r['batch']:.2f} |")
    a, b, worst = fit_line([r["batch"] for r in rows], [r["peak_bytes"] for r in rows])
    budget = args.budget_gib * 2 ** 30
    largest = int((budget - a) // b) if b > 0 else None
    print(f"fit: peak = {a / 2 ** 20:,.0f} MiB + {b / 2 ** 20:.2f} MiB x batch (worst residual {100 * worst:.1f}%)")
    print(f"largest batch within {args.budget_gib:g} GiB: {largest:,} (extrapolated)" if largest
          else "no usable fit (peak does not grow with the batch at these sizes)")
    if args.json:
        from excb.io import atomic_write_json

        atomic_write_json(args.json, {"settings": base, "rows": rows, "fit": {"a": a, "b": b, "worst": worst},
                                      "largest_batch": largest, "budget_gib": args.budget_gib})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
