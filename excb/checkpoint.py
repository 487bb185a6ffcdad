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

import numpy as np
import torch

from excb import ExcbError
from excb.io import atomic_torch_save
from excb.safe_read import OWN_FILE_HINT, read_torch_file
from excb.safe_read import UnsafePickleError as UnsafeCheckpointError  # noqa: F401 (public name)

LATEST = "checkpoint.pth"
PREVIOUS = "checkpoint_prev.pth"
FORMAT_TAG = "excb-bench"


def save_training_checkpoint(run_dir: str | Path, state: Dict[str, Any], snapshot_name: Optional[str] = None) -> Path:
    """Write ``state`` as the latest checkpoint; the former latest becomes ``checkpoint_prev.pth``."""
    run_dir = Path(run_dir)
    latest = run_dir / LATEST
    tmp_target = run_dir / (LATEST + ".next")
    state = plain_state(state)  # e.g. numpy lr values in optimizer param groups would defeat weights_only
    atomic_torch_save(tmp_target, state)  # complete and fsync'ed before anything is renamed
    if latest.exists():
        os.replace(latest, run_dir / PREVIOUS)
    os.replace(tmp_target, latest)
    if snapshot_name:
        atomic_torch_save(run_dir / snapshot_name, {k: v for k, v in state.items() if k not in ("optimizer", "scaler")})
    return latest


def plain_state(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays turned into Python numbers/tensors, so that the saved file
    holds only plain containers and tensors and loads with ``torch.load(weights_only=True)``."""
    if isinstance(obj, dict):
        return {k: plain_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain_state(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    return obj


def load_checkpoint_file(path: str | Path) -> Dict[str, Any]:
    """One of our training checkpoints, read weights-only by :func:`excb.safe_read.read_torch_file`.

    A file that needs a full unpickle raises :class:`UnsafeCheckpointError` (it names the globals;
    the file is left where it is); a damaged one an ExcbError naming the file."""
    path = Path(path)
    obj = read_torch_file(path, what="training checkpoint", unsafe_hint=OWN_FILE_HINT)
    if not isinstance(obj, dict):
        raise ExcbError(f"{path}: not an excb-bench checkpoint (top level is {type(obj).__name__})")
    return obj


def _is_main() -> bool:
    from excb import distributed as D

    return D.is_main() and os.environ.get("RANK", "0") == "0"


def _clean_stale_temporaries(run_dir: Path, log: Callable[[str], None]) -> None:
    """Remove temporaries of checkpoint writes a kill interrupted (each is a full checkpoint's size).

    Safe because only one process writes a run directory (the run lock) and this runs before it writes."""
    for tmp in run_dir.glob(".checkpoint*.tmp"):
        try:
            size = tmp.stat().st_size
            tmp.unlink()
            log(f"removed orphaned temporary {tmp.name} ({size / 2**20:.0f} MiB) left by an interrupted write")
        except OSError:
            pass


def find_resumable(run_dir: str | Path, check: Optional[Callable[[Dict[str, Any]], None]] = None,
                   log: Callable[[str], None] = lambda m: warnings.warn(m)) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """Newest loadable checkpoint in ``run_dir`` (latest, then an unrenamed ``.next``, then previous).

    An unreadable file is reported, moved aside to ``<name>.corrupt`` (so the next save cannot rotate
    it over the good previous generation) and skipped. A readable file that is not ours, needs unsafe
    unpickling or fails ``check`` (another backbone/K) is an error: training from scratch would
    overwrite it. A ``.next`` left by a kill between the two renames of a save is promoted to
    ``checkpoint.pth``. Every rank reads first; only rank 0 then renames or deletes files.
    """
    from excb import distributed as D

    run_dir = Path(run_dir)
    candidates = [run_dir / LATEST, run_dir / (LATEST + ".next"), run_dir / PREVIOUS]
    found = []
    damaged: list = []
    for p in candidates:
        if not p.exists():
            continue
        try:
            obj = load_checkpoint_file(p)
        except UnsafeCheckpointError:
            raise   # never moved aside, never overwritten: the error names the file and its globals
        except ExcbError as e:
            damaged.append((p, e))
            continue
        if obj.get("format") != FORMAT_TAG:
            raise ExcbError(f"{p}: not an excb-bench training checkpoint (format={obj.get('format')!r}); "
                            f"refusing to overwrite it — use another output directory")
        if check is not None:
            try:
                check(obj)
            except ExcbError as e:
                raise ExcbError(f"{p}: {e}; refusing to overwrite it — use another output directory, or move "
                                f"the old checkpoints away to start over") from e
        found.append((p, obj))
    # newest = most training done (step-level checkpoints share their epoch with the last epoch-end one)
    best = max(found, key=lambda po: (po[1].get("epoch", -1), po[1].get("step", -1))) if found else None
    D.barrier()  # every rank has read what it needs before rank 0 renames anything
    if not _is_main():
        return best
    for p, e in damaged:
        note = ""
        try:
            os.replace(p, p.with_name(p.name + ".corrupt"))
            note = f" (moved aside to {p.name}.corrupt)"
        except OSError:
            pass
        log(f"skipping {e}{note}")
    if run_dir.is_dir():
        _clean_stale_temporaries(run_dir, log)
    if best is None:
        if damaged:
            log(f"no usable checkpoint in {run_dir} (damaged: {', '.join(p.name for p, _ in damaged)}); "
                f"starting from epoch 0")
        return None
    if damaged:
        log(f"using {best[0].name} (epoch {best[1].get('epoch')}) instead of the damaged "
            f"{', '.join(p.name for p, _ in damaged)}")
    if best[0].name == LATEST + ".next":
        # a kill hit between the two renames of save_training_checkpoint: finish them
        latest = run_dir / LATEST
        if latest.exists():
            os.replace(latest, run_dir / PREVIOUS)
        os.replace(best[0], latest)
        log(f"completed the interrupted save: {best[0].name} (epoch {best[1].get('epoch')}) is now {LATEST}")
        best = (latest, best[1])
    return best
