"""ExCB: self-supervised learning with explicit cluster balancing (Maniadis Metaxas et al., ECCV 2024).

Public entry points used by ``benchmarks/`` and ``detection/``:

* :func:`excb.backbones.create_backbone` — backbone registry.
* :func:`excb.checkpoint_formats.load_backbone` — load a backbone from any supported checkpoint format.
* :mod:`excb.data` — ImageFolder / embedded demo data sets.
* :mod:`excb.io` — atomic writes, JSONL logging, hashing.
* :mod:`excb.config` — YAML configs with dotted overrides and validation.
"""

__version__ = "0.1.0"


class ExcbError(Exception):
    """A user-facing error: its message is one line naming the file/key/value and a hint."""


def one_line(e: BaseException) -> str:
    """The user-facing line of an error, also when a DataLoader worker re-raised it with its traceback."""
    msg = str(e)
    if "Original Traceback" in msg or "\n" in msg:
        lines = [ln for ln in msg.splitlines() if ln.strip()]
        for ln in reversed(lines):
            if "Error:" in ln or "error:" in ln:
                return ln.split("Error: ", 1)[-1].strip()
        return lines[-1].strip()
    return msg
