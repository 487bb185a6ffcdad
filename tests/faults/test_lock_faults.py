"""Two processes on one run directory: the second refuses (one line naming the holder); a lock left
by a SIGKILLed process is detected as stale, cleared, and the rerun resumes."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from faultlib import EXCB_BENCH, TINY_PRETRAIN, Proc, assert_one_line_error, base_env, read_json, run, wait_until

# The first process parks inside its epoch-2 checkpoint write: it holds the lock, costs no CPU, and
# its SIGKILL later leaves a resumable run (epoch 1 saved) behind.
PARK = base_env(EXCB_FAULT_SLEEP_IN_SAVE="120:checkpoint.pth.next:2")


def _pipeline(tmp: Path) -> Path:
    pre = {}
    for item in TINY_PRETRAIN:
        k, v = item.split("=", 1)
        cur = pre
        parts = k.split(".")
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
        cur[parts[-1]] = yaml.safe_load(v)
    cfg = {"name": "lock", "output_dir": str(tmp / "run"), "seed": 0, "data": {"name": "demo"},
           "stages": ["pretrain"], "pretrain": pre}
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow   # > ~15 s on 2 cores; CI runs it (.ci/run: pytest -m slow)
def test_second_run_all_refused_then_stale_lock_cleared(tmp_path):
    path = _pipeline(tmp_path)
    run_dir = tmp_path / "run"
    first = Proc([*EXCB_BENCH, "run-all", "--config", str(path)], tmp_path, env=PARK, tag="first")
    wait_until(lambda: any((run_dir / "pretrain").glob(".checkpoint.pth.next.*")), first, 240,
               "the first run inside its epoch-2 save")
    holder = (run_dir / ".lock").read_text()
    assert holder.startswith(f"pid {first.pid} ")

    # same directory, and a stage command aimed inside it: both refused while the first works
    second = run([*EXCB_BENCH, "run-all", "--config", str(path)], tmp_path, timeout=120, tag="second")
    assert_one_line_error(second, str(run_dir), "in use by", f"pid {first.pid}")
    nested = run([*EXCB_BENCH, "pretrain", "-o", str(run_dir / "pretrain"), *TINY_PRETRAIN], tmp_path, timeout=120,
                 tag="nested")
    assert_one_line_error(nested, "inside run directory", str(run_dir), f"pid {first.pid}")
    assert first.poll() is None, "the refused processes must not disturb the running one"

    first.kill9()                        # the lock file still names the dead process
    assert (run_dir / ".lock").read_text() == holder
    third = run([*EXCB_BENCH, "run-all", "--config", str(path)], tmp_path, timeout=300, tag="third")
    assert third.p.returncode == 0, third.report()
    assert f"cleared a stale lock left by pid {first.pid}" in third.stdout
    assert "pretrain: resuming" in third.stdout or "resuming from" in third.stdout, third.report()
    assert read_json(run_dir / "manifest.json")["stages"]["pretrain"]["status"] == "complete"
    assert (run_dir / ".lock").read_text() == "", "a clean exit releases and empties the lock"


def test_two_pretrain_commands_on_one_output_dir(tmp_path):
    out = tmp_path / "out"
    cmd = [*EXCB_BENCH, "pretrain", "-o", str(out), *TINY_PRETRAIN]
    first = Proc(cmd, tmp_path, env=base_env(EXCB_FAULT_SLEEP_IN_SAVE="120:checkpoint.pth.next:1"), tag="first")
    wait_until(lambda: any(out.glob(".checkpoint.pth.next.*")), first, 240, "the first pretrain holding the lock")
    second = run(cmd, tmp_path, timeout=120, tag="second")
    assert_one_line_error(second, str(out), "in use by", f"pid {first.pid}")
    first.kill9()
