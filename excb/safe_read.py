"""The one reader of every PyTorch/pickle file the project reads back.

Checkpoints handed to a stage, pretraining's own ``checkpoint.pth``, a stage's resumable
``state.pth``, feature caches and Detectron2 weight pickles all come through here; nothing
else calls ``torch.load`` or ``pickle.load``. A file is loaded with ``weights_only=True`` and
a small allow-list of data-only classes:

* ``argparse.Namespace`` — DINO, the authors' ExCB release and many others pickle their
  command-line arguments. Unpickling one only sets attributes on an empty object, and the
  attribute values still go through the restricted unpickler.
* numpy scalars, dtypes and arrays (``best_acc1`` stored as ``np.float64``, numpy's RNG state
  in a stage's ``state.pth``). An array is rebuilt from its raw bytes; the elements of an
  object array are themselves unpickled by the restricted unpickler.

A file that needs anything else (a custom class, a function such as ``os.system`` or
``exec``) is refused with :class:`UnsafePickleError`, which lists the globals it asks for;
the file is neither loaded, renamed nor deleted. The globals are read off the pickle's
opcodes without executing any of them, for zip checkpoints and for legacy (non-zip) or raw
pickles alike, so a legacy file that needs trust is reported as such, not as "truncated".
Only ``trust=True`` (CLI ``--trust-checkpoint``, offered for checkpoints the user brings,
never for files a run wrote itself) performs a full unpickle.
"""
from __future__ import annotations

import _compat_pickle
import argparse
import io
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from excb import ExcbError

TRUST_HINT = "if you trust it, pass trust_pickle=True (CLI: --trust-checkpoint)"
# what to do about a refused file the project wrote itself (state, cache, training checkpoint)
OWN_FILE_HINT = ("excb-bench never writes such a file, so it was replaced or modified; delete it to redo "
                 "that work, or use another --output-dir")


class UnsafePickleError(ExcbError):
    """The file needs a full unpickle (it names classes/functions outside the allow-list)."""

    def __init__(self, message: str, path: Path, globals_: List[str]):
        super().__init__(message)
        self.path = path
        self.globals = globals_


class UnreadableFileError(ExcbError):
    """The file is not a loadable pickle/checkpoint (truncated, corrupt, another kind of file)."""


# ----------------------------------------------------------------------------- allow-list
def safe_globals() -> list:
    """Data-only classes allowed on top of torch's weights-only defaults (see the module docstring)."""
    allowed: list = [argparse.Namespace]
    try:
        import numpy as np

        try:
            multiarray = np._core.multiarray  # numpy >= 2
        except AttributeError:  # pragma: no cover - numpy 1.x
            multiarray = np.core.multiarray
        allowed += [multiarray.scalar, multiarray._reconstruct, np.ndarray, np.dtype]
        allowed += sorted({type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFD"}, key=str)
    except ImportError:  # pragma: no cover - numpy ships with torch
        pass
    return allowed


def _qualname(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _allowed_names() -> Set[str]:
    names = {_qualname(g) for g in safe_globals()}
    names |= {n.replace("numpy._core.", "numpy.core.") for n in names}   # files written under numpy 1.x
    try:
        from torch import _weights_only_unpickler as wu

        names |= set(wu._get_allowed_globals())
        names |= set(wu._get_user_allowed_globals())
    except Exception:  # noqa: BLE001 - private API: without it we over-report, which is safe
        pass
    # builtins torch's unpickler resolves without listing them as globals
    names |= {"builtins.set", "builtins.frozenset", "builtins.bytearray", "builtins.slice", "builtins.complex",
              "_codecs.encode", "collections.OrderedDict", "torch._utils._rebuild_tensor_v2",
              "torch._utils._rebuild_parameter", "torch.serialization._get_layout"}
    return names


# ----------------------------------------------------------------------------- opcode scan
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
               "SHORT_BINSTRING"}


def _scan_pickle(stream: io.BufferedIOBase, out: List[str]) -> None:
    """Append the globals one pickle in ``stream`` asks for; nothing is executed.

    ``GLOBAL`` carries its name; ``STACK_GLOBAL`` takes two strings from the stack, which are
    tracked through the memo well enough for the way pickle and torch write them."""
    stack: List[Any] = []
    memo: Dict[int, Any] = {}
    for op, arg, _pos in pickletools.genops(stream):
        name = op.name
        if name == "GLOBAL":
            mod, _, attr = str(arg).partition(" ")
            out.append(f"{_compat_pickle.IMPORT_MAPPING.get(mod, mod)}.{attr}")   # protocol < 3: __builtin__
            stack.append(None)
        elif name == "STACK_GLOBAL":
            attr = stack.pop() if stack else None
            mod = stack.pop() if stack else None
            out.append(f"{mod}.{attr}" if isinstance(mod, str) and isinstance(attr, str) else "<unknown global>")
            stack.append(None)
        elif name in _STRING_OPS:
            stack.append(arg if isinstance(arg, str) else (arg.decode("latin-1") if isinstance(arg, bytes) else None))
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = stack[-1] if stack else None
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1] if stack else None
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            stack.append(memo.get(int(arg)))
        elif name == "POP" and stack:
            stack.pop()
        else:
            stack.append(None)   # only the two strings right before STACK_GLOBAL matter


def pickle_globals(path: str | Path, max_pickles: int = 6) -> Tuple[List[str], bool]:
    """``(globals, is_zip)``: every ``module.name`` the pickle(s) of ``path`` would import.

    Zip checkpoints: the ``*.pkl`` records of the archive. Legacy ``torch.save`` files hold a
    few pickles in a row (magic number, protocol, system info, the object, storage keys)
    followed by raw storage bytes: they are scanned in turn until one does not parse."""
    path = Path(path)
    found: List[str] = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if info.filename.endswith(".pkl"):
                    try:
                        _scan_pickle(io.BytesIO(zf.read(info)), found)
                    except Exception:  # noqa: BLE001 - keep what was read before the damage
                        pass
        return list(dict.fromkeys(found)), True
    with open(path, "rb") as f:
        for _ in range(max_pickles):
            start = f.tell()
            try:
                _scan_pickle(f, found)
            except Exception:  # noqa: BLE001 - raw storage bytes, a truncated tail or not a pickle
                break
            if f.tell() == start:
                break
    return list(dict.fromkeys(found)), False


def unsafe_globals(path: str | Path) -> Tuple[List[str], bool]:
    """``(globals outside the allow-list, is_zip)`` of ``path``."""
    names, is_zip = pickle_globals(path)
    allowed = _allowed_names()
    return [n for n in names if n not in allowed], is_zip


# ----------------------------------------------------------------------------- reading
def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {(lines[0] if lines else '')[:160]}"


def _unsafe_message(path: Path, unsafe: List[str], is_zip: bool, hint: str, what: str) -> str:
    shown = ", ".join(unsafe[:6]) + (f" (+{len(unsafe) - 6} more)" if len(unsafe) > 6 else "")
    kind = "" if is_zip else "legacy (non-zip) pickle; "
    return (f"{path}: refusing to load this {what}: {kind}loading it needs a full unpickle of {shown}, which can execute code "
            f"from the file; {hint}")


def read_torch_file(path: str | Path, *, trust: bool = False, what: str = "checkpoint",
                    unsafe_hint: str = TRUST_HINT, missing_ok: bool = False) -> Any:
    """Load ``path`` on the CPU, weights-only (see the module docstring).

    ``what`` names the kind of file in messages; ``unsafe_hint`` ends the refusal of a file
    that needs a full unpickle (checkpoints from elsewhere: the --trust-checkpoint hint; files
    a run wrote itself: :data:`OWN_FILE_HINT`). Raises :class:`UnsafePickleError` or
    :class:`UnreadableFileError` (both one-line :class:`~excb.ExcbError`); ``trust=True``
    falls back to a full unpickle for the first kind.
    """
    import torch

    path = Path(path)
    if not path.exists():
        if missing_ok:
            return None
        raise ExcbError(f"{path}: {what} not found")
    if path.is_dir():
        raise ExcbError(f"{path}: is a directory, expected a {what} file (.pth/.pt)")
    try:
        with torch.serialization.safe_globals(safe_globals()), warnings.catch_warnings():
            # "Detected pickle protocol 4": a foreign pickle; it is either loaded or refused below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for damaged or foreign files
        first_err = e
    try:
        unsafe, is_zip = unsafe_globals(path)
    except OSError as e:
        raise UnreadableFileError(f"{path}: cannot read {what} ({e.strerror or e})") from first_err
    if unsafe and not trust:
        raise UnsafePickleError(_unsafe_message(path, unsafe, is_zip, unsafe_hint, what), path, unsafe) from first_err
    if not trust:
        raise UnreadableFileError(f"{path}: not a readable {what} ({_first_line(first_err)}); the file is truncated or "
                                  f"corrupt, or of another kind") from first_err
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise UnreadableFileError(f"{path}: not a readable {what} ({_first_line(e)}); the file is truncated or "
                                  f"corrupt, or of another kind") from e


class _RestrictedUnpickler(pickle.Unpickler):
    """Plain pickles (no torch.save framing) of containers and numpy arrays: anything else is refused."""

    def __init__(self, f, allowed: Set[str]):
        super().__init__(f)
        self.allowed = allowed

    def find_class(self, module: str, name: str):
        full = f"{module}.{name}"
        if full not in self.allowed:
            raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {full}")
        return super().find_class(module, name)


PLAIN_PICKLE_GLOBALS = ("collections.OrderedDict", "numpy.core.multiarray._reconstruct",
                        "numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer",
                        "numpy._core.multiarray._reconstruct", "numpy.ndarray", "numpy.dtype",
                        "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")


def read_plain_pickle(path: str | Path, *, what: str = "pickle", unsafe_hint: str = OWN_FILE_HINT,
                      extra_allowed: Iterable[str] = ()) -> Any:
    """A plain ``pickle`` file of containers and numpy arrays (e.g. Detectron2 weights), restricted.

    numpy's dtype classes (``numpy.dtypes.Float32DType``) are allowed too."""
    path = Path(path)
    if not path.is_file():
        raise ExcbError(f"{path}: {what} not found")
    allowed = set(PLAIN_PICKLE_GLOBALS) | set(extra_allowed)
    names, _ = pickle_globals(path)
    allowed |= {n for n in names if n.startswith("numpy.dtypes.") and n.endswith("DType")}
    unsafe = [n for n in names if n not in allowed]
    if unsafe:
        raise UnsafePickleError(_unsafe_message(path, unsafe, False, unsafe_hint, what), path, unsafe)
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, allowed).load()
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):
            raise UnsafePickleError(_unsafe_message(path, [str(e).rsplit(" ", 1)[-1]], False, unsafe_hint, what), path,
                                    [str(e).rsplit(" ", 1)[-1]]) from e
        raise UnreadableFileError(f"{path}: not a readable {what} ({_first_line(e)}); the file is truncated or "
                                  f"corrupt") from e
    except Exception as e:  # noqa: BLE001
        raise UnreadableFileError(f"{path}: not a readable {what} ({_first_line(e)}); the file is truncated or "
                                  f"corrupt") from e


__all__ = ["read_torch_file", "read_plain_pickle", "pickle_globals", "unsafe_globals", "safe_globals",
           "UnsafePickleError", "UnreadableFileError", "TRUST_HINT", "OWN_FILE_HINT"]
