"""Disk full while writing: a clear one-line error, earlier files intact, no half-written files.

Two injections: ENOSPC raised by ``os.fsync`` in-process (always available), and a real full
filesystem — a small tmpfs mounted for the test (skipped where ``mount`` is not permitted)."""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest
import torch

from excb import ExcbError
from excb import io as xio
from faultlib import assert_bit_identical, assert_one_line_error, pretrain_cmd, run


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()[:80]})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_injected_enospc_keeps_previous_results(tmp_path, monkeypatch):
    res = tmp_path / "knn" / "results.json"
    xio.atomic_write_json(res, {"metrics": {"top1": 71.5}})
    log = xio.JsonlLogger(tmp_path / "log.jsonl")
    log.log({"kind": "epoch", "epoch": 1})
    monkeypatch.setattr(xio.os, "fsync", _enospc)
    with pytest.raises(ExcbError) as e:
        xio.atomic_write_json(res, {"metrics": {"top1": 0.0}})
    msg = str(e.value)
    assert "\n" not in msg and str(res) in msg and "no space left" in msg and "previous version" in msg
    with pytest.raises(ExcbError, match="no space left on device while logging"):
        log.log({"kind": "epoch", "epoch": 2})
    monkeypatch.undo()
    assert xio.read_json(res) == {"metrics": {"top1": 71.5}}
    # the failed append is rolled back: the log holds exactly the record that was written before
    assert [r["epoch"] for r in xio.read_jsonl(tmp_path / "log.jsonl")] == [1]
    assert sorted(p.name for p in (tmp_path / "knn").iterdir()) == ["results.json"], "no temporaries left"


def test_full_tmpfs_torch_save_and_json(tmp_path):
    """A really full filesystem: torch.save's opaque RuntimeError is reported as 'no space left'."""
    with tmpfs(tmp_path / "small", "1m") as d:
        xio.atomic_write_json(d / "results.json", {"ok": 1})
        ck = d / "checkpoint.pth"
        xio.atomic_torch_save(ck, {"w": torch.ones(10)})
        with pytest.raises(ExcbError) as e:
            xio.atomic_torch_save(ck, {"w": torch.zeros(1_000_000)})
        assert "no space left on device" in str(e.value) and str(ck) in str(e.value)
        with pytest.raises(ExcbError, match="no space left"):
            xio.atomic_write_bytes(d / "results.json", b"x" * 2_000_000)
        assert xio.read_json(d / "results.json") == {"ok": 1}
        assert torch.equal(torch.load(ck, weights_only=True)["w"], torch.ones(10))
        assert sorted(p.name for p in d.iterdir()) == ["checkpoint.pth", "results.json"]


@pytest.mark.slow   # > ~15 s on 2 cores; CI runs it (.ci/run: pytest -m slow)
def test_pretrain_on_a_filling_disk_then_resume(tmp_path, reference_pretrain):
    """Epoch 1's checkpoint fits, epoch 2's does not: one-line error, epoch 1 intact; after the disk
    is grown ("free disk space and rerun") the same command resumes to the reference weights."""
    ck_size = (reference_pretrain / "checkpoint.pth").stat().st_size
    size_mib = int(ck_size * 1.6 / 2**20)     # room for one checkpoint and its logs, not two
    with tmpfs(tmp_path / "disk", f"{size_mib}m") as d:
        out = d / "run"
        pr = run(pretrain_cmd(out), tmp_path, timeout=300, tag="full")
        line = assert_one_line_error(pr, "no space left on device", str(out / "checkpoint.pth"))
        assert "intact" in line
        assert torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)["epoch"] == 1
        assert not [p for p in os.listdir(out) if p.endswith(".tmp")], "no half-written temporaries left"
        r = subprocess.run(["mount", "-o", f"remount,size={3 * size_mib}m", str(d)], capture_output=True)
        assert r.returncode == 0, r.stderr
        again = run(pretrain_cmd(out), tmp_path, timeout=300, tag="again")
        assert again.p.returncode == 0, again.report()
        assert "resuming from" in again.stdout
        assert_bit_identical(reference_pretrain / "checkpoint.pth", out / "checkpoint.pth")
