"""``data.on_error=skip`` never drops images silently: the count and the first names of the unreadable
files are printed, recorded in results.json (``data.skipped``) and shown as a leaderboard footnote,
all from one verification pass. A subset file naming missing images reports how many are missing."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from excb import ExcbError
from faultlib import EXCB_BENCH, read_json, run

BAD = {"train/cat/empty.png": b"", "train/cat/notes.jpg": b"just some text\n" * 20,
       "train/dog/cut.jpg": None, "val/dog/zero.png": b""}


def _image_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 3)):
        for c in ("cat", "dog"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{c}_{i}.png")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    for rel, data in BAD.items():
        (root / rel).write_bytes(data if data is not None else buf.getvalue()[:200])   # None: a truncated JPEG


def test_skipped_images_are_counted_named_and_footnoted(tmp_path):
    root = tmp_path / "data"
    _image_folder(root)
    run_dir = tmp_path / "run"
    pr = run([*EXCB_BENCH, "knn", "--data-root", str(root), "-o", str(run_dir / "knn"), "data.on_error=skip",
              "backbone.name=resnet18", "resize=36", "crop=32", "k=[3]", "headline_k=3", "num_workers=0",
              "batch_size=8"], tmp_path, timeout=300, tag="knn")
    assert pr.p.returncode == 0, pr.report()
    assert "knn: skipped 4 unreadable image(s) (data.on_error=skip)" in pr.stdout, pr.report()
    res = read_json(run_dir / "knn" / "results.json")
    assert res["data"]["n_train"] == 12 and res["data"]["n_val"] == 6
    assert res["data"]["skipped"]["count"] == 4
    assert sorted(res["data"]["skipped"]["first"]) == sorted(BAD)

    board = run([*EXCB_BENCH, "leaderboard", "--runs", str(run_dir), "-o", str(tmp_path / "board")], tmp_path,
                timeout=300, tag="board")
    assert board.p.returncode == 0, board.report()
    md = (tmp_path / "board" / "leaderboard.md").read_text()
    assert "4 unreadable image(s) skipped (data.on_error=skip)" in md, md[-2000:]


def test_subset_file_with_missing_images_reports_the_count(tmp_path):
    from benchmarks.subsets import parse_subset_file

    f = tmp_path / "1percent.txt"
    f.write_text("n01_1.JPEG\nn01_2.JPEG\nn02_3.JPEG\nn02_4.JPEG\n")
    with pytest.raises(ExcbError, match=r"1percent\.txt:2: 'n01_2\.JPEG' is not in the train set .*\(3 of the 4 "
                                        r"listed names are missing, e\.g\. n01_2\.JPEG, n02_3\.JPEG, n02_4\.JPEG\)"):
        parse_subset_file(f, sample_ids=["n01_1.JPEG", "n01_9.JPEG"])
