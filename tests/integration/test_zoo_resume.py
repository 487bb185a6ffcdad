"""`excb-bench zoo fetch` killed mid-download (SIGKILL of the real process) resumes with a Range
request on the next run and ends with the served file, byte for byte; `zoo verify` then passes."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zoo_helpers import ZooServer, payload, write_registry  # noqa: E402

SIZE = 4 * 1024 * 1024


def _env(tmp: Path, reg: Path) -> dict:
    env = dict(os.environ, EXCB_CACHE=str(tmp / "cache"), EXCB_ZOO_REGISTRY=str(reg))
    for var in ("EXCB_OFFLINE", "EXCB_ZOO_MIRROR", "EXCB_ZOO_LOCK"):
        env.pop(var, None)
    return env


@pytest.mark.slow   # > ~15 s on 2 cores; CI runs it (.ci/run: pytest -m slow)
def test_killed_fetch_resumes_from_partial_file(tmp_path: Path):
    server = ZooServer()
    try:
        data = payload(SIZE, 5)
        server.files["/f/model.pth"] = data
        server.hang_after = 1024 * 1024              # first response stalls after 1 MiB
        reg = write_registry(tmp_path / "zoo.yaml", {"model": {"urls": [server.url("/f/model.pth")]}})
        env = _env(tmp_path, reg)
        cmd = [sys.executable, "-m", "excb_bench.cli", "zoo", "fetch", "model"]
        part = tmp_path / "cache" / "zoo" / "model" / "model.pth.part"
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while time.time() < deadline and not (part.exists() and part.stat().st_size >= 1024 * 1024):
            time.sleep(0.05)
        assert part.exists() and part.stat().st_size == 1024 * 1024
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        server.release.set()
        assert not (tmp_path / "cache" / "zoo" / "model" / "model.pth").exists()

        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        final = tmp_path / "cache" / "zoo" / "model" / "model.pth"
        assert hashlib.sha256(final.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
        assert server.requests[-1]["range"] == f"bytes={1024 * 1024}-"
        assert server.bytes_sent == SIZE                 # the first MiB was not fetched again
        assert not part.exists()
        lock = json.loads((tmp_path / "cache" / "zoo" / "lock.json").read_text())
        assert lock["entries"]["model"]["sha256"] == hashlib.sha256(data).hexdigest()

        ok = subprocess.run([sys.executable, "-m", "excb_bench.cli", "zoo", "verify"], env=env,
                            capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0 and "zoo:model: ok" in ok.stdout
        final.write_bytes(data[:-1] + b"\x00")         # tampered afterwards: verify refuses, names both hashes
        bad = subprocess.run([sys.executable, "-m", "excb_bench.cli", "zoo", "verify", "model"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and hashlib.sha256(data).hexdigest() in bad.stderr
        assert "Traceback" not in bad.stderr
    finally:
        server.close()
