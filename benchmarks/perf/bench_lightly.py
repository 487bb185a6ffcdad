"""Benchmark 2: an ExCB step against the peer a user would pick — a DINO step of ``lightly``.

    pip install "excb-bench[perf]"                       # lightly is an optional extra
    python -m benchmarks.perf.bench_lightly              # ResNet-18, 2x96 + 6x48 px, batch 32, K 65,536, CPU
    python -m benchmarks.perf.bench_lightly --quick

Both steps use the same torchvision backbone, the same views (batched per resolution, as both
DINO and ExCB do), the same batch, SGD with momentum, an EMA teacher and heads sized alike:
lightly's ``DINOProjectionHead(512, 2048, 256, 65536, batch_norm=True)`` (3-layer MLP,
bottleneck 256, weight-normalised 65,536-way last layer) + ``DINOLoss`` (centering), against
ExCB's projector (512-2048-256, BN) + predictor + 65,536 centroids + Eq. 7 + ClusterBalancer,
run through ``excb.train.train_one_epoch``. Both use the fused SGD kernel and the same process-wide
allocator setting (``excb.cpu.tune_malloc``); the EMA update is each library's own. Ratio = ExCB step / lightly DINO step; target <= 1.0.
Skips (exit 0, with a message) when lightly is not installed.
"""
from __future__ import annotations

import argparse
import torch

from benchmarks.perf._timing import add_common_args, interleaved, report, setup_threads
from benchmarks.perf.bench_step import FULL, QUICK, StepSetup, make_views


class LightlyDino:
    """A DINO training step written the way lightly's documentation writes it."""

    def __init__(self, s, lr: float = 0.15 * 32 / 256):
        from lightly.loss import DINOLoss
        from lightly.models.modules import DINOProjectionHead
        from lightly.models.utils import update_momentum
        from torch import nn

        from excb.backbones import create_backbone

        torch.manual_seed(0)
        self.s = s
        self.update_momentum = update_momentum
        def build():
            backbone, dim = create_backbone(s["backbone"])
            head = DINOProjectionHead(dim, s["hidden_dim"], s["out_dim"], s["K"], batch_norm=True)
            return nn.ModuleDict({"backbone": backbone, "head": head})

        self.student = build()
        self.teacher = build()  # weight-normed heads cannot be deep-copied: build, then copy the weights
        self.teacher.load_state_dict(self.student.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.criterion = DINOLoss(output_dim=s["K"], warmup_teacher_temp_epochs=0)
        # the same fused SGD kernel excb.train.build_optimizer uses, so the optimiser is not the difference
        self.optimizer = torch.optim.SGD(self.student.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4, fused=True)
        self.views = make_views(s)
        self.student.train()
        self.teacher.train()

    def _forward(self, net, views):
        G = self.s["n_global"]
        groups = [views[:G], views[G:]] if len(views) > G else [views[:G]]
        outs = [net["head"](net["backbone"](torch.cat(g))) for g in groups if g]
        return list(torch.cat(outs).chunk(len(views)))

    def steps(self) -> None:
        G = self.s["n_global"]
        for _ in range(self.s["steps"]):
            self.update_momentum(self.student, self.teacher, m=0.996)
            with torch.no_grad():
                t_out = self._forward(self.teacher, self.views[:G])
            s_out = self._forward(self.student, self.views)
            loss = self.criterion(t_out, s_out, epoch=0)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()


def main(argv=None) -> int:
    p = add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter),
                        warmup=1, repeat=5)
    args = p.parse_args(argv)
    try:
        import lightly  # noqa: F401
    except ImportError:
        print("bench_lightly: skipped — lightly is not installed (pip install 'excb-bench[perf]' or pip install lightly)")
        return 0
    setup_threads(args.threads)
    s = dict(QUICK if args.quick else FULL)
    excb = StepSetup(s)
    dino = LightlyDino(s, lr=0.15 * s["batch"] / 256)
    cands = {"excb_step": excb.excb_steps, "lightly_dino_step": dino.steps}
    times = interleaved(cands, args.warmup, 1 if args.quick else args.repeat)
    times = {k: [t / s["steps"] for t in v] for k, v in times.items()}
    n_ex = sum(p.numel() for p in excb.student.parameters())
    n_di = sum(p.numel() for p in dino.student.parameters())
    report("ExCB step vs lightly DINO step", {**s, "lightly": lightly.__version__}, times,
           {"excb_step / lightly_dino_step": ("excb_step", "lightly_dino_step", 1.0, "<=")},
           extra={"student parameters": f"ExCB {n_ex / 1e6:.1f} M, lightly DINO {n_di / 1e6:.1f} M"},
           json_path=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
