"""Semi-supervised subsets: SimCLR-format split files parsed/validated, balanced draws, holdout."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from benchmarks.subsets import (balanced_subset, indices_of, parse_subset_file, per_class_count,
                                stratified_holdout)
from benchmarks.semisup import DEFAULTS, choose_subset, expected_lines, learning_rates
from excb import ExcbError
from excb.config import resolve_config

CLASSES = ["n01440764", "n01443537", "n04235860"]


def _ids(per_class=20):
    return [f"{c}_{i}.JPEG" for c in CLASSES for i in range(per_class)]


def _write(tmp_path, lines, name="1percent.txt", trailing="\n"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + trailing)
    return p


def test_simclr_file_parsed_and_validated(tmp_path):
    ids = _ids()
    chosen = random.Random(0).sample(ids, 12)
    chosen += [f"{c}_0.JPEG" for c in CLASSES if f"{c}_0.JPEG" not in chosen]   # every class present
    p = _write(tmp_path, chosen)
    names = parse_subset_file(p, expected_lines=len(chosen), classes=CLASSES, sample_ids=ids)
    assert names == chosen
    idx = indices_of(names, ids)
    assert idx == sorted(idx) and [ids[i] for i in idx] == sorted(chosen, key=ids.index)
    # Windows line endings and no trailing newline are accepted
    p2 = _write(tmp_path, [n + "\r" for n in chosen], "crlf.txt", trailing="")
    assert parse_subset_file(p2, classes=CLASSES, sample_ids=ids) == chosen


@pytest.mark.parametrize("bad_line,needle", [
    ("n01440764_3.JPEG extra", "not a file name"),
    ("train/n01440764/n01440764_3.JPEG", "not a file name"),
    ("", "empty line"),
    ("n01440764_1.JPEG", "already listed on line 2"),
    ("n09999999_1.JPEG", "not a class of the data set"),
    ("n01440764_999.JPEG", "not in the train set"),
])
def test_malformed_file_rejected_naming_the_line(tmp_path, bad_line, needle):
    lines = ["n01440764_0.JPEG", "n01440764_1.JPEG", "n01443537_0.JPEG", bad_line, "n04235860_0.JPEG"]
    p = _write(tmp_path, lines)
    with pytest.raises(ExcbError, match=needle) as e:
        parse_subset_file(p, classes=CLASSES, sample_ids=_ids())
    assert f"{p}:4:" in str(e.value) and "\n" not in str(e.value)


def test_counts_missing_classes_and_missing_file(tmp_path):
    p = _write(tmp_path, ["n01440764_0.JPEG", "n01443537_0.JPEG"])
    with pytest.raises(ExcbError, match="2 names, expected 12811"):
        parse_subset_file(p, expected_lines=12811)
    with pytest.raises(ExcbError, match="1 class\\(es\\) have no labelled image, e.g. n04235860"):
        parse_subset_file(p, classes=CLASSES)
    with pytest.raises(ExcbError, match="subset file not found"):
        parse_subset_file(tmp_path / "nope.txt")
    assert expected_lines(resolve_config(DEFAULTS, None, ["percent=10"]), 1000) == 128116
    assert expected_lines(resolve_config(DEFAULTS, None, ["percent=1"]), 1000) == 12811
    assert expected_lines(resolve_config(DEFAULTS, None, ["percent=1"]), 10) is None


def test_balanced_subset_deterministic_with_right_counts():
    targets = [i % 5 for i in range(503)] + [4] * 7     # uneven classes
    a = balanced_subset(targets, 6, seed=3)
    assert a == balanced_subset(targets, 6, seed=3)
    assert a != balanced_subset(targets, 6, seed=4)
    assert Counter(targets[i] for i in a) == {c: 6 for c in range(5)}
    assert len(set(a)) == len(a) == 30
    # a class smaller than the per-class count contributes all it has
    t2 = [0] * 10 + [1] * 2
    small = balanced_subset(t2, 3, seed=0)
    assert Counter(t2[i] for i in small) == {0: 3, 1: 2}
    assert per_class_count(6000, 10, 1) == 6 and per_class_count(6000, 10, 10) == 60
    assert per_class_count(1281167, 1000, 1) == 13


def test_choose_subset_balanced_when_no_file():
    class DS:
        targets = [i % 10 for i in range(6000)]
        classes = [str(i) for i in range(10)]
        sample_ids = [f"s{i}" for i in range(6000)]

        def __len__(self):
            return 6000

    idx, rec = choose_subset(resolve_config(DEFAULTS, None, ["percent=10"]), DS())
    assert len(idx) == 600 and rec == {"source": "balanced", "per_class": 60, "subset_seed": 0}
    assert Counter(DS.targets[i] for i in idx) == {c: 60 for c in range(10)}


def test_paper_learning_rates_per_fraction():
    assert learning_rates(resolve_config(DEFAULTS, None, ["percent=1"])) == (8e-5, 1.0)
    assert learning_rates(resolve_config(DEFAULTS, None, ["percent=10"])) == (3e-4, 0.2)
    assert learning_rates(resolve_config(DEFAULTS, None, ["percent=10", "head_lr=0.5"])) == (3e-4, 0.5)
    with pytest.raises(ExcbError, match="percent=5"):
        learning_rates(resolve_config(DEFAULTS, None, ["percent=5"]))


def test_stratified_holdout():
    targets = [i % 4 for i in range(100)]
    tr, ho = stratified_holdout(targets, 0.2, seed=0)
    assert sorted(tr + ho) == list(range(100)) and not set(tr) & set(ho)
    assert Counter(targets[i] for i in ho) == {c: 5 for c in range(4)}
    assert stratified_holdout(targets, 0.2, seed=0) == (tr, ho)
    assert stratified_holdout(targets, 0.2, seed=1) != (tr, ho)
    assert stratified_holdout(targets, 0.0, seed=0) == (list(range(100)), [])
