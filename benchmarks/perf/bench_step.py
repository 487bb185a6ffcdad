"""Benchmark 1: training-step overhead of ExCB over the bare multi-crop backbone work.

    python -m benchmarks.perf.bench_step            # ResNet-18, 2x96 + 6x48 px, batch 32, K 65,536, CPU
    python -m benchmarks.perf.bench_step --quick    # tiny settings, checks the script runs

Ratio = one ExCB step (``excb.train.train_one_epoch`` on pre-made batches: teacher, balancer,
student, Eq. 7 loss, backward, SGD, s update, EMA, statistics) / (student backbone forward +
backward over all views + teacher backbone forward over the global views). Target <= 1.2.
A per-part breakdown of the ExCB step (timed with the same calls) shows where the rest goes;
``excb_step_literal`` is the same step with the literal formulas of
``benchmarks/perf/reference_step.py`` (numerically equal; see tests/unit/test_fused_step.py):
the gain of the library's fused loss, centroid product and balancer, measured side by side.
"""
from __future__ import annotations

import argparse
import copy
import time
from typing import Any, Dict, List

import torch

from benchmarks.perf._timing import add_common_args, interleaved, median, report, setup_threads

FULL = {"backbone": "resnet18", "batch": 32, "global_size": 96, "local_size": 48, "n_global": 2, "n_local": 6,
        "K": 65536, "hidden_dim": 2048, "out_dim": 256, "balancer": "excb", "steps": 2}
QUICK = {**FULL, "batch": 4, "global_size": 32, "local_size": 16, "n_local": 2, "K": 1024, "hidden_dim": 256,
         "out_dim": 64, "steps": 1}


def make_cfg(s: Dict[str, Any]) -> Dict[str, Any]:
    """A resolved pretraining config for the benchmark settings (one epoch of ``steps`` steps)."""
    from excb.train import PRETRAIN_DEFAULTS

    cfg = copy.deepcopy(PRETRAIN_DEFAULTS)
    cfg["backbone"].update(name=s["backbone"], stem="standard")
    cfg["head"].update(hidden_dim=s["hidden_dim"], out_dim=s["out_dim"], predictor_hidden_dim=s["hidden_dim"])
    cfg["centroids"]["K"] = s["K"]
    cfg["balancer"]["name"] = s["balancer"]
    cfg["augment"].update(global_size=s["global_size"], local_size=s["local_size"], n_global=s["n_global"],
                          n_local=s["n_local"])
    cfg["optim"]["warmup_epochs"] = 0
    cfg.update(batch_size=s["batch"], epochs=1, num_workers=0, log_every=10 ** 9)
    return cfg


def settings_from_cfg(cfg: Dict[str, Any], steps: int = 1) -> Dict[str, Any]:
    """Benchmark settings (``FULL``'s keys) read from a resolved pretraining config."""
    a, h = cfg["augment"], cfg["head"]
    return {"backbone": cfg["backbone"]["name"], "batch": cfg["batch_size"], "global_size": a["global_size"],
            "local_size": a["local_size"], "n_global": a["n_global"], "n_local": a["n_local"],
            "K": cfg["centroids"]["K"], "hidden_dim": h["hidden_dim"], "out_dim": h["out_dim"],
            "balancer": cfg["balancer"]["name"], "steps": steps}


def make_views(s: Dict[str, Any], seed: int = 0) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b = s["batch"]
    return ([torch.randn(b, 3, s["global_size"], s["global_size"], generator=g) for _ in range(s["n_global"])]
            + [torch.randn(b, 3, s["local_size"], s["local_size"], generator=g) for _ in range(s["n_local"])])


class StepSetup:
    """Models, balancer, optimiser and a fixed batch for repeated ExCB steps."""

    def __init__(self, s: Dict[str, Any], cfg: Dict[str, Any] | None = None):
        """``cfg``: a resolved pretraining config to use instead of ``make_cfg(s)`` (``s`` must agree
        with it on batch, view sizes/counts, K and steps; ``settings_from_cfg`` derives it)."""
        from excb.balancing import create_balancer
        from excb.io import JsonlLogger
        from excb.model import build_models
        from excb.train import build_optimizer, build_schedules, place_models

        torch.manual_seed(0)
        self.s = s
        self.cfg = cfg = copy.deepcopy(cfg) if cfg is not None else make_cfg(s)
        self.student, self.teacher = build_models(cfg["backbone"], cfg["head"], s["K"])
        place_models(self.student, self.teacher, cfg, torch.device("cpu"))   # the training memory format
        self.teacher.load_state_dict({k: v for k, v in self.student.state_dict().items()
                                      if not k.startswith("predictor.")})
        b = cfg["balancer"]
        self.balancer = create_balancer(b["name"], s["K"], **{k: v for k, v in b.items() if k != "name"})
        self.optimizer = build_optimizer(self.student, cfg)
        self.views = make_views(s)
        self.labels = torch.zeros(s["batch"], dtype=torch.long)
        self.loader = [(self.views, self.labels)] * s["steps"]
        self.schedules = build_schedules(cfg, s["steps"])
        self.logger = JsonlLogger("/dev/null", enabled=False)
        self.student.train()
        self.teacher.train()

    def excb_steps(self) -> None:
        """``steps`` real training steps through the library's own epoch loop."""
        from excb.train import train_one_epoch

        train_one_epoch(self.student, self.student, self.teacher, self.balancer, self.optimizer, None, self.loader,
                        self.schedules, 0, self.cfg, torch.device("cpu"), self.logger, progress=False)

    def excb_steps_literal(self) -> None:
        """The same steps with the literal Eq. 7 / centroid / Eq. 10 code of ``reference_step.py``."""
        from benchmarks.perf.reference_step import patched

        with patched():
            self.excb_steps()

    def baseline_steps(self) -> None:
        """The same number of bare backbone steps: student fwd+bwd on all views, teacher fwd on globals."""
        G = self.s["n_global"]
        f_s, f_t = self.student.backbone, self.teacher.backbone
        for _ in range(self.s["steps"]):
            with torch.no_grad():
                f_t(torch.cat(self.views[:G]))
            out = f_s(torch.cat(self.views[:G])).sum()
            if len(self.views) > G:
                out = out + f_s(torch.cat(self.views[G:])).sum()
            self.student.zero_grad(set_to_none=True)
            out.backward()

    def breakdown(self, repeat: int = 3) -> Dict[str, float]:
        """Median seconds of each part of one step, mirroring ``train_one_epoch``'s order."""
        from excb.loss import excb_loss

        cfg, G = self.cfg, self.s["n_global"]
        parts: Dict[str, List[float]] = {}

        def tick(name: str, t0: float) -> float:
            t = time.perf_counter()
            parts.setdefault(name, []).append(t - t0)
            return t

        for _ in range(repeat):
            t = time.perf_counter()
            with torch.no_grad():
                z_t = self.teacher(self.views[:G]).flatten(0, 1).float()
            t = tick("teacher forward (backbone+heads)", t)
            p_t, assign = self.balancer.teacher_probs(z_t, cfg["loss"]["teacher_temp"])
            t = tick("balancer teacher_probs", t)
            z_h, z_g = self.student(self.views, G, True)
            t = tick("student forward (backbone+heads)", t)
            loss, _ = excb_loss(p_t.view(G, -1, p_t.shape[-1]), z_h, z_g, cfg["loss"]["student_temp"], cfg["loss"]["pairs"])
            t = tick("loss (Eq. 7)", t)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t = tick("backward", t)
            self.optimizer.step()
            t = tick("optimizer step", t)
            self.balancer.update(z_t, assign)
            t = tick("balancer update", t)
            self.teacher.ema_update(self.student, 0.996)
            tick("teacher EMA", t)
        return {k: median(v) for k, v in parts.items()}


def main(argv=None) -> int:
    p = add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter),
                        warmup=1, repeat=5)
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-part breakdown")
    p.add_argument("--no-literal", action="store_true", help="skip the step with the literal formulas (reference_step.py)")
    p.add_argument("--flops", action="store_true", help="also count FLOPs of both steps (FlopCounterMode): the compute floor")
    args = p.parse_args(argv)
    setup_threads(args.threads)
    s = dict(QUICK if args.quick else FULL)
    st = StepSetup(s)
    cands = {"excb_step": st.excb_steps, "backbone_only": st.baseline_steps}
    if not args.no_literal:
        cands["excb_step_literal"] = st.excb_steps_literal
    times = interleaved(cands, args.warmup, 1 if args.quick else args.repeat)
    times = {k: [t / s["steps"] for t in v] for k, v in times.items()}  # seconds per step
    extra = {}
    if not args.no_breakdown:
        bd = st.breakdown(1 if args.quick else 3)
        tot = sum(bd.values())
        extra["breakdown (median ms, % of sum)"] = {k: f"{1e3 * v:.1f} ms ({100 * v / tot:.1f}%)" for k, v in bd.items()}
    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode

        counts = {}
        for name, fn in (("excb_step", st.excb_steps), ("backbone_only", st.baseline_steps)):
            with FlopCounterMode(display=False) as fc:
                fn()
            counts[name] = fc.get_total_flops() / s["steps"]
        extra["FLOPs per step (matmul/conv)"] = (f"ExCB {counts['excb_step'] / 1e9:.1f} G, backbone only "
                                                 f"{counts['backbone_only'] / 1e9:.1f} G, ratio "
                                                 f"{counts['excb_step'] / counts['backbone_only']:.3f} (the compute floor)")
    settings = {k: v for k, v in s.items()}
    r = report("ExCB training step vs bare multi-crop backbone step", settings, times,
               {"excb_step / backbone_only": ("excb_step", "backbone_only", 1.2, "<="),
                **({} if args.no_literal else
                   {"excb_step_literal / backbone_only": ("excb_step_literal", "backbone_only", None, "<="),
                    "excb_step / excb_step_literal": ("excb_step", "excb_step_literal", None, "<=")})},
               extra=extra,
               json_path=args.json)
    return 0 if r else 1


if __name__ == "__main__":
    raise SystemExit(main())
