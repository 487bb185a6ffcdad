"""``excb-bench``: one command for pretraining, every downstream stage, and the whole pipeline.

    excb-bench run-all                       # the embedded CPU demo, end to end
    excb-bench run-all --config configs/pipelines/r50_imagenet.yaml data.root=/data/imagenet
    excb-bench run-all --only linear --force linear
    excb-bench pretrain --config configs/pretrain/r50_mc_400ep.yaml
    excb-bench knn --checkpoint runs/demo/pretrain/checkpoint.pth --config configs/eval/demo_knn.yaml
    excb-bench eval --checkpoint dino_resnet50_pretrain.pth --format auto --stages knn,linear
    excb-bench leaderboard --runs runs/demo
    excb-bench export --checkpoint runs/own/checkpoint.pth --to torchvision --out resnet50_excb.pth

Errors are one line (file/key/value and a hint); ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from excb import ExcbError, one_line as _one_line

STAGE_COMMANDS = {
    "knn": "knn", "linear": "linear", "semisup": None, "detect": "detect", "leaderboard": "leaderboard",
    "figures": "figures",
}

OVERRIDE_HELP = "dotted key=value overrides of the config, e.g. epochs=200 optim.lr=0.3 (validated: a typo is an error)"


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    p.add_argument("--offline", action="store_true", help="zoo:NAME checkpoints only from the cache or "
                                                          "EXCB_ZOO_MIRROR, never downloaded (= EXCB_OFFLINE=1)")


def _add_stage_args(p: argparse.ArgumentParser, stage: str) -> None:
    p.add_argument("--config", "-c", help=f"stage YAML (see configs/eval/ or configs/detection/); keys are validated "
                                          f"against the stage's defaults")
    p.add_argument("--output-dir", "-o", help=f"folder for results.json, logs and resumable state (default runs/{stage})")
    p.add_argument("--run", help="a pipeline run directory: rerun this stage inside it (same as "
                                 "run-all --config <run>/config.yaml --only STAGE --force STAGE)")
    if stage not in ("leaderboard", "figures"):
        p.add_argument("--checkpoint", help="backbone checkpoint (ours or third-party; see `excb-bench formats`), "
                                            "or zoo:NAME (see `excb-bench zoo list`)")
        p.add_argument("--format", default=None, help="checkpoint format (default auto-detect)")
        p.add_argument("--which", default=None, choices=["teacher", "student"], help="which network of a "
                                                                                  "teacher/student checkpoint (default teacher)")
        p.add_argument("--arch", default=None, help="backbone architecture when it cannot be inferred (e.g. resnet50)")
        p.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling of the checkpoint "
                                                                       "(executes code from the file: only for files you trust)")
        p.add_argument("--data-root", help="ImageFolder root with train/ and val/ (sets data.name=imagefolder)")
    if stage == "semisup":
        p.add_argument("--percent", type=int, choices=[1, 10], default=1, help="labelled fraction (SimCLR's 1 %% / 10 %% splits)")
    if stage == "detect":
        p.add_argument("--coco", help="COCO root (annotations/instances_{train,val}2017.json, train2017/, val2017/)")
        p.add_argument("--num-gpus", type=int, help="GPUs per machine (Detectron2's launcher)")
        p.add_argument("--eval-only", action="store_true", help="evaluate the finished model in the output dir")
    if stage == "leaderboard":
        p.add_argument("--runs", nargs="+", help="run directories whose results join the tables (default: runs/demo)")
    if stage == "figures":
        p.add_argument("--runs", nargs=1, help="the run directory to plot (default: runs/demo)")
    p.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="excb-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run-all", help="pretrain, evaluate, tabulate and plot (default: the embedded CPU demo)",
                       description="Run every stage of a pipeline config into one run directory. Finished stages whose "
                                   "inputs did not change are skipped; interrupted ones resume.")
    p.add_argument("--config", "-c", help="pipeline YAML (default configs/pipelines/demo.yaml)")
    p.add_argument("--output-dir", "-o", help="run directory (default: the config's output_dir)")
    p.add_argument("--only", action="append", default=[], metavar="STAGE", help="run only this stage (repeatable)")
    p.add_argument("--force", action="append", default=[], metavar="STAGE", help="rerun this stage even if up to date")
    p.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun this stage and every later one")
    p.add_argument("--launcher", choices=["local", "slurm"], help="where stages run: here, one after another "
                   "(local, the default) or each as a SLURM job via submitit (slurm; settings under slurm.*, "
                   "e.g. slurm.partition=gpu slurm.nodes=2)")
    p.add_argument("overrides", nargs="*", help="overrides; stage keys are prefixed by the stage, e.g. "
                                                "linear.epochs=10 pretrain.epochs=3")
    _add_common(p)

    p = sub.add_parser("pretrain", help="ExCB pretraining (also: torchrun -m excb)",
                       description="Pretrain ExCB. Under torchrun it runs data-parallel. Rerunning resumes.")
    from excb.train import build_arg_parser

    build_arg_parser(p)
    _add_common(p)

    for name in ("knn", "linear", "semisup", "detect", "leaderboard", "figures"):
        from excb_bench.stages import STAGES

        summary = STAGES["semisup_1" if name == "semisup" else name].summary
        p = sub.add_parser(name, help=summary.replace("%", "%%"), description=summary)  # only help is %-formatted
        _add_stage_args(p, name)
        _add_common(p)

    p = sub.add_parser("eval", help="evaluate a third-party backbone; its rows join the leaderboard",
                       description="Run downstream stages on any checkpoint the format registry loads, inside a run "
                                   "directory (eval_<label>/), then refresh the leaderboard there.")
    p.add_argument("--checkpoint", required=True, help="checkpoint file, or zoo:NAME (see `excb-bench zoo list`)")
    p.add_argument("--format", default="auto", help="checkpoint format (default auto; see `excb-bench formats`)")
    p.add_argument("--which", default="teacher", choices=["teacher", "student"])
    p.add_argument("--arch", help="backbone architecture if it cannot be inferred (e.g. resnet50)")
    p.add_argument("--trust-checkpoint", action="store_true", help="allow full unpickling (executes code from the file)")
    p.add_argument("--stages", default="knn,linear", help="comma-separated: knn,linear,semisup_1,semisup_10,detect")
    p.add_argument("--label", help="row label in the tables (default: the file name or zoo name); results are "
                                   "kept in eval_<sha256 of the checkpoint>/, so the label is for display only")
    p.add_argument("--config", "-c", help="pipeline YAML whose stage sections are used (default: the demo pipeline)")
    p.add_argument("--output-dir", "-o", help="run directory (default: the pipeline's output_dir)")
    p.add_argument("overrides", nargs="*", help="stage overrides, e.g. knn.k=[20]")
    _add_common(p)

    from excb.export import add_arguments as add_export_arguments

    p = sub.add_parser("export", help="write a backbone as a plain torchvision/timm state dict (+ key-map JSON)",
                       description="Export the backbone of a checkpoint so torchvision.models.resnet50() or "
                                   "timm.create_model(...) loads it with strict=True; see excb/export.py.")
    add_export_arguments(p)
    _add_common(p)

    p = sub.add_parser("status", help="per stage: state, job, progress, images/s, ETA, last metrics or error",
                       description="Where a run stands, from its files: works while it runs, after it finished "
                                   "and after it failed.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (run-all's --output-dir)")
    p.add_argument("--watch", nargs="?", type=float, const=10.0, metavar="SECONDS",
                   help="refresh every SECONDS (default 10) until every stage has settled")
    _add_common(p)

    p = sub.add_parser("formats", help="list the checkpoint formats `--format` accepts")
    _add_common(p)

    from excb_bench.zoo_cli import add_parser as add_zoo_parser

    add_zoo_parser(sub)

    p = sub.add_parser("study", help="the small-batch balancing study (balancer x batch grid)",
                       description="Train with each balancer at each batch size on the same data and budget; report "
                                   "k-NN top-1 and cluster usage.")
    p.add_argument("what", choices=["balancers"])
    p.add_argument("--config", "-c", help="study YAML (default configs/study/balancers_demo.yaml)")
    p.add_argument("--output-dir", "-o", help="study directory (default runs/study-balancers)")
    p.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    _add_common(p)
    return ap


# ----------------------------------------------------------------------------- commands
def cmd_run_all(args) -> int:
    from excb_bench.pipeline import DEMO_PIPELINE, resolve_pipeline, run_pipeline

    path = args.config or DEMO_PIPELINE
    cfg = resolve_pipeline(path, list(args.overrides) + ([f"launcher={args.launcher}"] if args.launcher else []))
    run_dir = Path(args.output_dir or cfg["output_dir"])
    t0 = time.time()
    statuses = run_pipeline(cfg, run_dir, only=args.only, force=args.force, from_stage=args.from_stage)
    print("[excb-bench] " + ", ".join(f"{k}: {v}" for k, v in statuses.items()))
    from excb_bench.pipeline import Manifest
    from excb_bench.run_summary import stage_times_table

    print(stage_times_table(statuses, Manifest(run_dir).data, time.time() - t0))
    board = run_dir / "leaderboard" / "leaderboard.md"
    if "leaderboard" in cfg["stages"] and board.exists():
        print()
        print(board.read_text())
    return 0


def _stage_cfg_from_args(stage_name: str, args) -> dict:
    from excb.config import resolve_config
    from excb_bench.stages import get_stage

    stage = get_stage(stage_name)
    defaults = stage.defaults()
    extra: List[str] = []
    if getattr(args, "checkpoint", None):
        extra.append(f"checkpoint={args.checkpoint}")
    for flag, key in (("format", "format"), ("which", "which"), ("arch", "arch")):
        if getattr(args, flag, None):
            extra.append(f"{key}={getattr(args, flag)}")
    if getattr(args, "trust_checkpoint", False) and "trust_checkpoint" in defaults:
        extra.append("trust_checkpoint=true")
    if getattr(args, "data_root", None):
        extra += ["data.name=imagefolder", f"data.root={args.data_root}"]
    if stage_name == "detect":
        for flag, key in (("coco", "coco_root"), ("num_gpus", "num_gpus")):
            if getattr(args, flag, None) is not None:
                extra.append(f"{key}={getattr(args, flag)}")
        if getattr(args, "coco", None) is not None:
            extra.append("dataset=coco")  # --coco wins over a config's generated set (configs/detection/demo.yaml)
        if args.eval_only:
            extra.append("eval_only=true")
    if stage_name in ("leaderboard", "figures") and getattr(args, "runs", None):
        extra.append(f"runs={list(args.runs)}" if stage_name == "leaderboard" else f"run={args.runs[0]}")
    cfg = resolve_config(defaults, args.config, extra + list(args.overrides))
    cfg.update(stage.fixed)
    return cfg


def _require_run_dirs(runs) -> None:
    """``leaderboard --runs`` / ``figures --runs`` name run directories: a missing one is an error, not an
    empty table."""
    for r in runs or []:
        p = Path(str(r))
        if not p.is_dir():
            raise ExcbError(f"--runs: run directory '{p}' {'is not a directory' if p.exists() else 'not found'}; "
                            f"pass the -o/--output-dir of a run-all (e.g. runs/demo)")


def cmd_stage(name: str, args) -> int:
    stage_name = f"semisup_{args.percent}" if name == "semisup" else name
    if args.run:
        from excb_bench.pipeline import resolve_pipeline, run_pipeline

        cfg_path = Path(args.run) / "config.yaml"
        cfg = resolve_pipeline(cfg_path, [f"{stage_name}.{o}" for o in args.overrides])
        run_pipeline(cfg, Path(args.run), only=[stage_name], force=[stage_name])
        return 0
    from excb_bench.stages import get_stage
    from excb_bench.pipeline import RunLock

    cfg = _stage_cfg_from_args(stage_name, args)
    if name == "leaderboard" and not cfg.get("runs"):
        cfg["runs"] = ["runs/demo"]
    if name == "figures" and not cfg.get("run"):
        cfg["run"] = "runs/demo"
    _require_run_dirs(cfg.get("runs") if name == "leaderboard" else [cfg.get("run")] if name == "figures" else [])
    out = Path(args.output_dir or f"runs/{stage_name}")
    with RunLock(out):
        res = get_stage(stage_name).runner()(cfg, out)
    metrics = res.get("metrics", {}) if isinstance(res, dict) else {}
    print(f"[excb-bench] {stage_name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                 for k, v in list(metrics.items())[:12]))
    print(f"[excb-bench] results: {out / 'results.json'}")
    return 0


def cmd_pretrain(args, argv: List[str]) -> int:
    """Pretraining under the run lock (rank 0 only under torchrun: the ranks share one directory)."""
    from excb.train import main as pretrain_main
    from excb_bench.pipeline import RunLock

    name = Path(args.config).stem if args.config else "default"
    out = Path(args.output_dir or f"runs/pretrain-{name}")
    if os.environ.get("RANK", "0") != "0":
        return pretrain_main(argv)
    with RunLock(out):
        return pretrain_main(argv)


def cmd_eval(args) -> int:
    from excb.io import sha256_file_cached
    from excb.zoo import is_zoo_ref, resolve_checkpoint, zoo_name
    from excb_bench.eval_dirs import claim_eval_dir
    from excb_bench.pipeline import DEMO_PIPELINE, resolve_pipeline, run_pipeline

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if is_zoo_ref(args.checkpoint):   # fetched (or found in the cache/mirror) now; stages keep the zoo: name
        path, _, _, _ = resolve_checkpoint(args.checkpoint)
        ck_value, label = args.checkpoint, args.label or zoo_name(args.checkpoint)
        zoo = zoo_name(args.checkpoint)
    else:
        path = Path(args.checkpoint)
        if not path.is_file():
            raise ExcbError(f"{path}: checkpoint not found" + (" (is a directory)" if path.is_dir() else ""))
        ck_value, label, zoo = str(path.resolve()), args.label or path.stem, None
    # only the asked stages on this checkpoint: the pipeline's own compare section (e.g. the demo's
    # "one epoch earlier" row) belongs to run-all, not to an eval folder
    over = [f"stages={stages}", "compare=null"]
    for s in stages:
        over += [f"{s}.checkpoint={ck_value}", f"{s}.format={args.format}", f"{s}.which={args.which}"]
    over += list(args.overrides)
    cfg = resolve_pipeline(args.config or DEMO_PIPELINE, over)
    if args.arch or args.trust_checkpoint:
        for s in stages:
            if args.arch and "arch" in cfg[s]:
                cfg[s]["arch"] = args.arch
            if args.trust_checkpoint and "trust_checkpoint" in cfg[s]:
                cfg[s]["trust_checkpoint"] = True
    base = Path(args.output_dir or cfg["output_dir"])
    # the folder is keyed by the checkpoint's content (and teacher/student); the label is for display
    run_dir = claim_eval_dir(base, sha256_file_cached(path), label, which=args.which, checkpoint=str(args.checkpoint),
                             zoo=zoo, trusted=bool(args.trust_checkpoint), explicit_label=bool(args.label))
    print(f"[excb-bench] eval '{label}': {run_dir}")
    run_pipeline(cfg, run_dir)
    # refresh the tables of the enclosing run so the new rows appear beside ours
    board_cfg = resolve_pipeline(args.config or DEMO_PIPELINE, ["stages=[leaderboard]", "compare=null"])
    run_pipeline(board_cfg, base, only=["leaderboard"])
    board = base / "leaderboard" / "leaderboard.md"
    if board.exists():
        print(board.read_text())
    return 0


def cmd_formats(args) -> int:
    from excb.checkpoint_formats import list_formats

    for f in list_formats():
        print(f)
    return 0


def cmd_study(args) -> int:
    from benchmarks.study import main as study_main

    return study_main(args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "offline", False) is True:
        os.environ["EXCB_OFFLINE"] = "1"   # read by excb.zoo here and in any process this one starts
    try:
        if args.command == "run-all":
            return cmd_run_all(args)
        if args.command == "pretrain":
            return cmd_pretrain(args, [a for a in argv[1:] if a not in ("--debug", "--offline")])
        if args.command == "eval":
            return cmd_eval(args)
        if args.command == "status":
            from excb_bench.status import main as status_main

            return status_main(args.run_dir, args.watch)
        if args.command == "formats":
            return cmd_formats(args)
        if args.command == "export":
            from excb.export import main as export_main

            return export_main(args)
        if args.command == "study":
            return cmd_study(args)
        if args.command == "zoo":
            from excb_bench.zoo_cli import cmd_zoo

            return cmd_zoo(args)
        return cmd_stage(args.command, args)
    except ExcbError as e:
        if args.debug:
            raise
        print(f"excb-bench: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("excb-bench: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - DataLoader workers wrap our errors in their own type
        if args.debug or "ExcbError" not in str(e):
            raise
        print(f"excb-bench: error: {_one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
