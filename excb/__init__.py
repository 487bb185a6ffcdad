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
