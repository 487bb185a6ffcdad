"""FLOPs of one ExCB training step, counted with ``torch.utils.flop_counter.FlopCounterMode``,
and the throughput they project for a multi-GPU run (the input of docs/scaling.md).

    python -m benchmarks.perf.flops                      # paper ResNet-50 recipe: 2x224 + 6x96, K 65,536
    python -m benchmarks.perf.flops --n-local 0          # without multi-crop (2x224, scale 0.14-1)
    python -m benchmarks.perf.flops --gpu-tflops 312 --mfu 0.25 --gpus 8
    python -m benchmarks.perf.flops --quick

Counted: teacher forward (global views), student forward over all views, the Eq. 7 loss and
the backward pass — matrix products and convolutions (element-wise work is not counted by the
counter and is memory-bound). Per-image figures divide by the batch; the projection assumes a
sustained fraction ``--mfu`` of the GPU's peak dense throughput ``--gpu-tflops`` (bf16), and
ideal data-parallel scaling apart from the gradient all-reduce, whose size is printed.
"""
from __future__ import annotations

import argparse
from typing import Dict

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.perf.bench_step import StepSetup


def count_step(s: Dict) -> Dict[str, float]:
    st = StepSetup(s)
    cfg, G = st.cfg, s["n_global"]
    from excb.loss import excb_loss

    out = {}
    with FlopCounterMode(display=False) as fc:
        with torch.no_grad():
            z_t = st.teacher(st.views[:G]).flatten(0, 1).float()
    out["teacher forward"] = fc.get_total_flops()
    p_t, assign = st.balancer.teacher_probs(z_t, cfg["loss"]["teacher_temp"])
    with FlopCounterMode(display=False) as fc:
        z_h, z_g = st.student(st.views, G, True)
    out["student forward"] = fc.get_total_flops()
    loss, _ = excb_loss(p_t.chunk(G), z_h, z_g, cfg["loss"]["student_temp"])
    with FlopCounterMode(display=False) as fc:
        loss.backward()
    out["student backward"] = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        st.student.backbone(torch.cat(st.views[:G]))
        if len(st.views) > G:
            st.student.backbone(torch.cat(st.views[G:]))
    out["(of which backbone forward, student)"] = fc.get_total_flops()
    with FlopCounterMode(display=False) as fc:
        hn = torch.nn.functional.normalize(torch.randn(len(st.views) * s["batch"], s["out_dim"]), dim=-1)
        hn @ torch.nn.functional.normalize(st.student.centroids.weight.detach(), dim=-1).t()
    out["(of which one centroid product, all views)"] = fc.get_total_flops()
    out["params_student"] = sum(p.numel() for p in st.student.parameters())
    out["params_centroids"] = st.student.centroids.weight.numel()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--n-local", type=int, default=6)
    p.add_argument("--K", type=int, default=65536)
    p.add_argument("--gpu-tflops", type=float, default=312.0, help="peak dense bf16 TFLOP/s per GPU (A100: 312)")
    p.add_argument("--mfu", type=float, default=0.25, help="assumed sustained fraction of the peak")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--images", type=int, default=1_281_167, help="images per epoch (ImageNet-1k train)")
    args = p.parse_args(argv)
    s = {"backbone": args.backbone, "batch": 2, "global_size": 224, "local_size": 96, "n_global": 2,
         "n_local": args.n_local, "K": args.K, "hidden_dim": 2048, "out_dim": 256, "balancer": "excb", "steps": 1}
    if args.quick:
        s.update(backbone="resnet18", global_size=32, local_size=16, n_local=1, K=256, hidden_dim=64, out_dim=32)
    torch.manual_seed(0)
    c = count_step(s)
    B = s["batch"]
    total = c["teacher forward"] + c["student forward"] + c["student backward"]
    print(f"== FLOPs of one ExCB step per image: {s['backbone']}, 2x{s['global_size']} + {s['n_local']}x{s['local_size']}, "
          f"K={s['K']}, heads {s['hidden_dim']}-{s['out_dim']}")
    for k in ("teacher forward", "student forward", "student backward", "(of which backbone forward, student)",
              "(of which one centroid product, all views)"):
        print(f"  {k:<44s} {c[k] / B / 1e9:8.2f} GFLOP")
    print(f"  {'total (training step)':<44s} {total / B / 1e9:8.2f} GFLOP per image")
    eff = args.gpu_tflops * 1e12 * args.mfu
    per_gpu = eff / (total / B)
    grad_bytes = 4 * c["params_student"]
    print(f"projection: {args.gpus} GPUs x {args.gpu_tflops:g} TFLOP/s x MFU {args.mfu:g} -> "
          f"{per_gpu:,.0f} img/s per GPU, {args.gpus * per_gpu:,.0f} img/s total; "
          f"one epoch of {args.images:,} images: {args.images / (args.gpus * per_gpu) / 60:.1f} min")
    print(f"per-step all-reduce: gradients {grad_bytes / 2 ** 20:,.1f} MiB fp32 ({c['params_student'] / 1e6:.1f} M params, "
          f"{c['params_centroids'] / 1e6:.1f} M of them centroids) + balancer s {4 * s['K'] + 4:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
