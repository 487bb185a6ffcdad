"""Atomic file writes, JSONL logs and hashing: everything a run writes goes through here.

A file is written to a temporary sibling, flushed and fsync'ed, then renamed over the
target, so a kill at any moment leaves either the old file or the new one, never half.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

from excb import ExcbError

PathLike = Union[str, os.PathLike]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FAULT_HITS = [0]


def _fault_sleep_in_save(path: Path) -> None:
    """Test hook: ``EXCB_FAULT_SLEEP_IN_SAVE=<seconds>[:<name substring>[:<n>]]`` pauses inside the
    n-th (default first) matching write window — data complete in the temporary file, target not
    yet replaced — so the fault-injection suite can kill the process exactly there. Unset in
    normal use, where it costs one getenv."""
    spec = os.environ.get("EXCB_FAULT_SLEEP_IN_SAVE")
    if not spec:
        return
    seconds, match, nth = (spec.split(":") + ["", ""])[:3]
    if match and match not in path.name:
        return
    _FAULT_HITS[0] += 1
    if _FAULT_HITS[0] == int(nth or 1):
        time.sleep(float(seconds))


def atomic_write(path: PathLike, writer: Callable[[io.BufferedWriter], None]) -> Path:
    """Write ``path`` atomically; ``writer`` receives a binary file object."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make results unreadable to the group
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        _fault_sleep_in_save(path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        _silent_unlink(tmp)
        if e.errno == errno.ENOSPC:
            raise ExcbError(f"{path}: no space left on device while writing; the previous version "
                            f"of the file is intact — free disk space and rerun") from e
        raise ExcbError(f"{path}: could not write ({e.strerror or e}); the previous version is intact") from e
    except BaseException:
        _silent_unlink(tmp)
        raise
    return path


def _silent_unlink(p: PathLike) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


class _ErrorRecordingWriter:
    """File proxy that remembers the OSError of a failed write: torch.save turns it into an
    opaque RuntimeError ("unexpected pos ..."), which would hide a full disk."""

    def __init__(self, f: io.BufferedWriter):
        self.f = f
        self.error: Optional[OSError] = None

    def write(self, b) -> int:
        try:
            return self.f.write(b)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as e:
            self.error = self.error or e
            raise


def atomic_torch_save(path: PathLike, obj: Any) -> Path:
    import torch

    def _save(f: io.BufferedWriter) -> None:
        rec = _ErrorRecordingWriter(f)
        try:
            torch.save(obj, rec)
        except OSError:
            raise
        except Exception:
            if rec.error is not None:
                raise rec.error  # atomic_write reports it (ENOSPC -> "no space left")
            raise

    return atomic_write(path, _save)


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    try:
        import torch

        if isinstance(o, torch.Tensor):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def read_json(path: PathLike) -> Any:
    path = Path(path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise ExcbError(f"{path}: file not found") from e
    except json.JSONDecodeError as e:
        raise ExcbError(f"{path}: not valid JSON (line {e.lineno}: {e.msg}); delete it to regenerate") from e


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


_SHA_CACHE: Dict[tuple, str] = {}


def sha256_file_cached(path: PathLike) -> str:
    """:func:`sha256_file`, cached within the process by (resolved path, size, mtime): checkpoints are
    large and read by many stages."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()


class JsonlLogger:
    """Append-only JSONL log; each record gets a wall-clock timestamp.

    Appends of one line are flushed and fsync'ed. A torn last line (from a kill) is
    tolerated by :func:`read_jsonl`.
    """

    def __init__(self, path: PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def log(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        rec = {"time": time.time(), **record}
        line = json.dumps(rec, default=_json_default) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                size = f.tell()
                try:
                    f.write(line)
                    f.flush()
                    os.fsync(f.fileno())
                except OSError:
                    _truncate_quietly(f, size)   # a failed append leaves no (possibly torn) record behind
                    raise
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise ExcbError(f"{self.path}: no space left on device while logging; free disk space and rerun") from e
            raise


def _truncate_quietly(f, size: int) -> None:
    try:
        f.truncate(size)
    except (OSError, ValueError):
        pass


def read_jsonl(path: PathLike) -> list:
    out = []
    p = Path(path)
    if not p.exists():
        return out
    with open(p, "r", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # torn line from an interrupted write
    return out


def package_versions() -> Dict[str, Optional[str]]:
    """Versions of the packages that change numbers, for results files."""
    import platform
    from importlib import metadata

    out: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "timm", "numpy", "excb-bench"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
