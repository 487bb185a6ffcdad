"""Benchmark 7: the demo's training step against this machine's own limit, measured in one run.

    python -m benchmarks.perf.bench_ceiling                  # demo recipe (configs/pretrain/demo.yaml)
    python -m benchmarks.perf.bench_ceiling --profile        # + the step's top operators (torch.profiler)
    python -m benchmarks.perf.bench_ceiling --quick          # tiny settings, checks the script runs

Three candidates, timed interleaved in the same process:

* **ceiling**: an fp32 matrix product (``torch.mm``, n x n x n, 2n^3 FLOP) on the cores this
  process may use (its CPU affinity; ``--threads`` to override). Dense GEMM is the fastest thing
  the CPU does with fp32, so it bounds what a convolution network can reach.
* **step**: one demo training step (``excb.train.train_one_epoch`` on a pre-made batch of the
  recipe's shapes: teacher, balancer, student, Eq. 7, backward, SGD, s update, EMA, statistics),
  with the same CPU settings as ``excb.train.train`` (``prepare_models``). Its FLOPs are counted
  with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions, forward and
  backward); FLOPs / time = the step's GFLOP/s.
* **end to end**: ``excb.train.train`` itself on the recipe (the real data loader with its workers,
  augmentation, step and statistics; ``--e2e-images`` images, one epoch), images/s as the epoch
  loop measures it.

Printed ratios: step GFLOP/s / GEMM GFLOP/s (how close the step is to the machine's limit) and
end-to-end images/s / step-alone images/s (what data loading and augmentation cost on top).
"""
from __future__ import annotations

import argparse
import copy
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import torch

from benchmarks.perf._timing import add_common_args, interleaved, median, report, setup_threads

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "pretrain" / "demo.yaml"


def usable_cores() -> int:
    """Cores this process may run on (CPU affinity: a cgroup/Slurm allocation), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Gemm:
    """Repeated fp32 ``torch.mm`` into a reused output: the machine's dense fp32 ceiling."""

    def __init__(self, n: int, reps: int):
        g = torch.Generator().manual_seed(0)
        self.a = torch.randn(n, n, generator=g)
        self.b = torch.randn(n, n, generator=g)
        self.c = torch.empty(n, n)
        self.reps = reps
        self.flops = 2.0 * n ** 3 * reps

    def __call__(self) -> None:
        for _ in range(self.reps):
            torch.mm(self.a, self.b, out=self.c)


def demo_config(path: str | Path, overrides: List[str]) -> Dict[str, Any]:
    from excb.config import resolve_config
    from excb.train import PRETRAIN_DEFAULTS

    return resolve_config(PRETRAIN_DEFAULTS, path, overrides)


def valid_taps(length: int, out_len: int, k: int, stride: int, pad: int, dilation: int) -> int:
    """Sum over output positions of the kernel taps that land inside the input (not on padding)."""
    n = 0
    for o in range(out_len):
        for j in range(k):
            i = o * stride - pad + j * dilation
            n += 0 <= i < length
    return n


def _conv_useful(x_shape, w_shape, out_shape, stride, padding, dilation) -> int:
    """2 x (multiply-adds that touch real input): N * C_out * C_in/groups * prod(valid taps per dim)."""
    taps = 1
    for d in range(len(x_shape) - 2):
        taps *= valid_taps(x_shape[2 + d], out_shape[2 + d], w_shape[2 + d], stride[d], padding[d], dilation[d])
    return 2 * x_shape[0] * w_shape[0] * w_shape[1] * taps


def _conv_fwd(x_shape, w_shape, _bias, stride, padding, dilation, transposed, *args, out_shape=None, **kw) -> int:
    if transposed:   # not in the demo's networks: fall back to torch's formula
        from torch.utils.flop_counter import conv_flop_count

        return conv_flop_count(x_shape, w_shape, out_shape, transposed=True)
    return _conv_useful(x_shape, w_shape, out_shape, stride, padding, dilation)


def _conv_bwd(grad_out_shape, x_shape, w_shape, _bias, stride, padding, dilation, transposed, _op, _groups,
              output_mask, out_shape=None, **kw) -> int:
    # grad_input and grad_weight each make exactly the forward's useful multiply-adds once more
    one = _conv_fwd(x_shape, w_shape, None, stride, padding, dilation, transposed, out_shape=grad_out_shape)
    return one * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def step_flops(st) -> Dict[str, float]:
    """Matmul/conv FLOPs of one training step (forward + backward), two counts:
    ``counted``: FlopCounterMode's formulas (a k x k convolution costs k^2 taps at every output,
    padding included); ``useful``: only taps that touch real input pixels. At 32/16 px the last
    ResNet stages run at 1-2 px, where most 3x3 taps fall on padding, which oneDNN skips."""
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten
    useful = {aten.convolution: _conv_fwd, aten._convolution: _conv_fwd, aten.convolution_backward: _conv_bwd}
    with FlopCounterMode(display=False) as fc:
        st.excb_steps()
    counted = fc.get_total_flops() / st.s["steps"]
    with FlopCounterMode(display=False, custom_mapping=useful) as fc:
        st.excb_steps()
    return {"counted": counted, "useful": fc.get_total_flops() / st.s["steps"]}


def end_to_end(cfg: Dict[str, Any], images: int) -> Dict[str, Any]:
    """One epoch of ``excb.train.train`` on the first ``images`` training images; its epoch statistics."""
    from excb.safe_read import read_torch_file
    from excb.train import train

    c = copy.deepcopy(cfg)
    c.update(epochs=1, final_pass=False, log_every=10 ** 9)
    c["data"]["limit_train"] = images
    c["optim"]["warmup_epochs"] = 0
    n = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="excb-e2e-") as d:
        res = train(c, d)
        hist = read_torch_file(Path(d) / "checkpoint.pth")["history"]   # the one safe reader (DESIGN.md)
    torch.set_num_threads(n)   # train() sets its own thread count; restore ours for the next candidates
    return {"images_per_s": hist[-1]["images_per_s"], "epoch_s": hist[-1]["epoch_s"], "wall_s": res["wall_s"]}


def profile_step(st, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        st.excb_steps()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv=None) -> int:
    p = add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter),
                        warmup=1, repeat=5)
    p.add_argument("--config", default=str(DEMO_CONFIG), help="pretraining recipe (default: the demo's)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the recipe, e.g. batch_size=128")
    p.add_argument("--gemm-n", type=int, default=2048, help="matrix size of the GEMM ceiling (default 2048)")
    p.add_argument("--e2e-images", type=int, default=0,
                   help="images of the end-to-end epoch (default: the whole demo train set; 0 = all)")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end pretraining epoch")
    p.add_argument("--profile", action="store_true", help="print the step's top operators (torch.profiler)")
    args = p.parse_args(argv)
    threads = setup_threads(args.threads or usable_cores())

    from benchmarks.perf.bench_step import StepSetup, settings_from_cfg

    over = list(args.set)
    if args.quick:
        over += ["batch_size=8", "centroids.K=16", "head.hidden_dim=64", "head.out_dim=32",
                 "head.predictor_hidden_dim=64", "num_workers=0"]
    cfg = demo_config(args.config, over)
    cfg.update(epochs=1)
    cfg["optim"]["warmup_epochs"] = 0
    s = settings_from_cfg(cfg, steps=1)
    gemm = Gemm(256 if args.quick else args.gemm_n, 1 if args.quick else 5)
    st = StepSetup(s, cfg)
    fl = step_flops(StepSetup(s, cfg))   # counted on a copy: the timed one's state is not advanced
    flops = fl["useful"]
    times = interleaved({"gemm": gemm, "step": st.excb_steps}, 0 if args.quick else args.warmup,
                        1 if args.quick else args.repeat)
    e2e = None
    if not args.no_e2e:
        e2e = end_to_end(cfg, 2 * s["batch"] if args.quick else args.e2e_images)
        # time the step and the GEMM again after the end-to-end epoch: a load change shows as spread
        more = interleaved({"gemm": gemm, "step": st.excb_steps}, 0, 1 if args.quick else max(args.repeat // 2, 1))
        for k in times:
            times[k] += more[k]
    times["e2e (per step)"] = [s["batch"] / e2e["images_per_s"]] if e2e else []
    gemm_gf = gemm.flops / median(times["gemm"]) / 1e9
    step_gf = flops / median(times["step"]) / 1e9
    extra: Dict[str, Any] = {
        "GEMM ceiling": f"{gemm_gf:.1f} GFLOP/s fp32 ({threads} threads, n={gemm.a.shape[0]})",
        "demo step": (f"{flops / 1e9:.1f} GFLOP per step ({flops / s['batch'] / 1e9:.3f} GFLOP per image, padding "
                      f"taps excluded; FlopCounterMode's own count {fl['counted'] / 1e9:.1f} GFLOP), "
                      f"{step_gf:.1f} GFLOP/s, {s['batch'] / median(times['step']):.1f} images/s"),
    }
    ratios: Dict[str, tuple] = {"step GFLOP/s / GEMM GFLOP/s": (step_gf, gemm_gf, None, "<="),
                                "(same with FlopCounterMode's count incl. padding taps)":
                                    (fl["counted"] / median(times["step"]) / 1e9, gemm_gf, None, "<=")}
    if e2e:
        extra["end to end"] = (f"{e2e['images_per_s']:.1f} images/s over {e2e['epoch_s']:.1f} s "
                               f"(train() wall {e2e['wall_s']:.1f} s incl. model build and checkpoint)")
        ratios["end-to-end images/s / step images/s"] = ("step", "e2e (per step)", None, "<=")
    else:
        del times["e2e (per step)"]
    if args.profile:
        print(profile_step(st))
    settings = {**s, "config": Path(args.config).name, "overrides": " ".join(over) or "-",
                "channels_last": cfg["channels_last"],
                "num_workers": cfg["num_workers"], "augment.backend": cfg["augment"].get("backend", "pil")}
    r = report("demo step and end-to-end pretraining against the machine's fp32 GEMM ceiling", settings, times,
               ratios, extra=extra, json_path=args.json)
    return 0 if r else 1


if __name__ == "__main__":
    raise SystemExit(main())
