"""Benchmark 3: the cost of balancing — ExCB's B + s update at K 65,536 on 2,048 rows
(G x batch = 2 x 1024, the paper's per-step size) / the whole training step of benchmark 1.

    python -m benchmarks.perf.bench_balancing           # K 65,536, 2,048 rows; step: ResNet-18, 2x96+6x48, batch 32
    python -m benchmarks.perf.bench_balancing --quick

Candidates, each on the same (rows, K) cosine-similarity matrix:
* ``excb B + s update``: the issue's measure — Eq. 10 applied to every row, the hard labels
  of Eq. 8 and the s update of Eq. 9 (``ClusterBalancer.balanced_argmax`` + ``update``: one
  multiply-add per element in cache-sized row blocks, a two-level arg-max, counts all-reduced);
* ``excb teacher_probs + update``: the whole per-step balancer work — the above plus the
  sharpened softmax of the targets (which every method, DINO included, pays);
* ``excb literal``: ``teacher_probs`` with Eq. 10 evaluated branch by branch over the whole
  matrix (``benchmarks/perf/reference_step.py``), for comparison;
* ``dino-centering`` and ``sinkhorn`` (3 iterations) through the same balancer interface;
* ``softmax only`` (the ``none`` balancer): the floor shared by all of them.
Ratios: each / one ExCB training step of benchmark 1 (target for ExCB's B + s update: <= 3 %),
and the same at the rows that step actually has (G x 32 = 64).
"""
from __future__ import annotations

import argparse
from typing import Callable, Dict

import torch

from benchmarks.perf._timing import add_common_args, interleaved, median, report, setup_threads
from benchmarks.perf.bench_step import FULL, QUICK, StepSetup


def balancing_candidates(rows: int, K: int, seed: int = 0) -> Dict[str, Callable[[], None]]:
    from benchmarks.perf.reference_step import teacher_probs_literal
    from excb.balancing import create_balancer

    g = torch.Generator().manual_seed(seed)
    z = (torch.rand(rows, K, generator=g) * 0.6 - 0.3).contiguous()  # cosines of a trained head: |z| small
    tau = 0.04
    excb = create_balancer("excb", K)
    # a non-uniform s (some clusters under-, some over-sized) so every branch of Eq. 10 runs
    excb.s.copy_(torch.softmax(torch.randn(K, generator=g) * 0.5, 0))
    cen = create_balancer("dino-centering", K)
    sk = create_balancer("sinkhorn", K)
    none = create_balancer("none", K)

    def excb_b_update():
        excb.update(z, excb.balanced_argmax(z))

    def excb_full():
        p, a = excb.teacher_probs(z, tau)
        excb.update(z, a)

    def excb_literal():
        p, a = teacher_probs_literal(excb, z, tau)
        excb.update(z, a)

    def centering():
        p, a = cen.teacher_probs(z, tau)
        cen.update(z, a)

    def sinkhorn():
        p, a = sk.teacher_probs(z, tau)
        sk.update(z, a)

    def softmax_only():
        none.teacher_probs(z, tau)

    return {"excb B + s update": excb_b_update, "excb teacher_probs + update": excb_full, "excb literal": excb_literal, "dino-centering": centering, "sinkhorn (3 it.)": sinkhorn,
            "softmax only (none)": softmax_only}


def main(argv=None) -> int:
    p = add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter),
                        warmup=1, repeat=5)
    p.add_argument("--rows", type=int, default=2048, help="teacher rows per step (default 2048 = 2 x 1024)")
    p.add_argument("--K", type=int, default=65536)
    args = p.parse_args(argv)
    setup_threads(args.threads)
    s = dict(QUICK if args.quick else FULL)
    s["steps"] = 1
    rows, K = (64, 1024) if args.quick else (args.rows, args.K)
    repeat = 1 if args.quick else args.repeat
    step = StepSetup(s)
    big = balancing_candidates(rows, K)
    small_rows = s["n_global"] * s["batch"]
    small = {f"{k} @{small_rows} rows": v for k, v in balancing_candidates(small_rows, s["K"]).items()}
    times = interleaved({"training step (benchmark 1)": step.excb_steps, **big}, args.warmup, repeat)
    times.update(interleaved(small, args.warmup, max(repeat, 3)))
    step_name = "training step (benchmark 1)"
    ratios = {}
    for k in big:
        ratios[f"{k} @{rows}x{K} / step"] = (k, step_name, 0.03 if k == "excb B + s update" else None, "<=")
    for k in small:
        ratios[f"{k} / step"] = (k, step_name, None, "<=")
    nbytes = rows * K * 4
    report("Balancing cost vs one ExCB training step", {"rows": rows, "K": K, "step": s}, times, ratios,
           extra={"(rows, K) fp32 matrix": f"{nbytes / 2 ** 20:.0f} MiB; passes over it bound the time (memory bandwidth)",
                  "effective bandwidth, softmax only": f"{3 * nbytes / median(times['softmax only (none)']) / 1e9:.1f} GB/s "
                                                       f"(~3 passes)"},
           json_path=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
