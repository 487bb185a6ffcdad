"""What the detect stage records about a run, kept true across reruns (no Detectron2 needed).

* :func:`checkpoint_label` — the leaderboard row a result belongs to: ``None`` for our own
  pretraining checkpoints (the run's "ExCB (ours)" row), else a name built from the checkpoint
  record (format, architecture, file), so a torchvision file never shows up as ours.
* :func:`iteration_record` — iterations done from Detectron2's trainer state. Its
  ``TrainerBase.train`` ends with ``self.iter += 1``, so a rerun that resumes a finished run
  (start == MAX_ITER, nothing trained) leaves ``iter == MAX_ITER + 1``.
* :func:`stage_fingerprint` / :func:`finished_result` — a finished training run with the same
  inputs is not rerun: its results.json (metrics, wall_s, iterations) is returned as recorded.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from excb import ExcbError
from excb.io import read_json, sha256_json

OURS_FORMATS = ("excb-bench",)   # checkpoints written by our own pretraining
FORMAT_NAMES = {"excb-official": "ExCB official release", "mocov2": "MoCo v2", "mocov3": "MoCo v3",
                "dino": "DINO", "swav": "SwAV", "vissl": "VISSL", "solo-learn": "solo-learn",
                "torchvision": "torchvision", "timm": "timm", "random-init": "Random init"}


def checkpoint_label(rec: Mapping[str, Any], explicit: Optional[str] = None) -> Optional[str]:
    """The row name of a result computed from checkpoint record ``rec``; ``None`` = ours."""
    if explicit:
        return str(explicit)
    fmt = rec.get("format")
    if fmt in OURS_FORMATS:
        return None
    if rec.get("trained_from") is not None:   # evaluation of a model this stage trained earlier
        return checkpoint_label(rec["trained_from"])
    zoo = rec.get("zoo") if isinstance(rec.get("zoo"), Mapping) else None
    name = str(zoo["method"]) if zoo and zoo.get("method") else FORMAT_NAMES.get(str(fmt), str(fmt) if fmt else
                                                                                "unknown checkpoint")
    parts = [name] + ([str(rec["arch"])] if rec.get("arch") else [])
    if zoo and zoo.get("name"):   # a published checkpoint: its zoo name says which release
        return " ".join(parts) + f" (zoo:{zoo['name']})"
    path = rec.get("path")
    return " ".join(parts) + (f" ({Path(path).name})" if path and fmt != "random-init" else "")


def iteration_record(start_iter: int, end_iter: Optional[int], max_iter: int) -> Dict[str, Any]:
    """``{"iterations_done", "iterations_this_run", "resumed_from"}`` from the trainer's
    ``start_iter`` and its ``iter`` after ``train()`` (``None``: nothing was trained here)."""
    start = max(0, int(start_iter))
    done = start if end_iter is None else max(start, min(int(end_iter), int(max_iter)))
    return {"iterations_done": done, "iterations_this_run": max(0, done - start),
            "resumed_from": start if start > 0 else None}


# run-location values that do not change what is computed (the run directory may move)
_LOCATION_KEYS = (("MODEL", "WEIGHTS"), ("OUTPUT_DIR",))


def stage_fingerprint(overrides: Mapping[str, Any], checkpoint: Mapping[str, Any], data: Mapping[str, Any],
                      world_size: int, base_config: Optional[str]) -> str:
    """sha256 of what determines a trained model: the Detectron2 overrides without locations,
    the converted weights' content hash, the data record and the process count."""
    over = copy.deepcopy(dict(overrides))
    for path in _LOCATION_KEYS:
        node: Any = over
        for p in path[:-1]:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(path[-1], None)
    ck = {k: checkpoint.get(k) for k in ("converted_sha256", "sha256", "format", "which", "arch")}
    return sha256_json({"overrides": over, "checkpoint": ck, "data": dict(data), "world_size": int(world_size),
                        "base_config": Path(base_config).name if base_config else None})


def finished_result(run_dir: Path, fingerprint: str) -> Optional[Dict[str, Any]]:
    """The recorded results.json of a finished training run with this fingerprint, else None."""
    p = Path(run_dir) / "results.json"
    if not p.is_file():
        return None
    try:
        res = read_json(p)
    except (ExcbError, OSError, ValueError):  # an unreadable record is not reused: the stage reruns, rewrites it
        return None
    if not isinstance(res, dict) or res.get("status") != "complete" or res.get("mode", "train") != "train":
        return None
    if res.get("fingerprint") != fingerprint or not isinstance(res.get("metrics"), dict):
        return None
    return res


__all__ = ["checkpoint_label", "iteration_record", "stage_fingerprint", "finished_result", "OURS_FORMATS"]
