"""Run-length budgets for pretraining that are not whole epochs.

Config keys (top level of the pretraining config)::

    epochs: 12.5          # fractions allowed: the run is round(epochs · steps_per_epoch) steps
    optim.warmup_epochs   # fractions allowed, rounded to whole steps
    max_steps: 0          # >0: at most this many optimizer steps in the whole run; the lr / wd /
                          #     EMA schedules span the shortened run, so it ends annealed
    time_budget: ""       # wall clock for *this invocation*: 3600, "45m", "7.5h", "23:30:00";
                          #     at the first step that would end past it the run checkpoints and
                          #     stops ("stopped"); the same command continues (e.g. a requeued job)
    save_every_steps: 0   # >0: also checkpoint every N steps inside an epoch
    stop_after_step: 0    # >0: checkpoint and stop after this global step (schedules unchanged)

A run stopped inside an epoch resumes exactly: the checkpoint carries the global step, the
statistics accumulated so far in the epoch and the global RNG state, and the sampler skips the
batches already seen (the data order and every augmentation are functions of the seed, the
epoch and the sample index), so the result equals an uninterrupted run's.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Tuple

import torch

from excb import ExcbError

BUDGET_DEFAULTS: Dict[str, Any] = {"max_steps": 0, "time_budget": "", "save_every_steps": 0, "stop_after_step": 0}

# keys that decide when a process stops or writes, never what the finished run computes
RUN_CONTROL_KEYS = ("time_budget", "save_every_steps", "stop_after_step")

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any, key: str = "time_budget") -> float:
    """Seconds from 3600, "90s", "45m", "7.5h", "2d" or SLURM's "[D-]HH:MM:SS" / "MM:SS"; 0 = none."""
    if value in (None, "", 0):
        return 0.0
    text = str(value).strip().lower()
    try:
        if re.fullmatch(r"\d+(\.\d*)?", text):
            sec = float(text)
        elif m := re.fullmatch(r"(\d+(?:\.\d*)?)\s*([smhd])", text):
            sec = float(m.group(1)) * _UNITS[m.group(2)]
        elif m := re.fullmatch(r"(?:(\d+)-)?(\d+):(\d{1,2})(?::(\d{1,2}))?", text):
            days, a, b, c = (int(g) if g else 0 for g in m.groups())
            sec = days * 86400.0 + (a * 3600 + b * 60 + c if m.group(4) else a * 60 + b)
        else:
            raise ValueError(text)
    except ValueError:
        raise ExcbError(f"config: key '{key}' must be seconds or a duration like '45m', '7.5h', '23:30:00', "
                        f"got {value!r}") from None
    if not math.isfinite(sec) or sec < 0:
        raise ExcbError(f"config: key '{key}' must be a duration >= 0, got {value!r}")
    return sec


def validate_budget(cfg: Dict[str, Any], source: str = "config") -> None:
    for key in ("max_steps", "save_every_steps", "stop_after_step"):
        if cfg[key] < 0:
            raise ExcbError(f"{source}: key '{key}' must be >= 0 (0 = off), got {cfg[key]}")
    if cfg["optim"]["warmup_epochs"] < 0:
        raise ExcbError(f"{source}: key 'optim.warmup_epochs' must be >= 0, got {cfg['optim']['warmup_epochs']}")
    parse_duration(cfg["time_budget"])


def total_steps(cfg: Dict[str, Any], steps_per_epoch: int) -> int:
    """Optimizer steps of the whole run: round(epochs · steps per epoch), capped by max_steps, >= 1."""
    n = int(round(float(cfg["epochs"]) * steps_per_epoch))
    if cfg["max_steps"] > 0:
        n = min(n, int(cfg["max_steps"]))
    return max(n, 1)


def run_epochs(cfg: Dict[str, Any], steps_per_epoch: int) -> float:
    """The run's length in (fractional) epochs, what the schedules span."""
    return total_steps(cfg, steps_per_epoch) / steps_per_epoch


def epoch_spans(start_step: int, total: int, steps_per_epoch: int) -> Iterator[Tuple[int, int, int]]:
    """``(epoch, first, end)`` per epoch from global step ``start_step`` to ``total``: the epoch's
    steps ``first <= i < end`` (indices inside the epoch; the last epoch may be partial)."""
    step = start_step
    while step < total:
        epoch, first = divmod(step, steps_per_epoch)
        end = min(steps_per_epoch, total - epoch * steps_per_epoch)
        yield epoch, first, end
        step = epoch * steps_per_epoch + end


@dataclass
class StopRule:
    """Decides after each step whether to checkpoint inside the epoch and whether to stop."""

    save_every_steps: int = 0
    stop_after_step: int = 0
    time_budget_s: float = 0.0
    started: float = 0.0
    _last: float = 0.0
    _step_s: float = 0.0

    @classmethod
    def from_config(cls, cfg: Dict[str, Any], started: Optional[float] = None) -> "StopRule":
        t = time.time() if started is None else started
        return cls(int(cfg["save_every_steps"]), int(cfg["stop_after_step"]), parse_duration(cfg["time_budget"]), t, t)

    def stop_reason(self, step_done: int, now: Optional[float] = None) -> Optional[str]:
        """``"stop_after_step"`` / ``"time_budget"`` when the run should stop after ``step_done``
        global steps, else None. The time budget stops when one more step (its duration
        estimated from the steps so far) would end past it: at least one step per invocation."""
        now = time.time() if now is None else now
        dt = now - self._last
        self._step_s = dt if self._step_s == 0.0 else 0.8 * self._step_s + 0.2 * dt
        self._last = now
        if self.stop_after_step and step_done >= self.stop_after_step:
            return "stop_after_step"
        if self.time_budget_s and now - self.started + self._step_s >= self.time_budget_s:
            return "time_budget"
        return None

    def save_due(self, step_done: int) -> bool:
        return bool(self.save_every_steps) and step_done % self.save_every_steps == 0


# ----------------------------------------------------------------------------- exact mid-epoch resume
def rng_state(device: torch.device) -> Dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def resume_step(ck: Dict[str, Any], steps_per_epoch: int, path: Any = "checkpoint") -> int:
    """Global steps done by checkpoint ``ck``: its ``step`` when made with the same steps per
    epoch; epoch-end checkpoints of older versions (or another batch size) resume at ``epoch``."""
    epoch = int(ck.get("epoch", 0))
    step, spe = ck.get("step"), ck.get("steps_per_epoch")
    if step is None or spe == steps_per_epoch:
        return int(step) if step is not None else epoch * steps_per_epoch
    if int(step) % int(spe):
        raise ExcbError(f"{path}: saved inside an epoch with {spe} steps per epoch, but this config makes "
                        f"{steps_per_epoch}; resume with the same batch_size and data, or start another "
                        f"--output-dir")
    return (int(step) // int(spe)) * steps_per_epoch


def cluster_capacity_warning(K: int, n_images: int, rows_per_epoch: int) -> Optional[str]:
    """A warning (not an error) when K exceeds the training images: what the user should expect."""
    if K <= n_images:
        return None
    per = rows_per_epoch / K
    none = f", so at least {K - rows_per_epoch} clusters get none in an epoch" if rows_per_epoch < K else ""
    return (f"centroids.K ({K}) is larger than the training set ({n_images} images): a balanced epoch gives each "
            f"cluster {per:.2f} expected training assignments ({rows_per_epoch} teacher rows / K){none}, and the final "
            f"eval-mode pass (one assignment per image) leaves at least {K - n_images} clusters "
            f"({100 * (K - n_images) / K:.0f} %) empty. Training runs anyway; for about 4 or more images per cluster "
            f"use centroids.K <= {max(n_images // 4, 1)}")
