"""Semi-supervised stage on an ImageFolder with a SimCLR-format subset file: the listed images,
and only those, are the labelled set; a bad file fails early naming the line."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import benchmarks.semisup as S
from excb import ExcbError
from excb.config import resolve_config

CLASSES = ["n01440764", "n01443537", "n04235860"]


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for ci, c in enumerate(CLASSES):
            d = tmp_path / "data" / split / c
            d.mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)
                a[..., ci] = 250
                Image.fromarray(a).save(d / f"{c}_{100 + i}.JPEG", format="JPEG")
    return tmp_path / "data"


def _cfg(folder, subset, extra=()):
    return resolve_config(S.DEFAULTS, None, [
        "data.name=imagefolder", f"data.root={folder}", "backbone.name=resnet18", "resize=18", "crop=16",
        "epochs=1", "batch_size=4", "num_workers=0", "progress=false", f"subset_file={subset}",
        "require_subset_file=true", "subset_expected_lines=auto", *extra])


def test_subset_file_selects_the_listed_images(tmp_path, folder):
    chosen = ["n04235860_102.JPEG", "n01440764_101.JPEG", "n01443537_100.JPEG", "n01440764_103.JPEG"]
    f = tmp_path / "1percent.txt"
    f.write_text("\n".join(chosen) + "\n")
    res = S.run(_cfg(folder, tmp_path / "{percent}percent.txt"), tmp_path / "out")
    assert res["metrics"]["n_labelled"] == 4 and res["protocol"]["subset"]["source"] == "file"
    assert res["protocol"]["subset"]["path"] == str(f) and len(res["protocol"]["subset"]["sha256"]) == 64
    saved = (tmp_path / "out" / "subset_ids.txt").read_text().split()
    assert sorted(saved) == sorted(chosen)
    assert res["data"]["n_train"] == 12 and res["data"]["n_val"] == 6
    assert json.loads((tmp_path / "out" / "results.json").read_text())["stage"] == "semisup_1"


def test_bad_subset_files_fail_naming_the_line(tmp_path, folder):
    f = tmp_path / "bad.txt"
    f.write_text("n04235860_102.JPEG\nn01440764_101.JPEG\nn01443537_999.JPEG\n")
    with pytest.raises(ExcbError, match=r"bad.txt:3: 'n01443537_999.JPEG' is not in the train set"):
        S.run(_cfg(folder, f), tmp_path / "out")
    with pytest.raises(ExcbError, match="subset file not found"):
        S.run(_cfg(folder, tmp_path / "missing.txt"), tmp_path / "out")
    with pytest.raises(ExcbError, match="'subset_file' is required"):
        S.run(resolve_config(S.DEFAULTS, None, ["require_subset_file=true"]), tmp_path / "out")
