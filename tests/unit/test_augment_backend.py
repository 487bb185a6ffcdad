"""augment.backend: "pil" | "fast" — factory, file-path route, per-item seeding, bad files, config, CPU threads."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_helpers import make_tiny_config
from excb import ExcbError
from excb.augment import MultiCropTransform, build_multicrop
from excb.data import ImageFolderDataset, demo_dataset, open_image
from excb.fast_augment import FastMultiCropTransform, decode_file
from excb.train import MultiCropDataset, cpu_threads, item_seed, train, validate_config

AUG = {"global_size": 32, "local_size": 16, "n_local": 3, "global_scale": [0.35, 1.0], "local_scale": [0.1, 0.35]}


def _jpeg(rng: np.random.Generator, size=(40, 48)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size + (3,), dtype=np.uint8), "RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _jpeg_folder(root: Path, per_class: int = 4) -> Path:
    """root/{cat,dog}/ with ``per_class`` random 40x48 RGB JPEGs each."""
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            (root / c / f"{c}_{i}.jpg").write_bytes(_jpeg(rng))
    return root


def _ds(base, backend: str, seed: int = 3) -> MultiCropDataset:
    return MultiCropDataset(base, build_multicrop({**AUG, "backend": backend}), seed)


def test_factory_picks_the_backend_class():
    assert type(build_multicrop(AUG)) is MultiCropTransform              # default: today's behaviour
    assert type(build_multicrop({**AUG, "backend": "pil"})) is MultiCropTransform
    assert type(build_multicrop({**AUG, "backend": "fast"})) is FastMultiCropTransform
    with pytest.raises(ExcbError, match="augment.backend"):
        build_multicrop({**AUG, "backend": "foo"})


def test_fast_gives_same_views_layout_as_pil_on_demo_data():
    base = demo_dataset("train", limit=4)            # in-memory images: no file path, PIL images go in
    pil, fast = _ds(base, "pil"), _ds(base, "fast")
    assert not fast.pass_path
    for i in range(2):
        (vp, yp), (vf, yf) = pil[(i, 0)], fast[(i, 0)]
        assert yp == yf == base.targets[i]
        assert len(vf) == len(vp) == 2 + 3
        assert [(tuple(v.shape), v.dtype) for v in vf] == [(tuple(v.shape), v.dtype) for v in vp]
        assert [tuple(v.shape) for v in vf] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
        assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in vf)


def test_fast_views_reproducible_per_item(tmp_path):
    base = ImageFolderDataset(_jpeg_folder(tmp_path / "imgs"))
    ds = _ds(base, "fast")
    a, b = ds[(2, 1)][0], _ds(base, "fast")[(2, 1)][0]           # a fresh dataset/transform too
    torch.manual_seed(123)                                          # global RNG state does not matter
    c = ds[(2, 1)][0]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(torch.equal(x, y) for x, y in zip(a, c))
    other_epoch, other_item = ds[(2, 2)][0], ds[(3, 1)][0]
    assert not torch.equal(a[0], other_epoch[0]) and not torch.equal(a[0], other_item[0])
    # equal to the transform applied by hand with the item's seed
    torch.manual_seed(item_seed(3, 1, 2))
    ref = FastMultiCropTransform(AUG)(base.samples[2][0])
    assert all(torch.equal(x, y) for x, y in zip(a, ref))


def test_jpeg_imagefolder_takes_the_file_path_route(tmp_path, monkeypatch):
    base = ImageFolderDataset(_jpeg_folder(tmp_path / "imgs"))
    seen = []
    orig = FastMultiCropTransform.__call__

    def record(self, src):
        seen.append(src)
        return orig(self, src)

    def no_pil(i):
        raise AssertionError("load_image must not be called on the fast path")

    monkeypatch.setattr(FastMultiCropTransform, "__call__", record)
    monkeypatch.setattr(base, "load_image", no_pil)
    ds = _ds(base, "fast")
    assert ds.pass_path
    views, y = ds[(5, 0)]
    assert seen == [base.samples[5][0]] and isinstance(seen[0], str) and seen[0].endswith(".jpg")
    assert y == base.targets[5] == 1 and len(views) == 5
    # the PIL backend still gets a PIL image
    pil = _ds(ImageFolderDataset(tmp_path / "imgs"), "pil")
    assert not pil.pass_path and isinstance(pil.source(0), Image.Image)


def test_decode_file_matches_pil_decode_of_the_same_jpeg(tmp_path):
    p = tmp_path / "a.jpg"
    p.write_bytes(_jpeg(np.random.default_rng(1)))
    t = decode_file(p)
    ref = torch.from_numpy(np.array(open_image(p))).permute(2, 0, 1)
    assert t.dtype == torch.uint8 and t.shape == ref.shape == (3, 40, 48)
    assert (t.int() - ref.int()).abs().max() <= 2        # libjpeg-turbo vs PIL: IDCT rounding at most


def _bad(kind: str) -> bytes:
    good = _jpeg(np.random.default_rng(2), (64, 64))
    return {"truncated_jpeg": good[:400], "empty_file": b"", "html_as_jpeg": b"<html>403 Forbidden</html>\n",
            "jpeg_magic_then_junk": b"\xff\xd8" + b"junk" * 50}[kind]


@pytest.mark.parametrize("kind", ["truncated_jpeg", "empty_file", "html_as_jpeg", "jpeg_magic_then_junk"])
def test_bad_file_gives_the_same_one_line_error_as_pil(tmp_path, kind):
    root = _jpeg_folder(tmp_path / "imgs", per_class=1)
    bad = root / "dog" / "dog_0.jpg"
    bad.write_bytes(_bad(kind))
    base = ImageFolderDataset(root)
    i = base.samples.index((str(bad), 1))
    msgs = []
    for backend in ("pil", "fast"):
        with pytest.raises(ExcbError) as e:
            _ds(base, backend)[(i, 0)]
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1]
    assert "\n" not in msgs[1] and str(bad) in msgs[1] and "data.on_error=skip" in msgs[1]


def test_cmyk_and_png_files_go_through_pil_on_the_fast_path(tmp_path):
    root = _jpeg_folder(tmp_path / "imgs", per_class=1)
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(root / "cat" / "cmyk.jpg")
    Image.fromarray(np.full((30, 20), 77, np.uint8), "L").save(root / "dog" / "gray.png")
    base = ImageFolderDataset(root)
    for name in ("cmyk.jpg", "gray.png"):
        p = next(p for p, _ in base.samples if p.endswith(name))
        ref = torch.from_numpy(np.array(open_image(p))).permute(2, 0, 1)
        assert (decode_file(p).int() - ref.int()).abs().max() <= 2
    assert torch.equal(decode_file(root / "dog" / "gray.png"), torch.full((3, 30, 20), 77, dtype=torch.uint8))


def test_config_validation_names_key_value_and_choices():
    validate_config(make_tiny_config(**{"augment.backend": "fast"}))
    validate_config(make_tiny_config())
    assert make_tiny_config()["augment"]["backend"] == "pil"
    with pytest.raises(ExcbError) as e:
        validate_config(make_tiny_config(**{"augment.backend": "foo"}))
    msg = str(e.value)
    assert "\n" not in msg
    assert "augment.backend" in msg and "'foo'" in msg and "'pil'" in msg and "'fast'" in msg


def test_cpu_threads_rule(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    # loader workers do not take threads away (they mostly sleep on a full prefetch queue)
    assert [cpu_threads(w) for w in (0, 2, 7, 8, 12)] == [8, 8, 8, 8, 8]
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)   # a caller's torch.set_num_threads(4) is a cap
    assert [cpu_threads(w) for w in (0, 2, 6)] == [4, 4, 4]
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert cpu_threads(0) == 2                                   # the affinity (e.g. a Slurm allocation) is a cap
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads(2) is None                                # the user's setting is left alone


def test_tiny_pretraining_with_fast_backend_completes(tmp_path):
    root = _jpeg_folder(tmp_path / "data" / "train", per_class=8)
    cfg = make_tiny_config(**{"augment.backend": "fast", "data.name": "imagefolder", "data.root": str(tmp_path / "data"),
                              "centroids.K": 8, "batch_size": 8, "epochs": 1, "final_pass": False,
                              "augment.n_local": 1, "head.hidden_dim": 64, "head.out_dim": 32,
                              "head.predictor_hidden_dim": 64})
    assert cfg["data"]["root"] and root.is_dir()
    res = train(cfg, tmp_path / "run")
    assert res["status"] == "complete" and res["metrics"]["epochs_done"] == 1
    assert res["protocol"]["augment"]["backend"] == "fast" and res["data"]["n_train"] == 16
    assert np.isfinite(res["metrics"]["loss"]) and (tmp_path / "run" / "checkpoint.pth").exists()
