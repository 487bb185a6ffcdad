"""Labelled subsets: SimCLR's ImageNet 1 % / 10 % split files, class-balanced draws, held-out parts.

SimCLR's ``imagenet_subsets/1percent.txt`` and ``10percent.txt`` list one ImageNet train file
name per line (``n04235860_14959.JPEG``), unsorted, no header: 12,811 and 128,116 lines; the
class is the part before ``_``. They cannot be downloaded here, so a local copy is parsed and
validated (format, duplicates, line count, every class present, every name in the data set)
with errors naming the file and line. Other data sets get a class-balanced subset drawn with a
fixed seed; the chosen ids are saved next to the results so the subset can be audited/reused.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from excb import ExcbError
from excb.io import atomic_write_text

SIMCLR_LINES = {1: 12811, 10: 128116}
_NAME = re.compile(r"^(?P<cls>[A-Za-z0-9]+)_[A-Za-z0-9_\-]+\.[A-Za-z]{2,5}$")


def parse_subset_file(path: str | Path, expected_lines: Optional[int] = None, classes: Optional[Sequence[str]] = None,
                      sample_ids: Optional[Sequence[str]] = None) -> List[str]:
    """The file names listed by a SimCLR-format subset file, validated.

    * every non-empty line is one name ``<class>_<id>.<ext>`` without spaces (a trailing blank line is fine);
    * no name twice; ``expected_lines`` names when given (12,811 / 128,116 for ImageNet);
    * every class of ``classes`` present, and no class outside it;
    * every name present in ``sample_ids`` (the data set's file names).
    """
    path = Path(path)
    if not path.is_file():
        raise ExcbError(f"{path}: subset file not found; copy SimCLR's imagenet_subsets/1percent.txt or 10percent.txt "
                        f"there (it cannot be downloaded at run time)")
    try:
        raw = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise ExcbError(f"{path}: not a text file ({e.reason} at byte {e.start}); expected one file name per line") from e
    if raw and raw[-1] == "":
        raw = raw[:-1]
    names: List[str] = []
    seen: Dict[str, int] = {}
    for i, line in enumerate(raw, start=1):
        name = line.rstrip("\r")
        if not name.strip():
            raise ExcbError(f"{path}:{i}: empty line; the file must list one file name per line (like n04235860_14959.JPEG)")
        if not _NAME.match(name):
            raise ExcbError(f"{path}:{i}: '{name[:80]}' is not a file name like n04235860_14959.JPEG "
                            f"(one name per line, no spaces or paths)")
        if name in seen:
            raise ExcbError(f"{path}:{i}: '{name}' already listed on line {seen[name]}")
        seen[name] = i
        names.append(name)
    if not names:
        raise ExcbError(f"{path}: empty subset file; expected one file name per line")
    if expected_lines is not None and len(names) != expected_lines:
        raise ExcbError(f"{path}: {len(names)} names, expected {expected_lines} (SimCLR's 1 % file has 12811, the 10 % one "
                        f"128116); is the file truncated or the wrong one?")
    if classes is not None:
        cls_of = {n: n.split("_", 1)[0] for n in names}
        known = set(classes)
        for n in names:
            if cls_of[n] not in known:
                raise ExcbError(f"{path}:{seen[n]}: class '{cls_of[n]}' of '{n}' is not a class of the data set "
                                f"(e.g. {sorted(known)[:3]})")
        missing = sorted(known - set(cls_of.values()))
        if missing:
            raise ExcbError(f"{path}: {len(missing)} class(es) have no labelled image, e.g. {', '.join(missing[:5])}; "
                            f"every class must be present")
    if sample_ids is not None:
        have = set(sample_ids)
        missing_names = [n for n in names if n not in have]
        if missing_names:
            first = missing_names[0]
            more = (f" ({len(missing_names)} of the {len(names)} listed names are missing, e.g. "
                    f"{', '.join(missing_names[:5])})" if len(missing_names) > 1 else "")
            raise ExcbError(f"{path}:{seen[first]}: '{first}' is not in the train set (data.root/train_dir){more}; "
                            f"does the subset belong to this data set?")
    return names


def indices_of(names: Sequence[str], sample_ids: Sequence[str]) -> List[int]:
    """Data-set indices of ``names`` (sorted, so data order does not depend on the file's order)."""
    pos = {s: i for i, s in enumerate(sample_ids)}
    return sorted(pos[n] for n in names)


def per_class_count(n_total: int, n_classes: int, percent: float) -> int:
    """Images per class of a balanced ``percent`` % subset (at least one)."""
    return max(1, int(round(n_total * percent / 100.0 / max(n_classes, 1))))


def balanced_subset(targets: Sequence[int], per_class: int, seed: int) -> List[int]:
    """``per_class`` indices of every class (all of a smaller class), drawn with ``seed``; sorted."""
    t = torch.as_tensor(list(targets), dtype=torch.long)
    g = torch.Generator().manual_seed(int(seed))
    chosen: List[int] = []
    for c in sorted(set(t.tolist())):
        idx = torch.nonzero(t == c).flatten()
        perm = idx[torch.randperm(idx.numel(), generator=g)]
        chosen.extend(perm[:per_class].tolist())
    return sorted(chosen)


def stratified_holdout(targets: Sequence[int], fraction: float, seed: int) -> tuple:
    """Split indices into (train, held-out) with ``fraction`` of every class held out (>= 1 each
    when ``fraction`` > 0 and the class has at least 2 samples)."""
    if fraction <= 0:
        return list(range(len(targets))), []
    if fraction >= 1:
        raise ExcbError(f"holdout_fraction: must be < 1, got {fraction}")
    t = torch.as_tensor(list(targets), dtype=torch.long)
    g = torch.Generator().manual_seed(int(seed))
    held: List[int] = []
    for c in sorted(set(t.tolist())):
        idx = torch.nonzero(t == c).flatten()
        n = idx.numel()
        m = min(max(1, int(round(n * fraction))), n - 1) if n >= 2 else 0
        held.extend(idx[torch.randperm(n, generator=g)][:m].tolist())
    hs = set(held)
    return [i for i in range(len(targets)) if i not in hs], sorted(held)


def save_ids(path: Path, ids: Sequence[str]) -> Path:
    return atomic_write_text(path, "".join(f"{s}\n" for s in ids))


class IndexedSubset(torch.utils.data.Dataset):
    """A subset that keeps the data-set interface (targets, classes, sample_ids)."""

    def __init__(self, base, indices: Sequence[int], transform=None):
        self.base, self.indices = base, list(indices)
        self.targets = [base.targets[i] for i in self.indices]
        self.classes = base.classes
        self.sample_ids = [base.sample_ids[i] for i in self.indices]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        if self.transform is None:
            return self.base[self.indices[j]]
        img = self.base.load_image(self.indices[j])
        return self.transform(img), self.targets[j]
