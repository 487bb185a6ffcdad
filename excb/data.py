"""Data sets: ImageNet-style ImageFolder directories and the embedded Fashion-MNIST demo.

Every data set here exposes the same small interface:

* ``len(ds)``, ``ds[i] -> (transform(image), label)``;
* ``ds.targets`` (list of int), ``ds.classes`` (list of str);
* ``ds.sample_ids`` — a stable name per sample (the file name for ImageFolder, e.g.
  ``n04235860_14959.JPEG``, which is what SimCLR's subset files list);
* ``ds.load_image(i) -> PIL.Image`` in RGB.

Images are always converted to 3-channel RGB: grayscale, palette, CMYK and 16-bit PNGs
are handled; an unreadable file is an :class:`~excb.ExcbError` naming the file (or,
with ``on_error="skip"``, dropped by a verification pass and counted).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from excb import ExcbError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEMO_PATH = Path(__file__).resolve().parent / "assets" / "fashion_mnist_demo.npz"

# Default data config section (shared by pretraining and every stage).
DATA_DEFAULTS: Dict[str, Any] = {
    "name": "demo",          # "demo" (embedded Fashion-MNIST subset) or "imagefolder"
    "root": None,            # ImageFolder root holding train/ and val/ (or the split dirs below)
    "train_dir": "train",
    "val_dir": "val",
    "on_error": "raise",     # "raise": a bad image is an error naming it; "skip": drop and count
    "limit_train": 0,        # >0: a seeded, class-stratified subsample of N train images (ImageFolder;
    "limit_val": 0,          #     the demo arrays are stored shuffled, so their first N are used)
    "limit_seed": 0,         # seed of that subsample
}


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB (grayscale, palette, CMYK, 16-bit, alpha)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 1.0
        scale = 255.0 / (65535.0 if hi > 255 else 255.0)
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGB", img.size, (255, 255, 255))
        bg.paste(img, mask=img.split()[-1])
        return bg
    return img.convert("RGB") if img.mode != "RGB" else img


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image as RGB; errors name the file."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ExcbError(f"{path}: empty image file; delete it or set data.on_error=skip")
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except ExcbError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ExcbError(f"{path}: cannot read image ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'corrupt'}); "
                        f"delete or replace it, or set data.on_error=skip") from e


class ImageFolderDataset(torch.utils.data.Dataset):
    """``root/<class>/<image>`` with classes indexed by sorted folder name."""

    def __init__(self, root: str | Path, transform: Optional[Callable] = None, on_error: str = "raise",
                 limit: int = 0, limit_seed: int = 0):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ExcbError(f"{self.root}: data directory not found; set data.root to a folder with one sub-folder per class")
        classes = sorted(d.name for d in os.scandir(self.root) if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise ExcbError(f"{self.root}: no class folders; expected {self.root}/<class>/<image>")
        samples: List[tuple] = []
        empty = []
        for ci, c in enumerate(classes):
            files = sorted(
                f for f in os.listdir(self.root / c)
                if f.lower().endswith(IMG_EXTENSIONS) and not f.startswith(".")
            )
            if not files:
                empty.append(c)
            samples.extend((str(self.root / c / f), ci) for f in files)
        if empty:
            msg = f"{self.root}: class folder(s) without images: {', '.join(empty[:5])}"
            if on_error == "skip":
                keep = [c for c in classes if c not in empty]
                remap = {classes.index(c): i for i, c in enumerate(keep)}
                samples = [(p, remap[y]) for p, y in samples]
                classes = keep
            else:
                raise ExcbError(msg + "; remove them or set data.on_error=skip")
        self.skipped: List[str] = []
        if on_error == "skip":
            good = []
            for p, y in samples:
                try:
                    open_image(p)
                    good.append((p, y))
                except ExcbError:
                    self.skipped.append(p)
            samples = good
        elif on_error != "raise":
            raise ExcbError(f"data.on_error: unknown value '{on_error}'; use 'raise' or 'skip'")
        if limit and limit < len(samples):   # not the first N: folder order is sorted by class
            samples = [samples[i] for i in stratified_subset([y for _, y in samples], limit, limit_seed)]
        if not samples:
            raise ExcbError(f"{self.root}: no readable images found")
        self.classes = classes
        self.samples = samples
        self.targets = [y for _, y in samples]
        self.sample_ids = [os.path.basename(p) for p, _ in samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, i: int) -> Image.Image:
        return open_image(self.samples[i][0])

    def __getitem__(self, i: int):
        img = self.load_image(i)
        return (self.transform(img) if self.transform else img), self.targets[i]


def stratified_subset(targets: Sequence[int], n: int, seed: int = 0) -> List[int]:
    """Sorted indices of a seeded class-stratified sample of ``n`` items.

    Each class gets its proportional share ``n · n_c / N`` rounded down, the leftover items go to
    the classes with the largest remainders (ties: the lower class index), and the members of each
    class are drawn at random with ``numpy.random.default_rng(seed)``."""
    y = np.asarray(targets, dtype=np.int64)
    if n >= len(y):
        return list(range(len(y)))
    classes, counts = np.unique(y, return_counts=True)
    quota = n * counts / len(y)
    take = np.floor(quota).astype(np.int64)
    order = sorted(range(len(classes)), key=lambda c: (-(quota[c] - take[c]), c))
    for c in order[: n - int(take.sum())]:
        take[c] += 1
    rng = np.random.default_rng(seed)
    keep: List[int] = []
    for c, k in zip(classes, take):
        members = np.flatnonzero(y == c)
        keep.extend(rng.choice(members, size=int(k), replace=False).tolist())
    return sorted(keep)


class ArrayImageDataset(torch.utils.data.Dataset):
    """Images held in a uint8 array (N, H, W) or (N, H, W, 3) — the embedded demo data."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], classes: Sequence[str],
                 ids: Sequence[str], transform: Optional[Callable] = None):
        self.images = images
        self.targets = [int(y) for y in labels]
        self.classes = list(classes)
        self.sample_ids = list(ids)
        self.transform = transform
        self.skipped: List[str] = []

    def __len__(self) -> int:
        return len(self.targets)

    def load_image(self, i: int) -> Image.Image:
        a = self.images[i]
        return Image.fromarray(a, mode="L" if a.ndim == 2 else "RGB").convert("RGB")

    def __getitem__(self, i: int):
        img = self.load_image(i)
        return (self.transform(img) if self.transform else img), self.targets[i]


_DEMO_CACHE: Dict[str, Any] = {}


def load_demo_arrays() -> Dict[str, np.ndarray]:
    if not _DEMO_CACHE:
        if not DEMO_PATH.exists():
            raise ExcbError(f"{DEMO_PATH}: embedded demo data missing; rebuild it with scripts/build_demo_data.py")
        with np.load(DEMO_PATH) as z:
            _DEMO_CACHE.update({k: z[k] for k in z.files})
    return _DEMO_CACHE


def demo_dataset(split: str, transform: Optional[Callable] = None, limit: int = 0) -> ArrayImageDataset:
    z = load_demo_arrays()
    if split not in ("train", "val"):
        raise ExcbError(f"split '{split}': use 'train' or 'val'")
    x, y, idx = z[f"{split}_images"], z[f"{split}_labels"], z[f"{split}_index"]
    if limit:
        x, y, idx = x[:limit], y[:limit], idx[:limit]
    ids = [f"fmnist_{split}_{int(i):05d}" for i in idx]
    return ArrayImageDataset(x, y, [str(c) for c in z["classes"]], ids, transform)


def build_dataset(data_cfg: Dict[str, Any], split: str, transform: Optional[Callable] = None):
    """The one place a data set is made from a ``data`` config section."""
    cfg = {**DATA_DEFAULTS, **(data_cfg or {})}
    limit = int(cfg.get(f"limit_{split}", 0) or 0)
    name = cfg["name"]
    if name == "demo":
        return demo_dataset(split, transform, limit=limit)
    if name == "imagefolder":
        if not cfg.get("root"):
            raise ExcbError("data.root: required when data.name=imagefolder (a folder holding train/ and val/)")
        root = Path(cfg["root"]) / cfg[f"{split}_dir"]
        if not root.is_dir():
            why = "does not exist" if not Path(cfg["root"]).is_dir() else f"has no {cfg[f'{split}_dir']}/ folder"
            raise ExcbError(f"{root}: not found (data.root '{cfg['root']}' {why}); data.root must hold "
                            f"{cfg['train_dir']}/ and {cfg['val_dir']}/, each with one sub-folder per class "
                            f"(folder names: data.train_dir / data.val_dir)")
        return ImageFolderDataset(root, transform, on_error=cfg["on_error"], limit=limit,
                                  limit_seed=int(cfg.get("limit_seed", 0) or 0))
    raise ExcbError(f"data.name: unknown data set '{name}'; use 'demo' or 'imagefolder'")


def validate_data(data_cfg: Dict[str, Any], source: str = "config") -> None:
    """Refuse a bad ``data`` section before anything runs (values only: folders are checked when read)."""
    cfg = {**DATA_DEFAULTS, **(data_cfg or {})}
    if cfg["name"] not in ("demo", "imagefolder"):
        raise ExcbError(f"{source}: key 'data.name' must be 'demo' or 'imagefolder', got {cfg['name']!r}")
    if cfg["name"] == "imagefolder" and not cfg.get("root"):
        raise ExcbError(f"{source}: key 'data.root' is required when data.name=imagefolder (a folder holding "
                        f"train/ and val/)")
    if cfg["on_error"] not in ("raise", "skip"):
        raise ExcbError(f"{source}: key 'data.on_error' must be 'raise' or 'skip', got {cfg['on_error']!r}")
    for key in ("limit_train", "limit_val"):
        if int(cfg.get(key) or 0) < 0:
            raise ExcbError(f"{source}: key 'data.{key}' must be >= 0 (0 = all), got {cfg[key]!r}")


def image_size_of(data_cfg: Dict[str, Any]) -> int:
    """Native image side of a data set (28 for the demo, 224 assumed for ImageFolder)."""
    return 28 if (data_cfg or {}).get("name", "demo") == "demo" else 224
