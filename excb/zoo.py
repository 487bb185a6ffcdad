"""The checkpoint zoo: published checkpoints as data, fetched into a cache, pinned by hash.

    path = fetch("dino_resnet50")                 # download once (progress, resumable), then cached
    path, fmt, arch, info = resolve_checkpoint("zoo:dino_resnet50")   # what a stage passes on
    model, dim, _ = load_backbone(path, format=fmt, arch=arch)

The registry is ``configs/zoo.yaml`` (``$EXCB_ZOO_REGISTRY`` points elsewhere). Files live in
``<cache>/zoo/<name>/<filename>`` with ``<cache>`` = ``$EXCB_CACHE`` or
``~/.cache/excb-bench``. Integrity, in order: a full sha256 the release publishes, a
published sha256 or md5 prefix, and the lock file (``<cache>/zoo/lock.json`` or
``$EXCB_ZOO_LOCK``) which records the sha256 of the first download and is checked on every
later use; any mismatch is a refusal naming both hashes.

Downloads write ``<file>.part`` next to the target and rename it only after the hash checks
pass; an interrupted download (killed process, dropped connection) resumes from the bytes it
has with an HTTP Range request, guarded by the server's ETag/Last-Modified (``If-Range``), so
a file that changed on the server restarts from zero instead of being spliced.

Air-gapped use: ``offline=True`` or ``EXCB_OFFLINE=1`` never touches the network;
``EXCB_ZOO_MIRROR=/dir`` takes ``/dir/<name>/<filename>`` or ``/dir/<filename>`` instead. A
missing file is an error that says which file to put where.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from excb import ExcbError
from excb.io import atomic_write_json

ZOO_PREFIX = "zoo:"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REGISTRY = REPO_ROOT / "configs" / "zoo.yaml"
METRICS = ("linear_top1", "knn_top1", "semisup_1_top1", "semisup_1_top5", "semisup_10_top1", "semisup_10_top5",
           "ap_box", "ap50_box", "ap75_box", "ap_mask", "ap50_mask", "ap75_mask")
_CHUNK = 1 << 20
_TRUE = ("1", "true", "yes", "on")


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class ZooEntry:
    name: str
    method: str
    arch: str
    format: str
    filename: str
    urls: Tuple[str, ...]
    url_source: str
    epochs: Optional[int] = None
    batch: Optional[int] = None
    multi_crop: Optional[bool] = None
    which: str = "teacher"
    sha256: Optional[str] = None
    sha256_prefix: Optional[str] = None
    md5_prefix: Optional[str] = None
    reference: bool = False
    note: str = ""
    published: Tuple[Dict[str, Any], ...] = field(default_factory=tuple)

    def published_value(self, metric: str) -> Optional[Tuple[float, str, str]]:
        """``(value, source, data set)`` of the first published source that reports ``metric``."""
        for p in self.published:
            v = p.get(metric)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return float(v), str(p.get("source", "")), str(p.get("data", ""))
        return None

    @property
    def is_vit(self) -> bool:
        return self.arch.startswith("vit")


_REQUIRED = ("method", "arch", "format", "filename", "urls", "url_source")
_OPTIONAL = ("epochs", "batch", "multi_crop", "which", "sha256", "sha256_prefix", "md5_prefix", "reference", "note",
             "published")


def registry_path() -> Path:
    return Path(os.environ.get("EXCB_ZOO_REGISTRY") or DEFAULT_REGISTRY)


_REGISTRY_CACHE: Dict[Tuple[str, int], Dict[str, ZooEntry]] = {}


def load_registry(path: Optional[Path] = None) -> Dict[str, ZooEntry]:
    """``{name: ZooEntry}`` from the registry YAML, validated (one-line errors naming entry and key)."""
    import yaml

    path = Path(path or registry_path())
    try:
        key = (str(path.resolve()), path.stat().st_mtime_ns)
    except FileNotFoundError as e:
        raise ExcbError(f"{path}: zoo registry not found (EXCB_ZOO_REGISTRY or configs/zoo.yaml)") from e
    if key in _REGISTRY_CACHE:
        return _REGISTRY_CACHE[key]
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ExcbError(f"{path}: not valid YAML ({' '.join(str(e).split())[:200]})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("entries"), dict):
        raise ExcbError(f"{path}: a zoo registry needs 'entries: {{name: {{...}}}}' (see configs/zoo.yaml)")
    out: Dict[str, ZooEntry] = {}
    from excb.checkpoint_formats import format_names

    formats = format_names()
    for name, e in doc["entries"].items():
        where = f"{path}: entry '{name}'"
        if not isinstance(e, dict):
            raise ExcbError(f"{where} is not a mapping")
        missing = [k for k in _REQUIRED if k not in e]
        unknown = [k for k in e if k not in _REQUIRED + _OPTIONAL]
        if missing or unknown:
            raise ExcbError(f"{where}: " + "; ".join(
                ([f"lacks {', '.join(missing)}"] if missing else []) + ([f"unknown key(s) {', '.join(unknown)}"] if unknown else [])))
        if e["format"] not in formats:
            raise ExcbError(f"{where}: format '{e['format']}' is not a registered checkpoint format ({', '.join(formats)})")
        if "/" in str(e["filename"]) or str(e["filename"]).startswith("."):
            raise ExcbError(f"{where}: filename '{e['filename']}' must be a plain file name")
        pubs = e.get("published") or []
        for p in pubs:
            bad = [k for k in p if k not in METRICS + ("source", "data")]
            if bad or "source" not in p:
                raise ExcbError(f"{where}: published entries need 'source' and metrics among {', '.join(METRICS)} "
                                f"(got {', '.join(bad) or 'no source'})")
        kw = {k: e[k] for k in _OPTIONAL if k in e and e[k] is not None}
        kw["published"] = tuple(dict(p) for p in pubs)
        out[name] = ZooEntry(name=name, method=str(e["method"]), arch=str(e["arch"]), format=str(e["format"]),
                             filename=str(e["filename"]), urls=tuple(e["urls"] or ()), url_source=str(e["url_source"]),
                             **kw)
    _REGISTRY_CACHE[key] = out
    return out


def get_entry(name: str) -> ZooEntry:
    reg = load_registry()
    if name not in reg:
        import difflib

        near = difflib.get_close_matches(name, list(reg), n=1)
        hint = f"did you mean '{near[0]}'? " if near else ""
        raise ExcbError(f"zoo: unknown name '{name}'; {hint}known: {', '.join(reg)} (see `excb-bench zoo list`)")
    return reg[name]


def is_zoo_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(ZOO_PREFIX)


def zoo_name(ref: str) -> str:
    return ref[len(ZOO_PREFIX):].strip()


# ----------------------------------------------------------------------------- places
def cache_dir() -> Path:
    env = os.environ.get("EXCB_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "excb-bench"


def cache_path(entry: ZooEntry) -> Path:
    return cache_dir() / "zoo" / entry.name / entry.filename


def lock_path() -> Path:
    return Path(os.environ.get("EXCB_ZOO_LOCK") or cache_dir() / "zoo" / "lock.json")


def is_offline(offline: Optional[bool] = None) -> bool:
    return bool(offline) or os.environ.get("EXCB_OFFLINE", "").strip().lower() in _TRUE


def mirror_candidates(entry: ZooEntry) -> List[Path]:
    root = os.environ.get("EXCB_ZOO_MIRROR")
    if not root:
        return []
    root_p = Path(root).expanduser()
    return [root_p / entry.name / entry.filename, root_p / entry.filename]


# ----------------------------------------------------------------------------- lock file
def read_lock() -> Dict[str, Any]:
    p = lock_path()
    if not p.exists():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ExcbError(f"{p}: zoo lock file is unreadable ({e}); it pins the hashes of downloaded checkpoints — "
                        f"repair it or delete it to re-pin on the next use") from e
    return data.get("entries", {}) if isinstance(data, dict) else {}


def _record_lock(entry: ZooEntry, sha: str, size: int, origin: str) -> None:
    p = lock_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    with _flock(p.with_name(p.name + ".flock")):
        entries = read_lock()
        if entry.name in entries:   # another process pinned it meanwhile: its record wins
            return
        entries[entry.name] = {"filename": entry.filename, "sha256": sha, "size": size, "origin": origin,
                               "pinned_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        atomic_write_json(p, {"version": 1, "entries": dict(sorted(entries.items()))})


class _flock:
    """Exclusive flock on a side file (two processes fetching one entry wait for each other)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


# ----------------------------------------------------------------------------- hashing
_HASHES: Dict[Tuple[str, int, int], Tuple[str, str]] = {}


def file_hashes(path: Path) -> Tuple[str, str]:
    """(sha256, md5) of a file in one pass, cached by (path, size, mtime) within the process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        with open(path, "rb") as f:
            while True:
                b = f.read(_CHUNK)
                if not b:
                    break
                sha.update(b)
                md5.update(b)
        _HASHES[key] = (sha.hexdigest(), md5.hexdigest())
    return _HASHES[key]


def verify_file(entry: ZooEntry, path: Path, origin: str, pin: bool = True) -> str:
    """Check ``path`` against the published pins and the lock file; pin it if new. Returns its sha256."""
    sha, md5 = file_hashes(path)
    checks = [("sha256", entry.sha256, sha, lambda want, got: got == want.lower()),
              ("sha256 prefix", entry.sha256_prefix, sha, lambda want, got: got.startswith(want.lower())),
              ("md5 prefix", entry.md5_prefix, md5, lambda want, got: got.startswith(want.lower()))]
    for what, want, got, ok in checks:
        if want and not ok(want, got):
            raise ExcbError(f"zoo:{entry.name}: {path} has {what.split()[0]} {got} but the release publishes "
                            f"{what} {want} (configs/zoo.yaml); refusing it — the file is corrupt or not the "
                            f"published one")
    locked = read_lock().get(entry.name)
    if locked and locked.get("sha256") != sha:
        raise ExcbError(f"zoo:{entry.name}: {path} has sha256 {sha} but {lock_path()} pinned {locked.get('sha256')} "
                        f"at its first download ({locked.get('pinned_at', '?')}); refusing the changed file — if the "
                        f"release was legitimately replaced, delete the '{entry.name}' entry of the lock file")
    if not locked and pin:
        _record_lock(entry, sha, path.stat().st_size, origin)
    return sha


# ----------------------------------------------------------------------------- download
def _progress(total: Optional[int], initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                dynamic_ncols=True, leave=False,
                disable=not enabled or os.environ.get("EXCB_NO_PROGRESS") == "1")


def _meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _read_meta(part: Path, url: str) -> Dict[str, Any]:
    try:
        meta = json.loads(_meta_path(part).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return meta if meta.get("url") == url else {}


class _Interrupted(Exception):
    """The transfer stopped before the announced size (dropped connection, timeout)."""


def _one_attempt(url: str, part: Path, desc: str, progress: bool, timeout: float) -> None:
    """Fetch ``url`` into ``part``, continuing from its current size when the server allows it."""
    have = part.stat().st_size if part.exists() else 0
    meta = _read_meta(part, url) if have else {}
    headers = {"User-Agent": "excb-bench (zoo)", "Accept-Encoding": "identity"}
    validator = meta.get("etag") or meta.get("last_modified")
    if have and validator:
        headers["Range"] = f"bytes={have}-"
        headers["If-Range"] = validator
    elif have:
        have = 0   # nothing proves the server still has the same file: start over
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and meta.get("total") == have:
            return   # the previous attempt had every byte
        if e.code == 416:
            part.unlink(missing_ok=True)
            raise _Interrupted("the server refused the resume range; restarting") from e
        raise ExcbError(f"{url}: HTTP {e.code} {e.reason}") from e
    with resp:
        if resp.status == 206:
            rng = resp.headers.get("Content-Range", "")   # bytes START-END/TOTAL
            try:
                start = int(rng.split()[1].split("-")[0])
                total: Optional[int] = int(rng.split("/")[1])
            except (IndexError, ValueError):
                start, total = -1, None
            if start != have:
                part.unlink(missing_ok=True)
                raise _Interrupted(f"the server answered range {rng!r} for bytes={have}-; restarting")
            mode = "ab"
        else:
            have, mode = 0, "wb"
            cl = resp.headers.get("Content-Length")
            total = int(cl) if cl and cl.isdigit() else None
        meta = {"url": url, "etag": resp.headers.get("ETag"), "last_modified": resp.headers.get("Last-Modified"),
                "total": total}
        part.parent.mkdir(parents=True, exist_ok=True)
        _meta_path(part).write_text(json.dumps(meta), encoding="utf-8")
        got = have
        with open(part, mode) as f, _progress(total, have, desc, progress) as bar:
            try:
                while True:
                    b = resp.read(_CHUNK)
                    if not b:
                        break
                    f.write(b)
                    got += len(b)
                    bar.update(len(b))
            except (OSError, HTTPException, socket.timeout) as e:
                raise _Interrupted(f"connection lost after {got} bytes ({type(e).__name__})") from e
            finally:
                f.flush()
                os.fsync(f.fileno())
        if total is not None and got != total:
            raise _Interrupted(f"connection closed after {got} of {total} bytes")


def download(url: str, part: Path, desc: str = "", progress: bool = True, retries: int = 3,
             timeout: float = 60.0) -> Path:
    """Download ``url`` into ``part`` (resuming what is there); retries interrupted transfers."""
    last: Optional[BaseException] = None
    for attempt in range(retries + 1):
        try:
            _one_attempt(url, part, desc, progress, timeout)
            return part
        except _Interrupted as e:
            last = e
            have = part.stat().st_size if part.exists() else 0
            print(f"[excb-bench] {desc or url}: {e}; resuming from byte {have} (attempt {attempt + 2}/{retries + 1})",
                  flush=True)
        except urllib.error.URLError as e:
            raise ExcbError(f"{url}: cannot connect ({e.reason}); no network? use --offline with a filled cache, or "
                            f"EXCB_ZOO_MIRROR=/dir") from e
        except (OSError, HTTPException, socket.timeout) as e:
            last = e
            if attempt == retries:
                break
            time.sleep(min(2.0 ** attempt, 10.0))
    have = part.stat().st_size if part.exists() else 0
    raise ExcbError(f"{url}: download interrupted ({last}); {have} bytes kept in {part}, rerun to resume")


# ----------------------------------------------------------------------------- fetch / resolve
def _missing(entry: ZooEntry, why: str) -> ExcbError:
    target = cache_path(entry)
    src = f"download {entry.urls[0]}" if entry.urls else "obtain the file (the release has no URL yet)"
    where = f"put it at {target}"
    mirror = os.environ.get("EXCB_ZOO_MIRROR")
    if mirror:
        where += f" or at {Path(mirror).expanduser() / entry.name / entry.filename}"
    return ExcbError(f"zoo:{entry.name}: {entry.filename} {why}; {src} and {where}")


def locate(entry: ZooEntry) -> Optional[Tuple[Path, str]]:
    """Where the entry's file already is without downloading: ``(path, 'mirror'|'cache')`` or None."""
    for p in mirror_candidates(entry):
        if p.is_file():
            return p, "mirror"
    p = cache_path(entry)
    return (p, "cache") if p.is_file() else None


def fetch(name: str, offline: Optional[bool] = None, progress: bool = True) -> Path:
    """Local path of zoo entry ``name``: mirror, cache, else a verified download into the cache."""
    entry = get_entry(name)
    found = locate(entry)
    if found:
        verify_file(entry, found[0], found[1])
        return found[0]
    if os.environ.get("EXCB_ZOO_MIRROR"):
        raise _missing(entry, f"is neither in the mirror (EXCB_ZOO_MIRROR={os.environ['EXCB_ZOO_MIRROR']}) nor in the cache")
    if is_offline(offline):
        raise _missing(entry, "is not in the cache and downloads are off (--offline / EXCB_OFFLINE=1)")
    if not entry.urls:
        raise _missing(entry, "has no download URL (not released)")
    target = cache_path(entry)
    part = target.with_name(target.name + ".part")
    with _flock(target.with_name(".fetch.lock")):
        if target.is_file():   # fetched by another process while we waited
            verify_file(entry, target, "cache")
            return target
        errors = []
        for url in entry.urls:
            try:
                download(url, part, desc=entry.name, progress=progress)
                break
            except ExcbError as e:
                errors.append(str(e))
        else:
            raise ExcbError(f"zoo:{entry.name}: every URL failed: " + " | ".join(errors))
        try:
            verify_file(entry, part, f"download {url}")
        except ExcbError:
            rejected = target.with_name(target.name + ".rejected")
            os.replace(part, rejected)
            _meta_path(part).unlink(missing_ok=True)
            raise
        os.replace(part, target)
        _meta_path(part).unlink(missing_ok=True)
        try:
            fd = os.open(str(target.parent), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        except OSError:
            pass
    return target


def resolve_checkpoint(checkpoint: Any, format: Optional[str] = "auto", arch: Optional[str] = None,
                       offline: Optional[bool] = None, progress: bool = True
                       ) -> Tuple[Any, Optional[str], Optional[str], Optional[Dict[str, Any]]]:
    """``zoo:NAME`` -> ``(local path, format, arch, zoo record)``; anything else passes through.

    The entry's format and architecture fill ``format='auto'`` / ``arch=None``; the record
    (name, method, filename, urls, sha256 as pinned) goes into results.json provenance."""
    if not is_zoo_ref(checkpoint):
        return checkpoint, format, arch, None
    name = zoo_name(checkpoint)
    entry = get_entry(name)
    path = fetch(name, offline=offline, progress=progress)
    rec = {"name": entry.name, "method": entry.method, "filename": entry.filename, "url": entry.urls[0] if entry.urls else None,
           "url_source": entry.url_source, "sha256": file_hashes(path)[0]}
    fmt = entry.format if format in (None, "", "auto") else format
    return str(path), fmt, arch or entry.arch, rec


def status(entry: ZooEntry) -> Dict[str, Any]:
    """Cache state of one entry for `zoo list` / `zoo verify` (no network, no hashing)."""
    found = locate(entry)
    locked = read_lock().get(entry.name)
    return {"name": entry.name, "present": found is not None, "where": str(found[0]) if found else str(cache_path(entry)),
            "origin": found[1] if found else None, "pinned": (locked or {}).get("sha256")}


__all__ = ["ZooEntry", "load_registry", "get_entry", "is_zoo_ref", "zoo_name", "cache_dir", "cache_path", "lock_path",
           "read_lock", "verify_file", "download", "fetch", "resolve_checkpoint", "locate", "status", "file_hashes"]
