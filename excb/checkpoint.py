"""Training checkpoints: atomic save with one previous generation, verified resume.

``save_training_checkpoint`` writes ``checkpoint.pth`` atomically and keeps the one it
replaces as ``checkpoint_prev.pth``. ``find_resumable`` returns the newest file that loads
and passes a check; a truncated or corrupt file is reported (one line) and skipped, so a
kill inside a write, or a damaged disk block, costs at most one epoch.

Third-party / backbone-only loading lives in :mod:`excb.checkpoint_formats`
(``load_backbone``); this module only handles our own training state.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from excb import ExcbError
from excb.io import atomic_torch_save

LATEST = "checkpoint.pth"
PREVIOUS = "checkpoint_prev.pth"
FORMAT_TAG = "excb-bench"


def save_training_checkpoint(run_dir: str | Path, state: Dict[str, Any], snapshot_name: Optional[str] = None) -> Path:
    """Write ``state`` as the latest checkpoint; the former latest becomes ``checkpoint_prev.pth``."""
    run_dir = Path(run_dir)
    latest = run_dir / LATEST
    tmp_target = run_dir / (LATEST + ".next")
    atomic_torch_save(tmp_target, state)  # complete and fsync'ed before anything is renamed
    if latest.exists():
        os.replace(latest, run_dir / PREVIOUS)
    os.replace(tmp_target, latest)
    if snapshot_name:
        atomic_torch_save(run_dir / snapshot_name, {k: v for k, v in state.items() if k not in ("optimizer", "scaler")})
    return latest


def load_checkpoint_file(path: str | Path) -> Dict[str, Any]:
    """``torch.load`` with weights_only; any failure is a one-line ExcbError naming the file."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise ExcbError(f"{path}: checkpoint not found") from e
    except Exception as e:  # noqa: BLE001 - torch raises many types for damaged files
        raise ExcbError(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                        f"the file is truncated or corrupt") from e
    if not isinstance(obj, dict):
        raise ExcbError(f"{path}: not an excb-bench checkpoint (top level is {type(obj).__name__})")
    return obj


def find_resumable(run_dir: str | Path, check: Optional[Callable[[Dict[str, Any]], None]] = None,
                   log: Callable[[str], None] = lambda m: warnings.warn(m)) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """Newest loadable checkpoint in ``run_dir`` (latest, then an unrenamed ``.next``, then previous)."""
    run_dir = Path(run_dir)
    candidates = [run_dir / LATEST, run_dir / (LATEST + ".next"), run_dir / PREVIOUS]
    found = []
    for p in candidates:
        if not p.exists():
            continue
        try:
            obj = load_checkpoint_file(p)
            if obj.get("format") != FORMAT_TAG:
                raise ExcbError(f"{p}: not an excb-bench training checkpoint (format={obj.get('format')!r})")
            if check is not None:
                check(obj)
            found.append((p, obj))
        except ExcbError as e:
            log(f"skipping {e}")
    if not found:
        return None
    # a leftover '.next' can be newer than 'latest' if a kill hit between the two renames
    return max(found, key=lambda po: po[1].get("epoch", -1))
