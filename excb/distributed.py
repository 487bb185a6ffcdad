"""torch.distributed helpers for runs under ``torchrun`` (NCCL on GPU, gloo on CPU).

Single-process runs need no setup: every helper degrades to the identity.
"""
from __future__ import annotations

import datetime
import os
from typing import List, Optional

import torch
import torch.distributed as dist

from excb import ExcbError


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(backend: Optional[str] = None, timeout_s: float = 1800.0) -> torch.device:
    """Join the process group torchrun describes in the environment; return this rank's device.

    Without torchrun's variables this is a single-process run. ``timeout_s`` bounds how long a
    rank waits for a dead peer before it fails with an error instead of hanging.
    """
    cuda = torch.cuda.is_available()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        if not is_dist():
            backend = backend or ("nccl" if cuda else "gloo")
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            if cuda:
                torch.cuda.set_device(local_rank)
            try:
                dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
            except Exception as e:  # noqa: BLE001 - surface as one line
                raise ExcbError(f"torch.distributed init failed ({backend}): {str(e).splitlines()[0]}; "
                                f"launch with torchrun and check MASTER_ADDR/MASTER_PORT") from e
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    return torch.device("cuda") if cuda else torch.device("cpu")


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate equally-shaped tensors from all ranks (rank order)."""
    if not is_dist():
        return t
    out: List[torch.Tensor] = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out)


def barrier() -> None:
    if is_dist():
        dist.barrier()


def broadcast_object(obj):
    if not is_dist():
        return obj
    lst = [obj]
    dist.broadcast_object_list(lst, src=0)
    return lst[0]
