"""The stage registry: a name -> where its ``run(cfg, run_dir)`` and ``DEFAULTS`` live.

Modules are imported lazily, so a stage whose optional dependency is missing (Detectron2)
only matters when that stage runs. A stage needing the pretrained backbone declares
``uses_checkpoint``; the pipeline fills its ``checkpoint`` key and re-runs it when the
checkpoint's sha256 changes.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional


@dataclass(frozen=True)
class Stage:
    name: str
    module: str
    run_attr: str = "run"
    defaults_attr: str = "DEFAULTS"
    uses_checkpoint: bool = True
    summary: str = ""
    fixed: Dict[str, Any] = field(default_factory=dict)   # config keys the stage always sets
    validate_attr: str = "validate"   # validate(cfg, source): checked for every stage before any runs

    def validator(self) -> Optional[Callable[..., None]]:
        return getattr(self.load(), self.validate_attr, None)

    def load(self):
        return importlib.import_module(self.module)

    def defaults(self) -> Dict[str, Any]:
        import copy

        d = copy.deepcopy(getattr(self.load(), self.defaults_attr))
        for k, v in self.fixed.items():
            d[k] = v
        return d

    def runner(self) -> Callable[[Dict[str, Any], Any], Dict[str, Any]]:
        return getattr(self.load(), self.run_attr)


STAGES: Dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    STAGES[stage.name] = stage
    return stage


register(Stage("pretrain", "excb.train", run_attr="train", defaults_attr="PRETRAIN_DEFAULTS", uses_checkpoint=False,
               validate_attr="validate_config",
               summary="ExCB pretraining (SPEC sections 1-5)"))
register(Stage("knn", "benchmarks.knn", summary="20-NN weighted vote on frozen features (DINO protocol)"))
register(Stage("linear", "benchmarks.linear", summary="linear probe on the frozen backbone"))
register(Stage("semisup_1", "benchmarks.semisup", summary="semi-supervised fine-tuning on 1 % (or --percent 10) of the labels", fixed={"percent": 1}))
register(Stage("semisup_10", "benchmarks.semisup", summary="fine-tuning on 10 % of the labels", fixed={"percent": 10}))
register(Stage("detect", "detection.train", summary="Mask R-CNN R50-C4 COCO transfer (Detectron2)"))
register(Stage("sanity_random", "benchmarks.knn", summary="k-NN of a randomly initialised backbone (sanity row)"))
register(Stage("sanity_pixels", "benchmarks.knn", summary="k-NN on raw pixels (sanity row)"))
register(Stage("leaderboard", "benchmarks.leaderboard", uses_checkpoint=False,
               summary="tables beside the paper's baselines (Markdown, LaTeX, CSV)"))
register(Stage("figures", "benchmarks.figures", uses_checkpoint=False,
               summary="training statistics, cluster sizes, t-SNE (PNG)"))

# Where a stage's folder lives inside a run directory: sanity rows use the leaderboard's layout.
STAGE_DIRS = {"sanity_random": "sanity_random/knn", "sanity_pixels": "sanity_pixels/knn"}


def stage_dir_name(name: str) -> str:
    return STAGE_DIRS.get(name, name)


def get_stage(name: str) -> Stage:
    if "@" in name:   # STAGE@KEY: an evaluation stage on another checkpoint (excb_bench/compare.py)
        name = name.split("@", 1)[0]
    if name not in STAGES:
        import difflib

        near = difflib.get_close_matches(name, list(STAGES), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else f"; stages: {', '.join(STAGES)}"
        from excb import ExcbError

        raise ExcbError(f"unknown stage '{name}'{hint}")
    return STAGES[name]
