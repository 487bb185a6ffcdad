"""The pipeline: one run directory, a manifest, a lock, and stages that rerun only when needed.

Run directory layout::

    <run>/config.yaml          the resolved pipeline config
    <run>/manifest.json        per stage: status, input hash and inputs, outputs, times, git, versions
    <run>/<stage>/results.json every stage's result (see DESIGN.md's contract)
    <run>/.lock                held (flock) while a process works on the run

A stage is skipped when its manifest entry is complete, its results.json exists and its
input hash (resolved stage config + the sha256 of the checkpoint it reads + the results it
summarises) is unchanged. A stage whose inputs changed is moved aside to ``<stage>.prev``
and rerun; an interrupted stage resumes from its own checkpoints.
"""
from __future__ import annotations

import copy
import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from excb import ExcbError, one_line
from excb import distributed as D
from excb.config import dump_yaml, load_yaml, merge_section, resolve_config, split_overrides
from excb.data import DATA_DEFAULTS, validate_data
from excb.io import atomic_write_json, atomic_write_text, package_versions, read_json, sha256_file_cached, sha256_json
from excb.zoo import is_zoo_ref, resolve_checkpoint
from excb_bench.compare import expand as expand_compare, is_compare_stage, resolve_run_path
from excb_bench.compare import stage_dir as compare_stage_dir
from excb_bench.launchers import SLURM_DEFAULTS
from excb_bench.stages import STAGES, get_stage, stage_dir_name

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_PIPELINE = REPO_ROOT / "configs" / "pipelines" / "demo.yaml"

PIPELINE_DEFAULTS: Dict[str, Any] = {
    "name": "demo",
    "output_dir": "runs/demo",
    "seed": 0,
    "data": None,            # a data section applied to every stage (None: each stage's own)
    "compare": None,         # more checkpoints through the evaluation stages (excb_bench/compare.py)
    "stages": ["pretrain", "knn", "linear", "semisup_1", "semisup_10", "detect", "sanity_random", "sanity_pixels",
               "leaderboard", "figures"],
    "launcher": "local",     # local: stages run here, one after another | slurm: each stage a job (launchers.py)
    "slurm": dict(SLURM_DEFAULTS),
}
# Per-stage sections: {"config": "<stage yaml>", ...inline keys...}
SECTION_META_KEYS = ("config",)
SUMMARY_STAGES = ("leaderboard", "figures")


# ----------------------------------------------------------------------------- config
def resolve_pipeline(path: Optional[str | Path], overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """Resolve the pipeline config and every stage section it runs (validated, one-line errors)."""
    raw = load_yaml(path) if path else {}
    source = str(path) if path else "pipeline"
    top_over, per_over = split_overrides(overrides, STAGES)
    top_raw = {k: v for k, v in raw.items() if k not in STAGES and not is_compare_stage(k)}
    # the file's own keys are validated under the file's name, so a typo names the file
    cfg = merge_section(copy.deepcopy(PIPELINE_DEFAULTS), top_raw, PIPELINE_DEFAULTS, source)
    cfg = resolve_config(PIPELINE_DEFAULTS, None, top_over, base=cfg)
    cfg["stages"] = [s for s in cfg["stages"] if not is_compare_stage(s)]   # re-made from 'compare' below
    for s in cfg["stages"]:
        get_stage(s)
    compared = list((cfg.get("compare") or {}).get("stages") or []) if isinstance(cfg.get("compare"), dict) else []
    for k in list(per_over):
        if k not in cfg["stages"] and k not in compared:
            raise ExcbError(f"override '{k}.…': stage '{k}' is not in this pipeline's stages ({', '.join(cfg['stages'])})")
    base_dir = Path(path).parent if path else REPO_ROOT

    def section_for(name: str) -> Dict[str, Any]:
        if name not in cfg:
            cfg[name] = _resolve_section(name, raw, cfg, per_over, base_dir, source)
        return cfg[name]

    for name in cfg["stages"]:
        section_for(name)
    expand_compare(cfg, section_for, source)
    for name in compared:   # sections resolved only to seed the compare stages
        if name not in cfg["stages"]:
            cfg.pop(name, None)
    return cfg


def _resolve_section(name: str, raw: Dict[str, Any], cfg: Dict[str, Any], per_over: Dict[str, List[str]],
                     base_dir: Path, source: str) -> Dict[str, Any]:
    """One stage's config: defaults <- pipeline data/seed <- its YAML <- inline keys <- overrides."""
    if True:
        stage = get_stage(name)
        defaults = stage.defaults()
        section = dict(raw.get(name) or {})
        yaml_path = section.pop("config", None)
        if yaml_path is not None:
            yaml_path = _find_config(yaml_path, base_dir)
        seeded: Dict[str, Any] = {}
        if cfg["data"] is not None and "data" in defaults:
            seeded["data"] = {**DATA_DEFAULTS, **cfg["data"]}
        if "seed" in defaults:
            seeded["seed"] = cfg["seed"]
        scfg = resolve_config(defaults, yaml_path, (), base=seeded)
        scfg = merge_section(scfg, section, defaults, f"{source}: section '{name}'")
        scfg = resolve_config(defaults, None, [f"{o}" for o in per_over.get(name, [])], base=scfg, label=f"{name}.")
        scfg.update(copy.deepcopy(stage.fixed))
    return scfg


def _find_config(p: str, base_dir: Path) -> Path:
    for cand in (Path(p), base_dir / p, REPO_ROOT / p):
        if cand.exists():
            return cand
    raise ExcbError(f"config file '{p}' not found (looked relative to the working directory, {base_dir} and {REPO_ROOT})")


# ----------------------------------------------------------------------------- lock
_HELD: Dict[str, int] = {}   # lock files this process holds (flock conflicts even within one process)


def _holder_if_locked(lock_path: Path) -> Optional[str]:
    """Who holds ``lock_path`` if another process does, else None (probes without keeping the lock)."""
    if str(lock_path) in _HELD or not lock_path.exists():
        return None
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return os.read(fd, 200).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)   # closing also drops the probe's shared lock
    return None


# atomic_write's temporaries: ".<target name>.<mkstemp's 8 random characters>.tmp"
_ORPHAN = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def _sweep_orphaned_temporaries(run_dir: Path) -> None:
    """Delete temporaries of atomic writes that a kill interrupted (a feature bank or checkpoint can be
    gigabytes). Safe only while holding the run lock: then no other process is writing here."""
    n, size = 0, 0
    for p in run_dir.rglob(".*.tmp"):
        if _ORPHAN.match(p.name) and p.is_file():
            try:
                size += p.stat().st_size
                p.unlink()
                n += 1
            except OSError:
                pass
    if n:
        print(f"[excb-bench] removed {n} orphaned temporary file(s) ({size / 2**20:.0f} MiB) left by an "
              f"interrupted write")


def require_directory(run_dir: Path) -> None:
    """Refuse an output directory that is (or lies under) an existing file, before anything is written."""
    for p in (run_dir, *run_dir.parents):
        if p.exists():
            if not p.is_dir():
                what = "is" if p == run_dir else f"lies under {p}, which is"
                raise ExcbError(f"{run_dir}: the output directory {what} an existing file; pass a folder "
                                f"to -o/--output-dir")
            return


class RunLock:
    """An exclusive flock on ``<run>/.lock``. The kernel drops it when the holder dies, so a
    lock left by a killed process is stale by construction and is taken over (and reported).

    Nested run directories conflict too: ``excb-bench pretrain -o runs/demo/pretrain`` is refused
    while ``run-all`` works on ``runs/demo``, and ``run-all`` is refused while a stage command
    works in one of its stage folders."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir).resolve() / ".lock"
        self.fd: Optional[int] = None

    def __enter__(self) -> "RunLock":
        require_directory(self.path.parent)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ExcbError(f"{self.path.parent}: run directory is in use by {holder}; wait for it to finish "
                            f"or use another --output-dir")
        run_dir = self.path.parent
        nested = [(p / ".lock", "inside run directory") for p in run_dir.parents] + \
                 [(p, "its sub-folder") for p in sorted(run_dir.glob("*/.lock")) + sorted(run_dir.glob("*/*/.lock"))]
        for other, relation in nested:
            holder = _holder_if_locked(other)
            if holder:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise ExcbError(f"{run_dir}: {relation} {other.parent} is in use by {holder}; wait for it to "
                                f"finish or use another --output-dir")
        previous = os.read(fd, 200).decode(errors="replace").strip()
        if previous:
            print(f"[excb-bench] cleared a stale lock left by {previous} (that process is gone)")
        _sweep_orphaned_temporaries(run_dir)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        os.fsync(fd)
        self.fd = fd
        _HELD[str(self.path)] = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            _HELD.pop(str(self.path), None)
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


# ----------------------------------------------------------------------------- manifest
def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class Manifest:
    def __init__(self, run_dir: Path):
        self.path = run_dir / "manifest.json"
        self.data: Dict[str, Any] = {"stages": {}}
        if self.path.exists():
            try:
                self.data = read_json(self.path)
            except ExcbError as e:
                print(f"[excb-bench] {e}; starting a new manifest (stage results are re-checked)")
        self.data.setdefault("stages", {})

    def entry(self, stage: str) -> Dict[str, Any]:
        return self.data["stages"].get(stage, {})

    def update(self, stage: str, **kw) -> None:
        e = self.data["stages"].setdefault(stage, {})
        e.update(kw)
        if D.is_main():
            atomic_write_json(self.path, self.data)

    def replace(self, stage: str, entry: Dict[str, Any]) -> None:
        self.data["stages"][stage] = entry
        if D.is_main():
            atomic_write_json(self.path, self.data)


# ----------------------------------------------------------------------------- stage inputs
def file_sha256(path: str | Path) -> str:
    """sha256 of a file, cached by (path, size, mtime) — checkpoints are large and read by many stages."""
    return sha256_file_cached(path)


def _portable(value: Any, run_dir: Path) -> Any:
    """A path inside the run directory spelled relative to it (``<run>/...``), so that moving or
    copying the run, or giving ``-o`` as an absolute path, does not change a stage's input hash."""
    if isinstance(value, (list, tuple)):
        return [_portable(v, run_dir) for v in value]
    if not isinstance(value, (str, Path)) or not str(value) or is_zoo_ref(value):
        return value
    try:
        rel = Path(value).resolve().relative_to(run_dir.resolve())
    except (ValueError, OSError):
        return value
    return "<run>" if str(rel) == "." else f"<run>/{rel.as_posix()}"


def checkpoint_identity(ck: Any) -> Optional[Dict[str, Any]]:
    """What a checkpoint *is*: its content hash (and zoo name), never its path's spelling.
    ``zoo:NAME`` is resolved (fetched if needed) here; a missing file gives None."""
    if not ck:
        return None
    if is_zoo_ref(ck):
        path, _, _, rec = resolve_checkpoint(ck)
        return {"sha256": file_sha256(path), "zoo": rec["name"], "path": str(path)}
    if Path(ck).is_file():
        return {"sha256": file_sha256(ck), "path": str(ck)}
    return None


def _hashed_config(scfg: Dict[str, Any]) -> Dict[str, Any]:
    # debug.* (fault injection), monitor.* (online k-NN, alarms: never touch the weights) and when a run
    # stops or checkpoints (excb.budget.RUN_CONTROL_KEYS) do not change what a finished stage means
    from excb.budget import RUN_CONTROL_KEYS

    return {k: v for k, v in scfg.items() if k not in ("debug", "monitor") + RUN_CONTROL_KEYS}


def stage_inputs(name: str, scfg: Dict[str, Any], run_dir: Path) -> Dict[str, Any]:
    """What a stage's result depends on; :func:`input_hash` of it decides whether the stage reruns.

    Content, not spelling: the checkpoint enters by its sha256, paths inside the run directory
    relative to it, summarised results by their relative names and hashes. ``paths`` only
    documents where things were (it is not hashed)."""
    hashed = _hashed_config(scfg)
    inputs: Dict[str, Any] = {}
    ident = checkpoint_identity(scfg.get("checkpoint"))
    if ident:
        inputs["checkpoint"] = {k: v for k, v in ident.items() if k != "path"}
        inputs["paths"] = {"checkpoint": str(scfg["checkpoint"])}
        hashed["checkpoint"] = inputs["checkpoint"]
    for key in ("checkpoint", "runs", "run"):
        if key in hashed and not isinstance(hashed[key], dict):
            hashed[key] = _portable(hashed[key], run_dir)
    inputs["config"] = sha256_json(hashed)
    if name == "figures":   # exactly the files it draws from (not every stage's results)
        rels = [r for r in (scfg.get("paths") or {}).values() if isinstance(r, str)]
        inputs["files"] = {r: file_sha256(run_dir / r) for r in sorted(rels) if (run_dir / r).is_file()}
    elif name in SUMMARY_STAGES:
        files = sorted(p for p in run_dir.glob("**/results.json")
                       if p.parent.name not in SUMMARY_STAGES
                       and not any(t in str(p.relative_to(run_dir)) for t in (".prev", _PARTIAL)))
        inputs["files"] = {str(p.relative_to(run_dir)): file_sha256(p) for p in files}
    return inputs


def input_hash(inputs: Dict[str, Any]) -> str:
    return sha256_json({k: v for k, v in inputs.items() if k != "paths"})


def _legacy_input_hash(scfg: Dict[str, Any], inputs: Dict[str, Any]) -> str:
    """The hash manifests written before content-keyed inputs hold (path spelled in): a finished
    stage of such a run is recognised as up to date instead of being recomputed once."""
    legacy: Dict[str, Any] = {"config": sha256_json(_hashed_config(scfg))}
    if "checkpoint" in inputs and "zoo" not in inputs["checkpoint"]:
        legacy["checkpoint"] = {"path": str(scfg["checkpoint"]), "sha256": inputs["checkpoint"]["sha256"]}
    if "files" in inputs:
        legacy["files"] = inputs["files"]
    return sha256_json(legacy)


def check_pretrain_checkpoint(name: str, scfg: Dict[str, Any], run_dir: Path, manifest: "Manifest",
                              forced: bool) -> None:
    """Refuse to evaluate this run's pretraining checkpoint if it changed after pretraining
    finished (its sha256 is recorded in the manifest at completion), unless the stage is forced."""
    ck = scfg.get("checkpoint")
    pre = manifest.entry("pretrain")
    recorded = pre.get("checkpoint_sha256") if pre.get("status") == "complete" else None
    if not ck or not recorded or is_zoo_ref(ck) or not Path(ck).is_file():
        return
    own = run_dir / "pretrain" / "checkpoint.pth"
    try:
        if Path(ck).resolve() != own.resolve():
            return
    except OSError:
        return
    now = file_sha256(own)
    if now == recorded:
        return
    msg = (f"{own}: changed after pretraining finished (sha256 {recorded[:16]}… recorded at completion, now "
           f"{now[:16]}…)")
    if not forced:
        raise ExcbError(f"{msg}; refusing to evaluate a checkpoint pretraining did not produce — restore it, rerun "
                        f"pretraining with --force pretrain, or evaluate this file anyway with --force {name}")
    _say(f"warning: {msg}; evaluating it because --force {name} was given")


def wire_stage(name: str, scfg: Dict[str, Any], run_dir: Path, pretrain_cfg: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Fill the keys that connect a stage to the run: checkpoint path, sanity-row backbones, run dir."""
    scfg = copy.deepcopy(scfg)
    stage = get_stage(name)
    if "checkpoint" in scfg:   # "<run>/..." names a file inside this run directory (compare section)
        scfg["checkpoint"] = resolve_run_path(scfg["checkpoint"], run_dir)
    if name == "sanity_random":
        scfg["checkpoint"] = None
        if pretrain_cfg is not None:
            scfg["backbone"] = {"name": pretrain_cfg["backbone"]["name"],
                                "kwargs": {k: v for k, v in pretrain_cfg["backbone"].items() if k != "name"}}
    elif name == "sanity_pixels":
        scfg["checkpoint"] = None
        scfg["backbone"] = {"name": "pixels", "kwargs": {}}
    elif stage.uses_checkpoint and not scfg.get("checkpoint"):
        scfg["checkpoint"] = str(run_dir / "pretrain" / "checkpoint.pth")
        scfg["format"] = "excb-bench"
    if name == "leaderboard":
        scfg["runs"] = scfg.get("runs") or [str(run_dir)]
    if name == "figures":
        scfg["run"] = scfg.get("run") or str(run_dir)
    return scfg


# ----------------------------------------------------------------------------- running
def run_pipeline(cfg: Dict[str, Any], run_dir: Optional[Path] = None, only: Sequence[str] = (),
                 force: Sequence[str] = (), from_stage: Optional[str] = None) -> Dict[str, Any]:
    """Run (or skip) every stage of ``cfg``; returns {stage: status}.

    Stages go through ``cfg['launcher']`` (excb_bench/launchers.py): ``local`` runs them here in
    order; ``slurm`` submits each as a job as soon as the stages it reads are finished."""
    from excb_bench.launchers import make_launcher

    run_dir = Path(run_dir or cfg["output_dir"])
    for s in list(only) + list(force) + ([from_stage] if from_stage else []):
        if s not in cfg["stages"]:
            raise ExcbError(f"stage '{s}' is not in this pipeline (stages: {', '.join(cfg['stages'])})")
    validate_stages(cfg, [n for n in cfg["stages"] if not only or n in only])   # before anything is touched
    D.init_from_env()
    launcher = make_launcher(cfg, run_dir)
    lock = RunLock(run_dir) if D.is_main() else None
    if lock:
        lock.__enter__()
    try:
        if D.is_main():
            atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
        manifest = Manifest(run_dir)
        forced = set(force)
        if from_stage:
            forced |= set(cfg["stages"][cfg["stages"].index(from_stage):])
        return _schedule(cfg, run_dir, manifest, launcher, [s for s in cfg["stages"] if not only or s in only], forced)
    finally:
        if lock:
            lock.__exit__(None, None, None)


def validate_stages(cfg: Dict[str, Any], names: Sequence[str]) -> None:
    """Every stage's value checks, run before any stage does: a bad ``linear.epochs=0`` fails at once,
    not after hours of pretraining, and before any folder is created or moved."""
    for name in names:
        scfg = cfg[name]
        if isinstance(scfg.get("data"), dict):
            validate_data(scfg["data"], name)
        check = get_stage(name).validator()
        if check is not None:
            check(scfg, name)


_PARTIAL = ".partial"   # an unfinished stage folder made with other inputs


def _has_training_state(sdir: Path) -> bool:
    return any((sdir / n).exists() for n in ("checkpoint.pth", "checkpoint_prev.pth", "checkpoint.pth.next"))


def _restore_previous(name: str, sdir: Path, h: str, manifest: "Manifest") -> bool:
    """Bring back ``<stage>.prev`` when it holds the finished outputs of exactly these inputs (a run with
    other inputs was tried since and did not finish): nothing is recomputed."""
    entry = manifest.entry(name)
    prev_entry = entry.get("prev") or {}
    prev = sdir.with_name(sdir.name + ".prev")
    if entry.get("status") == "complete" or prev_entry.get("input_hash") != h or not (prev / "results.json").exists():
        return False
    if D.is_main():
        if sdir.exists():
            partial = sdir.with_name(sdir.name + _PARTIAL)
            shutil.rmtree(partial, ignore_errors=True)
            os.replace(sdir, partial)
        os.replace(prev, sdir)
    D.barrier()
    manifest.replace(name, prev_entry)
    _say(f"{name}: restored the finished outputs of these inputs from {sdir.name}.prev (the unfinished attempt "
         f"with other inputs is in {sdir.name}{_PARTIAL})")
    return True


def _move_aside(name: str, sdir: Path, manifest: "Manifest") -> None:
    """Finished outputs go to ``<stage>.prev`` (and are remembered, so :func:`_restore_previous` can bring
    them back); an unfinished folder goes to ``<stage>.partial``, never over a finished ``.prev``."""
    entry = manifest.entry(name)
    finished = entry.get("status") == "complete" and (sdir / "results.json").exists()
    target = sdir.with_name(sdir.name + (".prev" if finished else _PARTIAL))
    if D.is_main():
        shutil.rmtree(target, ignore_errors=True)
        os.replace(sdir, target)
    D.barrier()
    if finished:
        manifest.update(name, prev={k: v for k, v in entry.items() if k != "prev"})
    _say(f"{name}: inputs changed or forced; previous {'outputs' if finished else 'unfinished attempt'} "
         f"moved to {target.name}")


FINISHED_OK = ("complete", "up-to-date", "skipped")


def _needs(name: str, cfg: Dict[str, Any], selected: Sequence[str], sequential: bool) -> List[str]:
    """The selected stages ``name`` must wait for: the ones whose outputs it reads (all earlier
    ones when the launcher runs stages one at a time)."""
    if sequential:
        return list(selected[:selected.index(name)])
    if name in SUMMARY_STAGES:
        return [s for s in selected if s not in SUMMARY_STAGES]
    stage = get_stage(name)
    reads_run_checkpoint = stage.uses_checkpoint and not cfg[name].get("checkpoint") and not name.startswith("sanity_")
    return ["pretrain"] if reads_run_checkpoint and "pretrain" in selected and name != "pretrain" else []


def _schedule(cfg: Dict[str, Any], run_dir: Path, manifest: Manifest, launcher, selected: List[str],
              forced: set) -> Dict[str, str]:
    """Submit each stage when the stages it needs have finished; wait for the jobs; record outcomes."""
    statuses: Dict[str, str] = {}
    pending, jobs = list(selected), {}
    pretrain_cfg = cfg.get("pretrain")
    failures: List[str] = []
    while pending or jobs:
        progressed = False
        for name in list(pending):
            needs = _needs(name, cfg, selected, not launcher.concurrent)
            if any(n in pending or n in jobs for n in needs):
                continue
            pending.remove(name)
            progressed = True
            # summary stages tabulate whatever finished; others need what they read
            reads = [] if name in SUMMARY_STAGES else _needs(name, cfg, selected, False)
            bad = [n for n in reads if statuses.get(n) not in FINISHED_OK]
            if bad and statuses.get(bad[0]) == "stopped":
                # time_budget / stop_after_*: the checkpoint is mid-schedule; evaluating it would be redone
                _say(f"{name}: not run — {bad[0]} stopped before the end of its schedule (time_budget or "
                     f"stop_after_*); rerun the same command to continue it")
                statuses[name] = "waiting"
                continue
            if bad:
                why = "stopped on a collapse alarm (see pretrain/log.jsonl)" if statuses[bad[0]] == "collapsed" \
                    else statuses[bad[0]]
                _say(f"{name}: not run — {bad[0]} {why}")
                statuses[name] = "blocked"
                continue
            prep = _prepare(name, cfg[name], run_dir, manifest, pretrain_cfg, name in forced, launcher)
            if isinstance(prep, str):
                statuses[name] = prep
                continue
            if launcher.runs_here(name) or not D.is_main():
                from excb_bench.launchers import LocalLauncher

                job = LocalLauncher().submit(prep, {})
            else:
                job = launcher.attach(manifest.entry(name).get("job") or {}, prep.stage_dir) if prep.resumed else None
                if job is not None:
                    _say(f"{name}: reattached to job {job.info().get('id')} (still running)")
                else:
                    job = launcher.submit(prep, launcher.resources(name))
                    _say(f"{name}: submitted job {job.info().get('id')} (log {job.info().get('stdout')})")
                manifest.update(name, status="running", job=job.info())
            jobs[name] = (job, prep)
            if not launcher.concurrent:
                break            # one at a time: finish it before looking at the next
        for name, (job, prep) in list(jobs.items()):
            if not job.done():
                continue
            del jobs[name]
            progressed = True
            statuses[name], err = _finish(name, prep, run_dir, manifest, job)
            if err is not None:
                if not launcher.concurrent:
                    raise err
                failures.append(f"{name}: {one_line(err)}")
        if not progressed and jobs:
            time.sleep(launcher.poll_s)
    if failures:
        raise ExcbError(f"{len(failures)} stage(s) failed — " + "; ".join(failures) +
                        f" (excb-bench status {run_dir} shows each; rerun the same command to resume)")
    return statuses


def _prepare(name: str, scfg: Dict[str, Any], run_dir: Path, manifest: Manifest,
             pretrain_cfg: Optional[Dict[str, Any]], forced: bool, launcher=None):
    """Decide whether ``name`` runs: a status string if not (up to date), else the task to run."""
    from excb_bench.launchers import StageTask

    stage = get_stage(name)
    sdir = run_dir / stage_dir_name(name)
    scfg = wire_stage(name, scfg, run_dir, pretrain_cfg)
    label = scfg.pop("_label", None)
    if is_compare_stage(name):   # <run>/eval_<sha of the checkpoint>/<stage>, known once the file is here
        sdir = compare_stage_dir(name, scfg, label, run_dir, manifest.entry(name).get("dir"))
    check_pretrain_checkpoint(name, scfg, run_dir, manifest, forced)
    inputs = stage_inputs(name, scfg, run_dir)
    h = input_hash(inputs)
    entry = manifest.entry(name)
    if entry.get("input_hash") not in (None, h) and entry.get("input_hash") == _legacy_input_hash(scfg, inputs):
        manifest.update(name, input_hash=h, inputs=inputs)   # same inputs, hashed the new way
        entry = manifest.entry(name)
    done = entry.get("status") == "complete" and (sdir / "results.json").exists()
    if done and entry.get("input_hash") == h and not forced:
        _say(f"{name}: up to date, skipped (use --force {name} to rerun)")
        return "up-to-date"
    if not forced and _restore_previous(name, sdir, h, manifest):
        return "up-to-date"
    if sdir.exists() and (forced or (entry.get("input_hash") not in (None, h))):
        if name == "pretrain" and not forced and _has_training_state(sdir):
            raise ExcbError(f"{sdir}: the pretraining config changed since this run was made; rerun with "
                            f"--force pretrain to start over (the old run is kept as pretrain.prev), "
                            f"or use another --output-dir")
        _move_aside(name, sdir, manifest)
    resumed = entry.get("status") in ("running", "failed", "collapsed") and entry.get("input_hash") == h
    _say(f"{name}: {'resuming' if resumed else 'running'} — {stage.summary}")
    keep_job = {"job": entry.get("job")} if resumed and entry.get("job") else {"job": None}
    manifest.update(name, status="running", input_hash=h, inputs=inputs, start=time.time(), end=None,
                    git_commit=git_commit(), versions=package_versions(), reason=None, **keep_job,
                    **({"checkpoint_sha256": None} if name == "pretrain" else {}),
                    **({"dir": sdir.parent.relative_to(run_dir).as_posix()} if is_compare_stage(name) else {}))
    if D.is_main():
        sdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(sdir / "config.yaml", dump_yaml(scfg))
    task = StageTask(name, scfg, sdir)
    task.resumed, task.t0 = resumed, time.time()
    return task


def _finish(name: str, task, run_dir: Path, manifest: Manifest, job) -> tuple:
    """Record a finished job in the manifest; returns (status, error to raise or None)."""
    sdir = Path(task.stage_dir)
    extra: Dict[str, Any] = {"job": job.info()} if job.info() else {}
    try:
        res = job.outcome()
    except ExcbError as e:
        if getattr(e, "skip_stage", False) or type(e).__name__ == "DetectronMissing":
            manifest.update(name, status="skipped", reason=str(e), end=time.time(), **extra)
            _say(f"{name}: skipped — {e}")
            return "skipped", None
        manifest.update(name, status="failed", reason=str(e), end=time.time(), **extra)
        return "failed", e
    except BaseException as e:  # noqa: BLE001 - recorded, then re-raised by the caller
        manifest.update(name, status="failed", reason=f"{type(e).__name__}: {e}"[:500], end=time.time(), **extra)
        return "failed", e
    status = res.get("status", "complete")
    if status == "skipped":
        manifest.update(name, status="skipped", reason=res.get("reason"), end=time.time(), **extra)
        _say(f"{name}: skipped — {res.get('reason')}")
        return "skipped", None
    if status == "stopped":
        manifest.update(name, status="running", end=None, **extra)
        return "stopped", None
    if status == "collapsed":   # monitor.stop_on_collapse
        alarm = next((a for a in reversed(res.get("alarms", [])) if a.get("severity") == "collapse"), {})
        manifest.update(name, status="collapsed", end=time.time(), reason=alarm.get("symptom"), **extra)
        return "collapsed", None
    outputs = sorted(str(p.relative_to(run_dir)) for p in sdir.rglob("*") if p.is_file())
    if name == "pretrain" and (sdir / "checkpoint.pth").is_file():   # what later stages must evaluate
        extra["checkpoint_sha256"] = file_sha256(sdir / "checkpoint.pth")
    manifest.update(name, status="complete", end=time.time(), wall_s=time.time() - task.t0, outputs=outputs[:200],
                    **extra)
    return "complete", None


def _run_one(name: str, scfg: Dict[str, Any], run_dir: Path, manifest: Manifest,
             pretrain_cfg: Optional[Dict[str, Any]], forced: bool) -> str:
    """One stage in this process (as ``--launcher local`` does)."""
    from excb_bench.launchers import LocalLauncher

    prep = _prepare(name, scfg, run_dir, manifest, pretrain_cfg, forced)
    if isinstance(prep, str):
        return prep
    status, err = _finish(name, prep, run_dir, manifest, LocalLauncher().submit(prep, {}))
    if err is not None:
        raise err
    return status


def _say(msg: str) -> None:
    if D.is_main():
        print(f"[excb-bench] {msg}", flush=True)
