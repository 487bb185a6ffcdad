"""Shared test helpers: a tiny pretraining config that runs in seconds on one CPU thread, free ports.

Imported as ``from tiny_helpers import ...`` (a plain module: two conftest.py files cannot both be
imported by name)."""
from __future__ import annotations

import copy
import socket
from typing import Any, Dict

import torch

# Other helpers share the 2 cores: one intra-op thread per test process keeps runs comparable.
torch.set_num_threads(1)

TINY_OVERRIDES: Dict[str, Any] = {
    "seed": 0,
    "data": {"name": "demo", "limit_train": 256},
    "backbone": {"name": "resnet18"},
    "head": {"hidden_dim": 128, "out_dim": 128, "predictor_hidden_dim": 128},
    "centroids": {"K": 64},
    "augment": {"global_size": 32, "local_size": 16, "n_local": 2, "eval_resize": 36, "eval_crop": 32,
                "global_scale": [0.35, 1.0], "local_scale": [0.1, 0.35]},
    "optim": {"lr": 0.3, "warmup_epochs": 1},
    "batch_size": 64,
    "epochs": 2,
    "num_workers": 0,
    "log_every": 1,
}


def make_tiny_config(**overrides: Any) -> Dict[str, Any]:
    """Resolved pretrain config: defaults <- TINY_OVERRIDES <- dotted ``overrides``
    (``make_tiny_config(**{"balancer.name": "none", "epochs": 3})``)."""
    from excb.config import deep_update, resolve_config, set_dotted
    from excb.train import PRETRAIN_DEFAULTS

    nested: Dict[str, Any] = {}
    for k, v in overrides.items():
        set_dotted(nested, k, v)
    return resolve_config(PRETRAIN_DEFAULTS, None, (), base=deep_update(TINY_OVERRIDES, nested))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
