"""Fixtures of the fault-injection suite; the helpers live in ``faultlib.py``."""
from __future__ import annotations

from pathlib import Path

import pytest

from faultlib import pretrain_cmd, run


@pytest.fixture(scope="session")
def reference_pretrain(tmp_path_factory) -> Path:
    """One uninterrupted tiny pretraining run (2 epochs) that every resumed run must reproduce."""
    d = tmp_path_factory.mktemp("reference")
    out = d / "run"
    pr = run(pretrain_cmd(out), d, timeout=300, tag="reference")
    assert pr.p.returncode == 0, pr.report()
    assert (out / "checkpoint.pth").exists() and (out / "checkpoint_prev.pth").exists()
    return out


