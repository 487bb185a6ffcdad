"""A tiny COCO-format instance-segmentation data set, generated (nothing is downloaded).

    root = make_synthetic_coco("/tmp/coco_tiny", n_train=16, n_val=8, image_size=96)

Writes the standard COCO layout the detection stage validates::

    root/annotations/instances_train2017.json
    root/annotations/instances_val2017.json
    root/train2017/*.png
    root/val2017/*.png

Each image holds 1-3 filled shapes (rectangle, triangle, ellipse as a 24-gon) on a noisy
background; each shape is one instance with a polygon mask, its bbox and area. The class
decides both the shape and its colour, so a few hundred iterations learn it and a handful
give a nonzero but meaningless AP: this set exercises the pipeline, it measures nothing.
Deterministic in ``seed``; a second call with the same arguments reuses the files.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import numpy as np

from excb.io import atomic_write_bytes, atomic_write_json, sha256_json

CATEGORIES = [
    {"id": 1, "name": "box", "supercategory": "shape"},
    {"id": 2, "name": "triangle", "supercategory": "shape"},
    {"id": 3, "name": "ellipse", "supercategory": "shape"},
]
_COLOURS = {1: (220, 40, 40), 2: (40, 200, 60), 3: (50, 80, 230)}
MARKER = ".synthetic_coco.json"


def _polygon(cat: int, cx: float, cy: float, w: float, h: float) -> List[Tuple[float, float]]:
    if cat == 1:
        return [(cx - w / 2, cy - h / 2), (cx + w / 2, cy - h / 2), (cx + w / 2, cy + h / 2), (cx - w / 2, cy + h / 2)]
    if cat == 2:
        return [(cx, cy - h / 2), (cx + w / 2, cy + h / 2), (cx - w / 2, cy + h / 2)]
    n = 24
    return [(cx + w / 2 * math.cos(2 * math.pi * i / n), cy + h / 2 * math.sin(2 * math.pi * i / n)) for i in range(n)]


def polygon_area(poly: List[Tuple[float, float]]) -> float:
    """Shoelace formula."""
    s = 0.0
    for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1]):
        s += x0 * y1 - x1 * y0
    return abs(s) / 2.0


def _image(rng: np.random.Generator, size: int, img_id: int, ann_start: int) -> Tuple[bytes, List[Dict[str, Any]]]:
    from PIL import Image, ImageDraw

    bg = rng.integers(90, 160, size=(size, size, 3), dtype=np.uint8)
    img = Image.fromarray(bg, "RGB")
    draw = ImageDraw.Draw(img)
    anns: List[Dict[str, Any]] = []
    for j in range(int(rng.integers(1, 4))):
        cat = int(rng.integers(1, len(CATEGORIES) + 1))
        w, h = (float(v) for v in rng.uniform(0.25, 0.5, size=2) * size)
        cx = float(rng.uniform(w / 2 + 1, size - w / 2 - 1))
        cy = float(rng.uniform(h / 2 + 1, size - h / 2 - 1))
        poly = [(round(x, 2), round(y, 2)) for x, y in _polygon(cat, cx, cy, w, h)]
        draw.polygon(poly, fill=_COLOURS[cat])
        xs, ys = [p[0] for p in poly], [p[1] for p in poly]
        x0, y0 = min(xs), min(ys)
        anns.append({"id": ann_start + j, "image_id": img_id, "category_id": cat,
                     "segmentation": [[c for p in poly for c in p]],
                     "area": round(polygon_area(poly), 2),
                     "bbox": [round(x0, 2), round(y0, 2), round(max(xs) - x0, 2), round(max(ys) - y0, 2)],
                     "iscrowd": 0})
    # later shapes are drawn over earlier ones; the overlap is small and this is a smoke set
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), anns


def make_synthetic_coco(root: Union[str, Path], n_train: int = 16, n_val: int = 8, image_size: int = 96,
                        seed: int = 0) -> Path:
    """Generate (or reuse) the data set at ``root``; returns ``root``."""
    root = Path(root)
    params = {"n_train": int(n_train), "n_val": int(n_val), "image_size": int(image_size), "seed": int(seed),
              "version": 1}
    marker = root / MARKER
    if marker.exists():
        try:
            if json.loads(marker.read_text()).get("hash") == sha256_json(params):
                return root
        except (OSError, ValueError):
            pass
    rng = np.random.default_rng(seed)
    next_img, next_ann = 1, 1
    for split, n in (("train2017", n_train), ("val2017", n_val)):
        images: List[Dict[str, Any]] = []
        anns: List[Dict[str, Any]] = []
        for _ in range(int(n)):
            data, a = _image(rng, int(image_size), next_img, next_ann)
            name = f"{next_img:012d}.png"
            atomic_write_bytes(root / split / name, data)
            images.append({"id": next_img, "file_name": name, "width": int(image_size), "height": int(image_size)})
            anns += a
            next_img += 1
            next_ann += len(a)
        atomic_write_json(root / "annotations" / f"instances_{split}.json",
                          {"info": {"description": "excb-bench synthetic shapes (smoke test only)", "version": "1"},
                           "licenses": [], "images": images, "annotations": anns, "categories": CATEGORIES})
    atomic_write_json(marker, {"hash": sha256_json(params), "params": params})
    return root


__all__ = ["make_synthetic_coco", "polygon_area", "CATEGORIES"]
