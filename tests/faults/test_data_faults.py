"""Bad images in an ImageFolder, met inside DataLoader worker processes of a real ``excb-bench`` run:
each is refused with ONE stderr line naming the file (no worker traceback), or handled."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from faultlib import EXCB_BENCH, PYTHON_M_EXCB, assert_one_line_error, read_json, run, visible_lines

N_PER_CLASS = 8   # 2 classes x 8 = 16 images = 2 steps of 8: every file is decoded in epoch 1


def _tiny_imagefolder_args(root: Path, *extra: str) -> list:
    return ["data.name=imagefolder", f"data.root={root}", "backbone.name=resnet18", "head.hidden_dim=64",
            "head.out_dim=32", "head.predictor_hidden_dim=64", "centroids.K=4", "augment.global_size=32",
            "augment.local_size=16", "augment.n_local=1", "batch_size=8", "epochs=1", "num_workers=2",
            "final_pass=false", "optim.warmup_epochs=0", *extra]


def _make_folder(root: Path, rng=np.random.default_rng(0)) -> Path:
    """root/train/{cat,dog}/ with N_PER_CLASS valid 40x40 RGB JPEGs each."""
    for c in ("cat", "dog"):
        d = root / "train" / c
        d.mkdir(parents=True)
        for i in range(N_PER_CLASS):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), "RGB").save(d / f"{c}_{i}.jpg")
    return root


def _jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB").save(buf, "JPEG")
    return buf.getvalue()


BAD_FILES = {
    "truncated_jpeg": ("broken.jpg", lambda: _jpeg_bytes()[:400]),
    "empty_file": ("empty.jpg", lambda: b""),
    "not_an_image": ("notes.png", lambda: b"these are my lab notes, saved with the wrong extension\n" * 20),
    "html_as_jpeg": ("download.jpeg", lambda: b"<html><body>403 Forbidden</body></html>\n"),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_bad_image_in_worker_is_one_line_naming_the_file(tmp_path, kind):
    root = _make_folder(tmp_path / "data")
    name, content = BAD_FILES[kind]
    victim = root / "train" / "dog" / "dog_3.jpg"
    victim.unlink()                       # keep 16 files so the bad one is in epoch 1's batches
    bad = root / "train" / "dog" / name
    bad.write_bytes(content())
    pr = run([*EXCB_BENCH, "pretrain", "-o", str(tmp_path / "out"), *_tiny_imagefolder_args(root)], tmp_path,
             timeout=180, tag=kind)
    line = assert_one_line_error(pr, str(bad))
    assert "data.on_error=skip" in line   # the hint
    assert not (tmp_path / "out" / "checkpoint.pth").exists()


def test_python_m_excb_worker_error_is_one_line_too(tmp_path):
    """The torchrun entry point (``python -m excb``) must not print a worker traceback either."""
    root = _make_folder(tmp_path / "data")
    (root / "train" / "dog" / "dog_3.jpg").write_bytes(_jpeg_bytes()[:400])
    pr = run([*PYTHON_M_EXCB, "-o", str(tmp_path / "out"), *_tiny_imagefolder_args(root)], tmp_path, timeout=180,
             tag="pym")
    assert_one_line_error(pr, str(root / "train" / "dog" / "dog_3.jpg"), prefix="excb: error:")


def test_empty_class_folder_is_one_line_naming_it(tmp_path):
    root = _make_folder(tmp_path / "data")
    (root / "train" / "zebra").mkdir()
    (root / "train" / "zebra" / "README.txt").write_text("images go here\n")   # not an image extension
    pr = run([*EXCB_BENCH, "pretrain", "-o", str(tmp_path / "out"), *_tiny_imagefolder_args(root)], tmp_path,
             timeout=180, tag="emptycls")
    assert_one_line_error(pr, str(root / "train"), "zebra", "data.on_error=skip")


def test_odd_modes_and_skip_are_handled_end_to_end(tmp_path):
    """Grayscale, CMYK, 16-bit, palette+transparency and RGBA images train fine in workers; with
    data.on_error=skip a corrupt file and an empty file are dropped and the run completes."""
    root = _make_folder(tmp_path / "data")
    d = root / "train" / "cat"
    rng = np.random.default_rng(2)
    for i in range(5):
        (d / f"cat_{i}.jpg").unlink()
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), "L").save(d / "gray.png")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(d / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65536, (40, 40), dtype=np.uint16)).save(d / "deep16.png")
    pal = Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), "RGB").convert("P")
    pal.info["transparency"] = 0
    pal.save(d / "pal.png", transparency=0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), "RGBA").save(d / "alpha.png")
    for name in ("gray.png", "cmyk.jpg", "deep16.png"):
        with Image.open(d / name) as im:   # the fixtures really are the awkward modes
            assert im.mode in {"gray.png": ("L",), "cmyk.jpg": ("CMYK",), "deep16.png": ("I;16", "I")}[name]
    # two bad files too (kept out of the batches by the skip pass)
    (root / "train" / "dog" / "broken.jpg").write_bytes(_jpeg_bytes()[:400])
    (root / "train" / "dog" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    pr = run([*EXCB_BENCH, "pretrain", "-o", str(out), *_tiny_imagefolder_args(root, "data.on_error=skip")],
             tmp_path, timeout=240, tag="modes")
    assert pr.p.returncode == 0, pr.report()
    assert "Traceback" not in pr.stderr
    res = read_json(out / "results.json")
    assert res["status"] == "complete" and res["data"]["n_train"] == 2 * N_PER_CLASS
