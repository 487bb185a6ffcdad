"""Evaluation folders of a run directory, keyed by what was evaluated, not by its name.

``excb-bench eval`` puts a checkpoint's stages into ``<run>/eval_<sha256[:12]>[-student]/``: two
different files called ``checkpoint.pth`` get two folders (before, the second silently
replaced the first's row), and one file evaluated twice lands in the same folder (its stages
are skipped if done). The label is for display only; it is written to ``eval.json`` and
``label.txt``. A label already shown for a *different* checkpoint in the same run is refused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from excb import ExcbError
from excb.io import atomic_write_json, atomic_write_text, read_json

EVAL_META = "eval.json"


def eval_dir_name(sha256: str, which: str = "teacher") -> str:
    return f"eval_{sha256[:12]}" + ("" if which == "teacher" else f"-{which}")


def folder_identity(folder: Path) -> Dict[str, Optional[str]]:
    """``{"label", "sha256", "which"}`` of an existing eval folder (also folders of older versions,
    named by label: their sha256 is read from any stage's results.json)."""
    meta: Dict[str, Any] = {}
    if (folder / EVAL_META).is_file():
        try:
            meta = read_json(folder / EVAL_META)
        except ExcbError:
            meta = {}
    label = meta.get("label")
    if not label and (folder / "label.txt").is_file():
        lines = (folder / "label.txt").read_text(encoding="utf-8").strip().splitlines()
        label = lines[0].strip() if lines else None
    sha, which = meta.get("sha256"), meta.get("which")
    if not sha:
        for res in sorted(folder.glob("*/results.json")):
            try:
                ck = read_json(res).get("checkpoint") or {}
            except (ExcbError, AttributeError):
                continue
            if ck.get("sha256"):
                sha, which = ck["sha256"], ck.get("which") or which
                break
    if not label:
        label = folder.name[len("eval_"):] if folder.name.startswith("eval_") else folder.name
    return {"label": label, "sha256": sha, "which": which or "teacher"}


def claim_eval_dir(base: Path, sha256: str, label: str, which: str = "teacher", checkpoint: str = "",
                   zoo: Optional[str] = None, trusted: bool = False, explicit_label: bool = True) -> Path:
    """The folder for (checkpoint content, which) in run ``base``, labelled ``label``.

    An explicit label that already names another checkpoint's folder is refused; a default label
    (the file name) may repeat — the leaderboard then suffixes each row with its short sha256.
    The same checkpoint coming back under a new label is relabelled (and said so)."""
    target = base / eval_dir_name(sha256, which)
    for folder in sorted(p for p in base.glob("eval_*") if p.is_dir() and p != target):
        ident = folder_identity(folder)
        if explicit_label and ident["label"] == label and (ident["sha256"] != sha256 or ident["which"] != which):
            other = (ident["sha256"] or "unknown")[:12]
            raise ExcbError(f"--label '{label}' already names {folder} (checkpoint sha256 {other}…, {ident['which']}), "
                            f"a different checkpoint than {checkpoint or 'this one'} ({sha256[:12]}…, {which}); pass "
                            f"another --label")
    if target.is_dir():
        old = folder_identity(target)["label"]
        if old and old != label:
            print(f"[excb-bench] {target.name}: same checkpoint as before; label '{old}' -> '{label}'")
    meta = {"label": label, "sha256": sha256, "which": which, "checkpoint": checkpoint, "zoo": zoo,
            "trusted_pickle": trusted}
    atomic_write_json(target / EVAL_META, meta)
    atomic_write_text(target / "label.txt", label + "\n")
    return target
