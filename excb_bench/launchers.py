"""Where a stage runs: here (``local``, the default) or as SLURM jobs (``slurm``, via submitit).

Both sit behind one small interface, so the pipeline never knows which one it has::

    launcher = make_launcher(cfg, run_dir)
    job = launcher.submit(task, resources)      # task: StageTask, resources: launcher.resources(stage)
    job.done() / job.outcome() / job.info()

* ``local`` runs the task in this process when it is submitted (today's behaviour) and
  returns a finished job; ``concurrent`` is False, so stages run one after another.
* ``slurm`` submits each task as a job (the DINO way, ``facebookresearch/dino``'s
  run_with_submitit.py): pretraining is one job of ``slurm.nodes`` x ``slurm.gpus_per_node``
  tasks, one per GPU, that join one process group exactly as under torchrun (``MASTER_ADDR``,
  ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` from SLURM's environment through
  submitit's ``TorchDistributedEnvironment``); every downstream stage is its own job with its
  own resources (``slurm.stage_resources``). On a time limit or a preemption SLURM signals the
  job, submitit calls :meth:`StageTask.checkpoint` and requeues the same task, which resumes
  from the stage's last checkpoint exactly as a rerun of the command would.
  ``slurm.executor: local`` backs the same jobs with submitit's LocalExecutor (subprocesses on
  this machine, same signals and requeue): for tests and for a workstation without SLURM.

A job writes ``<stage>/job.json`` (job id, nodes, attempt, log paths); the pipeline copies it
into the manifest. The pipeline process only waits: killing it leaves the jobs running, and
rerunning ``run-all`` reattaches to them instead of submitting them again.
"""
from __future__ import annotations

import copy
import math
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from excb import ExcbError
from excb.io import atomic_write_json, read_json

LAUNCHERS = ("local", "slurm")
SLURM_DEFAULTS: Dict[str, Any] = {
    "executor": "slurm",         # slurm | local (submitit's LocalExecutor: the same jobs as local subprocesses)
    "partition": None,
    "nodes": 1,                  # pretraining; downstream stages default to one node
    "gpus_per_node": 8,
    "tasks_per_node": 0,         # 0: one task per GPU (one without GPUs)
    "cpus_per_task": 10,
    "time": "72:00:00",          # per job (attempt): minutes, HH:MM:SS or D-HH:MM:SS; requeued when reached
    "mem": None,                 # e.g. 320G (None: the partition's default)
    "account": None,
    "qos": None,
    "constraint": None,
    "signal_delay_s": 120,       # SLURM signals the job this long before its time limit (checkpoint + requeue)
    "max_requeue": 30,           # timeouts after which a job is not requeued again (preemptions do not count)
    "poll_s": 30.0,              # how often the pipeline looks at its jobs
    "folder": "slurm",           # submitit's job files and logs, relative to the run directory
    "stage_resources": {},       # per stage overrides, e.g. {linear: {gpus_per_node: 1}, detect: {time: "12:00:00"}}
    "local_stages": ["leaderboard", "figures"],   # cheap summary stages: run in the pipeline's own process
}
RESOURCE_KEYS = ("partition", "nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "time", "mem", "account",
                 "qos", "constraint", "signal_delay_s")


def parse_minutes(value: Any, source: str = "slurm.time") -> float:
    """SLURM time limits: minutes (``90``, ``0.5``), ``HH:MM:SS``, ``MM:SS`` or ``D-HH:MM:SS``."""
    s = str(value).strip()
    try:
        return float(s)
    except ValueError:
        pass
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", s)
    if not m:
        raise ExcbError(f"{source}: '{value}' is not a time limit; use minutes (90), HH:MM:SS or D-HH:MM:SS")
    d, a, b, c = (int(x) if x else None for x in m.groups())
    if c is not None:                     # [D-]HH:MM:SS
        h, mi, sec = a, b, c
    elif b is not None:                   # D-HH:MM or MM:SS
        h, mi, sec = (a, b, 0) if d is not None else (0, a, b)
    else:
        h, mi, sec = (a, 0, 0) if d is not None else (0, a, 0)
    return (d or 0) * 1440 + h * 60 + mi + sec / 60.0


# ----------------------------------------------------------------------------- the task a job runs
class StageTask:
    """One stage run: ``task()`` runs it where the job landed and returns a small outcome dict.

    Picklable (submitit ships it to the job). ``checkpoint()`` is submitit's hook on a timeout
    or preemption: the same task is requeued, and the stage resumes from its own checkpoint."""

    def __init__(self, name: str, cfg: Dict[str, Any], stage_dir: str | Path):
        self.name, self.cfg, self.stage_dir = name, cfg, str(stage_dir)

    def __call__(self) -> Dict[str, Any]:
        from excb import distributed as D
        from excb_bench.stages import get_stage

        rank = _export_torch_distributed_env()
        if rank == 0:
            self._record(state="running")
        try:
            res = get_stage(self.name).runner()(self.cfg, Path(self.stage_dir))
        except ExcbError as e:
            if getattr(e, "skip_stage", False) or type(e).__name__ == "DetectronMissing":
                return {"status": "skipped", "reason": str(e)}
            raise
        finally:
            if _in_submitit_job():
                D.cleanup()
        out: Dict[str, Any] = {"status": "complete"}
        if isinstance(res, dict):
            out["status"] = res.get("status", "complete")
            out["alarms"] = res.get("alarms", [])
        return out

    def checkpoint(self, *args: Any, **kwargs: Any):
        """Timeout / preemption: requeue this task; it resumes from the stage's last checkpoint."""
        import submitit

        self._record(state="requeued", requeues=int(self._job_json().get("requeues", 0)) + 1)
        print(f"[excb-bench] {self.name}: time limit or preemption; requeued, will resume from the last "
              f"checkpoint", flush=True)
        return submitit.helpers.DelayedSubmission(StageTask(self.name, self.cfg, self.stage_dir))

    def _job_json(self) -> Dict[str, Any]:
        p = Path(self.stage_dir) / "job.json"
        try:
            return read_json(p) if p.is_file() else {}
        except ExcbError:
            return {}

    def _record(self, **kw: Any) -> None:
        """``<stage>/job.json``: where and how often this stage's job ran (rank 0 only)."""
        if not _in_submitit_job():
            return
        import submitit

        env = submitit.JobEnvironment()
        rec = self._job_json()
        attempts = int(rec.get("attempts", 0)) + (1 if kw.get("state") == "running" else 0)
        rec.update({"id": env.job_id, "nodes": os.environ.get("SLURM_JOB_NODELIST") or ",".join(env.hostnames),
                    "num_nodes": env.num_nodes, "num_tasks": env.num_tasks, "attempts": attempts,
                    "stdout": str(env.paths.stdout), "stderr": str(env.paths.stderr), "time": time.time(), **kw})
        atomic_write_json(Path(self.stage_dir) / "job.json", rec)


def _in_submitit_job() -> bool:
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def _export_torch_distributed_env() -> int:
    """Inside a multi-task job: the variables torchrun would set, from SLURM's (submitit's) view of
    the job, so ``excb.distributed.init_from_env`` joins the process group as under torchrun.
    Returns this task's global rank (0 outside a job)."""
    if not _in_submitit_job():
        return 0
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        # CUDA_VISIBLE_DEVICES stays as SLURM set it: the stage picks cuda:LOCAL_RANK as under torchrun
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return env.global_rank


# ----------------------------------------------------------------------------- jobs
class Job:
    """What ``submit`` returns: ``done()``, ``outcome()`` (the task's dict, or raises its error), ``info()``."""

    def done(self) -> bool:
        raise NotImplementedError

    def outcome(self) -> Dict[str, Any]:
        raise NotImplementedError

    def info(self) -> Dict[str, Any]:
        return {}


class FinishedJob(Job):
    """The local launcher's job: the task already ran in this process."""

    def __init__(self, result: Optional[Dict[str, Any]] = None, error: Optional[BaseException] = None):
        self.result, self.error = result, error

    def done(self) -> bool:
        return True

    def outcome(self) -> Dict[str, Any]:
        if self.error is not None:
            raise self.error
        return self.result or {}


class SubmititJob(Job):
    """A submitit job (SLURM or submitit's local executor); also rebuilt from the manifest on rerun."""

    def __init__(self, job, executor: str, stage_dir: str):
        self.job, self.executor, self.stage_dir = job, executor, stage_dir

    def done(self) -> bool:
        if self.executor == "local":
            # a LocalJob rebuilt in another process has no handle: go by its controller's pid
            if getattr(self.job, "_process", None) is None:
                return self.job.paths.result_pickle.exists() or not _pid_alive(int(self.job.job_id))
            return self.job.done()
        return self.job.done(force_check=True)

    def outcome(self) -> Dict[str, Any]:
        try:
            return self.job.result()
        except Exception as e:  # noqa: BLE001 - submitit wraps the job's traceback in its own errors
            raise ExcbError(f"job {self.job.job_id} failed: {_last_error(str(e))} (log: {self.job.paths.stderr})") from e

    def info(self) -> Dict[str, Any]:
        rec = {"launcher": "slurm", "executor": self.executor, "id": str(self.job.job_id),
               "folder": str(self.job.paths.folder), "stdout": str(self.job.paths.stdout),
               "stderr": str(self.job.paths.stderr)}
        p = Path(self.stage_dir) / "job.json"
        if p.is_file():
            try:
                ran = read_json(p)
                rec.update({k: ran[k] for k in ("nodes", "num_nodes", "num_tasks", "attempts", "requeues") if k in ran})
            except ExcbError:
                pass
        return rec


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errs = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", ln) or "Error:" in ln]
    return (errs or lines or ["unknown error"])[-1][:400]


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] not in ("Z", "X")
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def job_alive(job: Dict[str, Any]) -> Optional[bool]:
    """Whether a job recorded in the manifest still runs (None: not a job, or cannot tell)."""
    if job.get("launcher") != "slurm" or not job.get("id"):
        return None
    if job.get("executor") == "local":
        return _pid_alive(int(job["id"]))
    import submitit

    state = submitit.SlurmJob(job["folder"], job["id"]).get_info(mode="force").get("State", "UNKNOWN")
    if state == "UNKNOWN":
        return None
    return state.split()[0] in ("RUNNING", "PENDING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING",
                                "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED")


# ----------------------------------------------------------------------------- launchers
class LocalLauncher:
    """Runs every stage in this process, in order (today's behaviour)."""

    name = "local"
    concurrent = False
    poll_s = 0.0

    def resources(self, stage: str) -> Dict[str, Any]:
        return {}

    def runs_here(self, stage: str) -> bool:
        return True

    def submit(self, task: StageTask, resources: Dict[str, Any]) -> Job:
        try:
            return FinishedJob(result=task())
        except BaseException as e:  # noqa: BLE001 - handed to the pipeline, which records and re-raises it
            return FinishedJob(error=e)

    def attach(self, info: Dict[str, Any], stage_dir: str) -> Optional[Job]:
        return None


class SlurmLauncher:
    """Each stage a SLURM job through submitit (``slurm.executor: local``: submitit's LocalExecutor)."""

    name = "slurm"
    concurrent = True

    def __init__(self, scfg: Dict[str, Any], run_dir: Path):
        try:
            import submitit  # noqa: F401
        except ImportError as e:
            raise ExcbError("--launcher slurm needs submitit (pip install submitit, or pip install -e .)") from e
        self.cfg = scfg
        if scfg["executor"] not in ("slurm", "local"):
            raise ExcbError(f"pipeline: key 'slurm.executor' must be 'slurm' or 'local', got {scfg['executor']!r}")
        if not isinstance(scfg["stage_resources"], dict):
            raise ExcbError("pipeline: key 'slurm.stage_resources' must map stage names to resource sections")
        for stage, res in scfg["stage_resources"].items():
            bad = [k for k in (res or {}) if k not in RESOURCE_KEYS]
            if bad:
                raise ExcbError(f"pipeline: key 'slurm.stage_resources.{stage}.{bad[0]}' is not a resource; use "
                                f"{', '.join(RESOURCE_KEYS)}")
        self.folder = Path(scfg["folder"]) if Path(scfg["folder"]).is_absolute() else Path(run_dir) / scfg["folder"]
        self.poll_s = float(scfg["poll_s"])
        parse_minutes(scfg["time"])

    def runs_here(self, stage: str) -> bool:
        return stage in self.cfg["local_stages"]

    def resources(self, stage: str) -> Dict[str, Any]:
        """Pretraining: the configured nodes x GPUs; other stages one node unless overridden."""
        r = {k: self.cfg[k] for k in RESOURCE_KEYS}
        if stage != "pretrain":
            r["nodes"] = 1
        r.update(self.cfg["stage_resources"].get(stage) or {})
        return r

    def _executor(self, stage: str, r: Dict[str, Any]):
        import submitit

        gpus = int(r["gpus_per_node"] or 0)
        tasks = int(r["tasks_per_node"] or 0) or max(gpus, 1)
        minutes = parse_minutes(r["time"], f"slurm.time of stage {stage}")
        folder = self.folder / stage
        if self.cfg["executor"] == "local":
            if int(r["nodes"]) > 1:
                raise ExcbError(f"slurm.executor=local runs on this machine only; stage {stage} asks for "
                                f"slurm.nodes={r['nodes']}")
            ex = submitit.LocalExecutor(folder=folder, max_num_timeout=int(self.cfg["max_requeue"]))
            ex.update_parameters(timeout_min=minutes, gpus_per_node=gpus, tasks_per_node=tasks,
                                 signal_delay_s=int(r["signal_delay_s"]))
            return ex
        try:
            ex = submitit.SlurmExecutor(folder=folder, max_num_timeout=int(self.cfg["max_requeue"]))
        except RuntimeError as e:   # no srun on PATH
            raise ExcbError(f"--launcher slurm: {e} (srun not found); run on a SLURM login node, or use "
                            f"slurm.executor=local / --launcher local") from e
        params: Dict[str, Any] = {"job_name": f"excb-{stage}", "nodes": int(r["nodes"]), "ntasks_per_node": tasks,
                                  "cpus_per_task": int(r["cpus_per_task"]), "time": max(1, math.ceil(minutes)),
                                  "signal_delay_s": int(r["signal_delay_s"])}
        if gpus:
            params["gpus_per_node"] = gpus
        for k in ("partition", "mem", "account", "qos", "constraint"):
            if r.get(k):
                params[k] = str(r[k])
        try:
            ex.update_parameters(**params)
        except ValueError as e:
            raise ExcbError(f"slurm: {str(e).splitlines()[0]}") from e
        return ex

    def submit(self, task: StageTask, resources: Dict[str, Any]) -> Job:
        ex = self._executor(task.name, resources)
        try:
            job = ex.submit(task)
        except Exception as e:  # noqa: BLE001 - sbatch missing / refused: one line
            raise ExcbError(f"slurm: could not submit stage {task.name} ({_last_error(str(e))}); check the slurm.* "
                            f"settings, or use --launcher local") from e
        return SubmititJob(job, self.cfg["executor"], task.stage_dir)

    def attach(self, info: Dict[str, Any], stage_dir: str) -> Optional[Job]:
        """The still-running job a previous pipeline process submitted for this stage, if any."""
        if info.get("launcher") != "slurm" or info.get("executor") != self.cfg["executor"] or not info.get("id"):
            return None
        if not job_alive(info):
            return None
        import submitit

        cls = submitit.LocalJob if self.cfg["executor"] == "local" else submitit.SlurmJob
        return SubmititJob(cls(info["folder"], info["id"]), self.cfg["executor"], stage_dir)


def make_launcher(cfg: Dict[str, Any], run_dir: Path):
    """The launcher a pipeline config asks for (``launcher: local | slurm``)."""
    name = cfg.get("launcher", "local")
    if name == "local":
        return LocalLauncher()
    if name == "slurm":
        return SlurmLauncher({**SLURM_DEFAULTS, **(cfg.get("slurm") or {})}, run_dir)
    raise ExcbError(f"pipeline: key 'launcher' must be one of {', '.join(LAUNCHERS)}, got {name!r}")
