"""Data: ImageFolder decoding of odd image modes, bad files named in errors, skip-and-count, demo data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from excb import ExcbError
from excb.data import ImageFolderDataset, build_dataset, open_image, to_rgb


def _write_tree(root: Path) -> dict:
    """root/<class>/ with RGB, grayscale, CMYK JPEG, 16-bit PNG, palette and RGBA images."""
    (root / "b_cls").mkdir(parents=True)
    (root / "a_cls").mkdir(parents=True)
    files = {}
    arr = (np.arange(12 * 10 * 3) % 256).astype(np.uint8).reshape(10, 12, 3)
    Image.fromarray(arr, "RGB").save(root / "a_cls" / "rgb.png"); files["rgb"] = "a_cls/rgb.png"
    Image.fromarray(arr[..., 0], "L").save(root / "a_cls" / "gray.png"); files["gray"] = "a_cls/gray.png"
    Image.new("CMYK", (12, 10), (0, 255, 255, 0)).save(root / "b_cls" / "cmyk.jpg"); files["cmyk"] = "b_cls/cmyk.jpg"
    a16 = np.full((10, 12), 65535, dtype=np.uint16)
    a16[:, :6] = 0
    Image.fromarray(a16).save(root / "b_cls" / "deep16.png"); files["deep16"] = "b_cls/deep16.png"
    Image.fromarray(arr, "RGB").convert("P").save(root / "b_cls" / "pal.png"); files["pal"] = "b_cls/pal.png"
    Image.fromarray(np.dstack([arr, np.full((10, 12), 255, np.uint8)]), "RGBA").save(root / "b_cls" / "alpha.png")
    files["alpha"] = "b_cls/alpha.png"
    return files


def test_16bit_png_really_is_16bit(tmp_path):
    a16 = np.full((4, 4), 40000, dtype=np.uint16)
    Image.fromarray(a16).save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as im:
        assert im.mode.startswith("I")
    rgb = open_image(tmp_path / "x.png")
    assert rgb.mode == "RGB"
    assert abs(int(np.asarray(rgb)[0, 0, 0]) - 40000 * 255 / 65535) <= 1  # 155.6


def test_every_mode_becomes_rgb(tmp_path):
    files = _write_tree(tmp_path)
    ds = ImageFolderDataset(tmp_path)
    assert ds.classes == ["a_cls", "b_cls"]  # sorted folder names
    assert len(ds) == len(files)
    by_id = {sid: i for i, sid in enumerate(ds.sample_ids)}
    for key, rel in files.items():
        i = by_id[Path(rel).name]
        img = ds.load_image(i)
        assert img.mode == "RGB" and img.size == (12, 10), key
        assert ds.targets[i] == (0 if rel.startswith("a_cls") else 1)
    deep = np.asarray(ds.load_image(by_id["deep16.png"]))
    assert deep[:, :6].max() == 0 and deep[:, 6:].min() == 255  # 65535 -> 255, not clipped garbage
    cmyk = np.asarray(ds.load_image(by_id["cmyk.jpg"])).reshape(-1, 3).mean(0)
    assert cmyk[0] > 200 and cmyk[1] < 60 and cmyk[2] < 60  # CMYK (0,255,255,0) is red
    gray = np.asarray(ds.load_image(by_id["gray.png"]))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def test_to_rgb_on_one_channel_float_and_la():
    assert to_rgb(Image.new("L", (3, 3), 7)).mode == "RGB"
    assert to_rgb(Image.new("LA", (3, 3), (7, 255))).mode == "RGB"
    assert to_rgb(Image.new("F", (3, 3), 300.0)).getpixel((0, 0)) == (255, 255, 255)


def _add_bad(root: Path):
    (root / "a_cls" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (root / "b_cls" / "empty.jpg").write_bytes(b"")
    good = Image.new("RGB", (12, 10), (1, 2, 3))
    good.save(root / "b_cls" / "trunc.jpg")
    data = (root / "b_cls" / "trunc.jpg").read_bytes()
    (root / "b_cls" / "trunc.jpg").write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("name", ["corrupt.png", "empty.jpg", "trunc.jpg"])
def test_bad_file_error_names_the_file(tmp_path, name):
    _write_tree(tmp_path)
    _add_bad(tmp_path)
    ds = ImageFolderDataset(tmp_path)  # on_error=raise: listing works, decoding fails loudly
    i = ds.sample_ids.index(name)
    with pytest.raises(ExcbError) as e:
        ds.load_image(i)
    msg = str(e.value)
    assert name in msg and "\n" not in msg and "on_error=skip" in msg


def test_skip_drops_and_counts(tmp_path):
    files = _write_tree(tmp_path)
    _add_bad(tmp_path)
    ds = ImageFolderDataset(tmp_path, on_error="skip")
    assert len(ds) == len(files)
    assert sorted(Path(p).name for p in ds.skipped) == ["corrupt.png", "empty.jpg", "trunc.jpg"]
    for i in range(len(ds)):
        assert ds.load_image(i).mode == "RGB"


def test_build_dataset_imagefolder_splits_and_errors(tmp_path):
    _write_tree(tmp_path / "train")
    _write_tree(tmp_path / "val")
    cfg = {"name": "imagefolder", "root": str(tmp_path), "limit_val": 2}
    assert len(build_dataset(cfg, "train")) == 6 and len(build_dataset(cfg, "val")) == 2
    with pytest.raises(ExcbError, match="data.root"):
        build_dataset({"name": "imagefolder"}, "train")
    with pytest.raises(ExcbError, match="missing_dir"):
        build_dataset({**cfg, "train_dir": "missing_dir"}, "train")
    with pytest.raises(ExcbError, match="on_error"):
        build_dataset({**cfg, "on_error": "ignore"}, "train")


def test_demo_data():
    tr = build_dataset({"name": "demo"}, "train")
    va = build_dataset({"name": "demo"}, "val")
    assert len(tr) == 6000 and len(va) == 1000 and len(tr.classes) == 10
    assert sorted(set(tr.targets)) == list(range(10))
    img = tr.load_image(0)
    assert img.mode == "RGB" and img.size == (28, 28)
    assert len(set(tr.sample_ids)) == 6000 and not set(tr.sample_ids) & set(va.sample_ids)
    assert len(build_dataset({"name": "demo", "limit_train": 256}, "train")) == 256
