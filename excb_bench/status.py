"""``excb-bench status RUN_DIR [--watch]``: where a run stands, read from its files only.

Per stage: state, job id (SLURM runs), epoch/step progress, images/s, ETA, the last metrics
and, for a failed stage, its last error line. Everything comes from what the run already
writes — ``manifest.json``, ``<stage>/log.jsonl``, ``<stage>/results.json``, the run lock and
the job logs — so it works while the run is in progress (from any machine that sees the
run directory), after it finished, and after it died. Nothing is written.

A stage the manifest calls ``running`` whose run lock nobody holds and whose job (if any) is
gone is reported as ``interrupted``: rerun the same command to resume it.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from excb import ExcbError
from excb.io import read_json, read_jsonl

# the metrics worth a glance, per stage kind, in display order
HEADLINE = ("loss", "knn_top1", "train_assign_used", "train_assign_size_max", "clusters_used", "cluster_size_max",
            "agreement", "top1", "top5", "val_top1", "AP_box", "bbox_AP", "lr")
TERMINAL = ("complete", "failed", "skipped", "collapsed", "blocked", "up-to-date", "interrupted", "cancelled")


def _stage_dir(run_dir: Path, name: str) -> Path:
    from excb_bench.stages import stage_dir_name

    return run_dir / stage_dir_name(name)


def _stage_config(sdir: Path) -> Dict[str, Any]:
    p = sdir / "config.yaml"
    if not p.is_file():
        return {}
    try:
        import yaml

        return yaml.safe_load(p.read_text()) or {}
    except Exception:  # noqa: BLE001 - a half-written config only loses the totals
        return {}


def _lock_holder(run_dir: Path) -> Optional[str]:
    from excb_bench.pipeline import _holder_if_locked

    return _holder_if_locked(run_dir / ".lock")


def _job_alive(job: Dict[str, Any]) -> Optional[bool]:
    """Whether a recorded job still runs (None: cannot tell from here)."""
    from excb_bench import launchers

    try:
        return launchers.job_alive(job)
    except Exception:  # noqa: BLE001 - squeue/sacct missing or slow: unknown, not an error
        return None


def _last_error_line(entry: Dict[str, Any], job: Dict[str, Any]) -> Optional[str]:
    reason = entry.get("reason")
    if reason:
        return str(reason).strip().splitlines()[-1][:300]
    for key in ("stderr", "stdout"):
        p = job.get(key)
        if p and Path(p).is_file():
            lines = [ln.strip() for ln in Path(p).read_text(errors="replace").splitlines() if ln.strip()]
            errs = [ln for ln in lines if "Error" in ln or "error:" in ln]
            if errs or lines:
                return (errs or lines)[-1][:300]
    return None


def _fmt_duration(s: Optional[float]) -> str:
    if s is None or s != s or s < 0:
        return "-"
    s = int(round(s))
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    return f"{d}d{h:02d}h" if d else (f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s")


def _progress(sdir: Path, scfg: Dict[str, Any], state: str) -> Dict[str, Any]:
    """Epoch/step progress, images/s and ETA from a stage's log.jsonl."""
    recs = read_jsonl(sdir / "log.jsonl") if (sdir / "log.jsonl").is_file() else []
    epochs = [r for r in recs if isinstance(r.get("epoch"), (int, float)) and r.get("kind", "epoch") == "epoch"
              and "event" not in r]
    steps = [r for r in recs if r.get("kind") == "step"]
    total = scfg.get("epochs") if isinstance(scfg.get("epochs"), (int, float)) else None
    out: Dict[str, Any] = {"epoch": None, "epochs": total, "step": None, "images_per_s": None, "eta_s": None,
                           "metrics": {}, "updated": recs[-1].get("time") if recs else None}
    if epochs:
        last = epochs[-1]
        out["epoch"] = int(last["epoch"])
        out["metrics"] = {k: last[k] for k in HEADLINE if isinstance(last.get(k), (int, float))}
        out["images_per_s"] = last.get("images_per_s")
    monitor = [r for r in recs if r.get("kind") == "monitor"]
    if monitor:
        out["metrics"]["knn_top1"] = monitor[-1]["knn_top1"]
    # within the current epoch: the step records (pretraining logs one every log_every steps)
    cur = [r for r in steps if out["epoch"] is None or r.get("epoch", 0) > out["epoch"]]
    if cur:
        out["step"] = int(cur[-1]["step"])
    if len(steps) >= 2 and state == "running":
        a, b = steps[-2], steps[-1]
        dt, ds = b["time"] - a["time"], b["step"] - a["step"]
        batch = scfg.get("batch_size")
        if dt > 0 and ds > 0 and isinstance(batch, int) and out["images_per_s"] is None:
            out["images_per_s"] = ds * batch / dt
    if total and out["epoch"] is not None and state == "running":
        times = [r["time"] for r in epochs if "time" in r]
        per_epoch = next((epochs[-1].get(k) for k in ("epoch_s",) if epochs[-1].get(k)), None)
        if per_epoch is None and len(times) >= 2:
            per_epoch = (times[-1] - times[0]) / (len(times) - 1)
        if per_epoch:
            in_epoch = time.time() - times[-1] if times else 0.0
            out["eta_s"] = max((total - out["epoch"]) * per_epoch - in_epoch, 0.0)
    return out


def collect(run_dir: str | Path) -> Dict[str, Any]:
    """The run's status as data: {"run", "lock", "stages": [{stage, state, job, progress...}]}."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExcbError(f"{run_dir}: run directory not found; pass the --output-dir of a run-all")
    mpath = run_dir / "manifest.json"
    manifest = read_json(mpath) if mpath.is_file() else {"stages": {}}
    cfg = _stage_config(run_dir)          # the resolved pipeline config
    names: List[str] = list(cfg.get("stages") or []) or list(manifest.get("stages", {}))
    names += [n for n in manifest.get("stages", {}) if n not in names]
    if not names:
        raise ExcbError(f"{run_dir}: neither config.yaml nor manifest.json names any stage; is this a run directory?")
    holder = _lock_holder(run_dir)
    rows = []
    for name in names:
        entry = manifest.get("stages", {}).get(name, {})
        sdir = _stage_dir(run_dir, name)
        scfg = _stage_config(sdir) or (cfg.get(name) or {})
        job = dict(entry.get("job") or {})
        state = entry.get("status") or "pending"
        if state in ("running", "queued", "requeued"):
            alive = _job_alive(job) if job.get("id") else None
            if alive is False or (alive is None and not job.get("id") and holder is None):
                state = "interrupted"
        prog = _progress(sdir, scfg, state)
        if state == "complete" and (sdir / "results.json").is_file():
            try:
                res = read_json(sdir / "results.json")
                m = res.get("metrics") or {}
                prog["metrics"] = {k: m[k] for k in HEADLINE if isinstance(m.get(k), (int, float))} or prog["metrics"]
            except ExcbError:
                pass
        row = {"stage": name, "state": state, "job_id": job.get("id"), "nodes": job.get("nodes"),
               "log": job.get("stdout"), **prog, "error": None}
        if state in ("failed", "interrupted", "collapsed"):
            row["error"] = _last_error_line(entry, job)
        rows.append(row)
    return {"run": str(run_dir), "lock": holder, "stages": rows, "time": time.time()}


def render(status: Dict[str, Any]) -> str:
    """A fixed-width table, one line per stage, then the error lines."""
    head = ("stage", "state", "job", "progress", "img/s", "ETA", "last metrics")
    lines = []
    for r in status["stages"]:
        prog = "-"
        if r["epoch"] is not None or r["epochs"]:
            prog = f"epoch {r['epoch'] or 0}/{r['epochs'] or '?'}"
            if r["step"] is not None and r["state"] == "running":
                prog += f" (step {r['step']})"
        ips = f"{r['images_per_s']:.0f}" if isinstance(r["images_per_s"], (int, float)) else "-"
        eta = _fmt_duration(r["eta_s"]) if r["state"] == "running" else "-"
        mets = " ".join(f"{k}={v:.4g}" for k, v in list(r["metrics"].items())[:4]) or "-"
        lines.append((r["stage"], r["state"], str(r["job_id"] or "-"), prog, ips, eta, mets))
    widths = [max(len(h), *(len(ln[i]) for ln in lines)) for i, h in enumerate(head[:-1])]
    out = [f"run {status['run']}: " + (f"in use by {status['lock']}" if status["lock"] else "no process holds the run lock")]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    out.append(fmt.format(*head))
    out += [fmt.format(*ln) for ln in lines]
    for r in status["stages"]:
        if r["error"]:
            out.append(f"{r['stage']}: {r['error']}")
        if r["log"] and r["state"] in ("failed", "interrupted"):
            out.append(f"{r['stage']}: job log {r['log']}")
    return "\n".join(out)


def main(run_dir: str, watch: Optional[float] = None, stream=None) -> int:
    """Print the status once, or every ``watch`` seconds until every stage is settled (Ctrl-C stops)."""
    stream = stream or sys.stdout
    while True:
        st = collect(run_dir)
        text = render(st)
        if watch and stream.isatty():
            stream.write("\033[2J\033[H")   # clear the terminal between refreshes
        stream.write(text + "\n")
        stream.flush()
        settled = all(r["state"] in TERMINAL or r["state"] == "pending" for r in st["stages"]) and not st["lock"]
        if not watch or settled:
            return 0
        time.sleep(watch)
