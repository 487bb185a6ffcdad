"""Shared timing helpers for the ratio benchmarks: warm-up, interleaved repeats, medians.

Machines running these are noisy (2 shared cores here). Two habits make a ratio trustworthy:
the candidates are timed *interleaved* (A B A B ..., order alternating) so a load spike hits
both, and the ratio is taken of *medians* over repeats. Every report also prints the absolute
figures, the settings and the machine load, so a number can be reproduced or discounted.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any, Callable, Dict, List, Mapping, Optional

import torch


def add_common_args(p: argparse.ArgumentParser, warmup: int = 1, repeat: int = 5) -> argparse.ArgumentParser:
    p.add_argument("--quick", action="store_true", help="tiny settings: checks that the script runs (numbers meaningless)")
    p.add_argument("--warmup", type=int, default=warmup, help=f"untimed warm-up calls per candidate (default {warmup})")
    p.add_argument("--repeat", type=int, default=repeat, help=f"timed calls per candidate (default {repeat})")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--json", help="also write the report as JSON to this file")
    return p


def setup_threads(n: int) -> int:
    """Thread count for the run; also the allocator setting the training stage uses on CPU
    (``excb.cpu.tune_malloc``), so every candidate runs under the same allocator."""
    from excb.cpu import tune_malloc

    tune_malloc()
    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def time_call(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def interleaved(fns: Mapping[str, Callable[[], Any]], warmup: int, repeat: int) -> Dict[str, List[float]]:
    """Warm each candidate up, then time them in alternating order; seconds per call."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    out: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeat):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            out[n].append(time_call(fns[n]))
    return out


def median(xs: List[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def spread(xs: List[float]) -> str:
    """min-max range as a percentage of the median: how noisy the repeats were."""
    if len(xs) < 2:
        return "n/a"
    m = median(xs)
    return f"±{100 * (max(xs) - min(xs)) / 2 / m:.0f}%"


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` shows it (Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> Dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpu": cpu_model(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "loadavg_1m": round(load[0], 2)}


def report(title: str, settings: Mapping[str, Any], times: Mapping[str, List[float]],
           ratios: Mapping[str, tuple], unit: str = "s", extra: Optional[Mapping[str, Any]] = None,
           json_path: Optional[str] = None) -> Dict[str, Any]:
    """Print settings, medians and ratios. ``ratios``: name -> (numerator, denominator, target, sense)
    with sense '<=' or '>=' and numerator/denominator candidate names or plain floats."""
    med = {k: median(v) for k, v in times.items()}
    print(f"== {title}")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    m = machine()
    print("machine:  " + ", ".join(f"{k}={v}" for k, v in m.items()))
    for k, v in times.items():
        scale = 1e3 if unit == "s" else 1.0
        u = "ms" if unit == "s" else unit
        print(f"  {k:<44s} median {med[k] * scale:10.2f} {u}  ({len(v)} runs, {spread(v)})")
    res_ratios = {}
    for name, (num, den, target, sense) in ratios.items():
        a = med[num] if isinstance(num, str) else float(num)
        b = med[den] if isinstance(den, str) else float(den)
        r = a / b if b else float("nan")
        if target is None:  # informational ratio
            res_ratios[name] = {"value": r, "target": None, "sense": None, "met": None}
            print(f"ratio {name}: {r:.4f}")
            continue
        ok = (r <= target) if sense == "<=" else (r >= target)
        res_ratios[name] = {"value": r, "target": target, "sense": sense, "met": bool(ok)}
        print(f"RATIO {name}: {r:.4f}  (target {sense} {target}: {'met' if ok else 'MISSED'})")
    for k, v in (extra or {}).items():
        if isinstance(v, Mapping):
            print(f"  {k}:")
            for kk, vv in v.items():
                print(f"    {kk:<42s} {vv}")
        else:
            print(f"  {k}: {v}")
    out = {"title": title, "settings": dict(settings), "machine": m, "median": med,
           "times": {k: list(v) for k, v in times.items()}, "ratios": res_ratios, "extra": dict(extra or {})}
    if json_path:
        from excb.io import atomic_write_json

        atomic_write_json(json_path, out)
    return out
