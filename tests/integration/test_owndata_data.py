"""data.limit_train / limit_val on an ImageFolder: a seeded, class-stratified subsample (not the
first N files, which folder order sorts by class); the presets run on a generated ImageFolder."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from excb.data import build_dataset, stratified_subset


def make_image_folder(root: Path, sizes: dict, split: str = "train", px: int = 8, seed: int = 0) -> Path:
    """root/<split>/<class>/<i>.png with ``sizes[class]`` small random images each."""
    rng = np.random.default_rng(seed)
    for c, n in sizes.items():
        d = root / split / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (px, px, 3), dtype=np.uint8)).save(d / f"{c}_{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    make_image_folder(root, {"a": 10, "b": 20, "c": 30})
    make_image_folder(root, {"a": 5, "b": 7, "c": 9}, split="val", seed=1)
    return root


def _classes(ds) -> Counter:
    return Counter(ds.classes[y] for y in ds.targets)


def test_limit_train_is_stratified_not_the_first_files(folder):
    ds = build_dataset({"name": "imagefolder", "root": str(folder), "limit_train": 12}, "train")
    # proportional shares of 12 out of 10/20/30: 2, 4, 6 (the first 12 files would be 10 a + 2 b)
    assert _classes(ds) == Counter({"a": 2, "b": 4, "c": 6})
    names = [Path(p).name for p, _ in ds.samples]
    assert names != [f"a_{i:03d}.png" for i in range(10)] + ["b_000.png", "b_001.png"]
    # seeded: the same seed gives the same files, another seed other files of the same shares
    again = build_dataset({"name": "imagefolder", "root": str(folder), "limit_train": 12}, "train")
    assert [p for p, _ in again.samples] == [p for p, _ in ds.samples]
    other = build_dataset({"name": "imagefolder", "root": str(folder), "limit_train": 12, "limit_seed": 5}, "train")
    assert _classes(other) == _classes(ds) and [p for p, _ in other.samples] != [p for p, _ in ds.samples]
    assert ds.sample_ids == [Path(p).name for p, _ in ds.samples]


def test_limit_val_largest_remainder(folder):
    # 10 of 5/7/9 (N = 21): quotas 2.38, 3.33, 4.29 -> floors 2, 3, 4 and the one left over to 'a' (.38)
    ds = build_dataset({"name": "imagefolder", "root": str(folder), "limit_val": 10}, "val")
    assert _classes(ds) == Counter({"a": 3, "b": 3, "c": 4})
    full = build_dataset({"name": "imagefolder", "root": str(folder), "limit_val": 100}, "val")
    assert len(full) == 21


def test_stratified_subset_by_hand():
    y = [0] * 6 + [1] * 3 + [2] * 1
    idx = stratified_subset(y, 5, seed=0)
    # quotas 3.0, 1.5, 0.5 -> 3, 1, 0 + one left over; remainders .5 and .5 tie -> the lower class (1)
    assert Counter(y[i] for i in idx) == Counter({0: 3, 1: 2})
    assert idx == sorted(idx) and len(set(idx)) == 5
    assert stratified_subset(y, 10) == list(range(10)) and stratified_subset(y, 50) == list(range(10))
