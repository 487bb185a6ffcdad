"""Benchmark 4: multi-crop throughput (2x224 + 6x96 views from real JPEGs, decode included) of
``excb.fast_augment.FastMultiCropTransform`` / a PIL pipeline built like DINO's. Target >= 1.5x.

    python -m benchmarks.perf.bench_augment
    python -m benchmarks.perf.bench_augment --quick

Images: real photographs — matplotlib's ``grace_hopper.jpg`` (no download) cut into crops of
ImageNet-typical sizes (500x375, 375x500, 500x333, 400x400 ...), flipped/rotated and re-encoded
as JPEG (quality 90), written to a temporary folder. Every pipeline starts from the file path.
Timed on one process with one torch thread (a DataLoader worker's setting), as images/s;
``excb.augment.MultiCropTransform`` (the PIL path, torchvision's GaussianBlur) is shown too.
``--loader`` also measures a DataLoader with workers, pinned memory and persistent workers.
"""
from __future__ import annotations

import argparse
import io
import random
import tempfile
import time
from pathlib import Path
from typing import List

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T

from benchmarks.perf._timing import add_common_args, interleaved, report

SIZES = [(500, 375), (375, 500), (500, 333), (400, 400), (500, 400), (333, 500), (640, 480), (500, 375)]


def sample_photo() -> Path:
    import matplotlib

    p = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if not p.exists():
        raise SystemExit(f"bench_augment: {p} not found (matplotlib's sample data); cannot build real JPEGs")
    return p


def make_jpegs(folder: Path, n: int, seed: int = 0) -> List[Path]:
    rng = random.Random(seed)
    src = Image.open(sample_photo()).convert("RGB")
    paths = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        W, H = src.size
        s = rng.uniform(0.6, 1.0)
        cw, ch = int(W * s), int(H * s)
        x0, y0 = rng.randint(0, W - cw), rng.randint(0, H - ch)
        im = src.crop((x0, y0, x0 + cw, y0 + ch))
        if i % 2:
            im = ImageOps.mirror(im)
        im = im.resize((w, h), Image.BICUBIC)
        p = folder / f"img_{i:04d}.jpg"
        im.save(p, "JPEG", quality=90)
        paths.append(p)
    return paths


class DinoPilMultiCrop:
    """DINO's DataAugmentationDINO, restated: PIL ops, PIL's GaussianBlur(radius), ImageOps.solarize."""

    def __init__(self, g: int = 224, l: int = 96, n_local: int = 6):
        bi = T.InterpolationMode.BICUBIC
        flip_jitter = T.Compose([T.RandomHorizontalFlip(p=0.5),
                                 T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8), T.RandomGrayscale(p=0.2)])
        norm = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

        def blur(p):
            return T.Lambda(lambda im: im.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))
                            if random.random() < p else im)

        sol = T.Lambda(lambda im: ImageOps.solarize(im) if random.random() < 0.2 else im)
        self.g1 = T.Compose([T.RandomResizedCrop(g, scale=(0.2, 1.0), interpolation=bi), flip_jitter, blur(1.0), norm])
        self.g2 = T.Compose([T.RandomResizedCrop(g, scale=(0.2, 1.0), interpolation=bi), flip_jitter, blur(0.1), sol, norm])
        self.loc = T.Compose([T.RandomResizedCrop(l, scale=(0.05, 0.2), interpolation=bi), flip_jitter, blur(0.5), norm])
        self.n_local = n_local

    def __call__(self, path) -> List[torch.Tensor]:
        with open(path, "rb") as f:
            img = Image.open(f).convert("RGB")  # torchvision's pil_loader, as DINO's ImageFolder
        return [self.g1(img), self.g2(img)] + [self.loc(img) for _ in range(self.n_local)]


class PathDataset(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.transform(self.paths[i]), 0


def _wi(_):
    torch.set_num_threads(1)


def loader_throughput(paths, transform, workers: int, batch: int, epochs: int = 2) -> float:
    dl = torch.utils.data.DataLoader(PathDataset(paths, transform), batch_size=batch, num_workers=workers,
                                     pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
                                     worker_init_fn=_wi if workers else None, drop_last=True,
                                     prefetch_factor=4 if workers else None)
    for _ in dl:  # warm-up epoch: starts the persistent workers
        pass
    t0, n = time.perf_counter(), 0
    for _ in range(epochs):
        for views, _y in dl:
            n += views[0].shape[0]
    return n / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter),
                        warmup=1, repeat=5)
    p.add_argument("--images", type=int, default=32, help="JPEGs per timed pass (default 32)")
    p.add_argument("--loader", action="store_true", help="also time DataLoaders with 2 workers")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from excb.augment import MultiCropTransform
    from excb.data import open_image
    from excb.fast_augment import FastMultiCropTransform

    n = 4 if args.quick else args.images
    g, l, L = (64, 32, 2) if args.quick else (224, 96, 6)
    cfg = {"global_size": g, "local_size": l, "n_local": L}
    with tempfile.TemporaryDirectory() as d:
        paths = make_jpegs(Path(d), n)
        dino = DinoPilMultiCrop(g, l, L)
        ours_pil = MultiCropTransform(cfg)
        fast = FastMultiCropTransform(cfg)
        torch.manual_seed(0)
        random.seed(0)
        cands = {"fast (excb.fast_augment, tensor)": lambda: [fast(p) for p in paths],
                 "DINO-style PIL pipeline": lambda: [dino(p) for p in paths],
                 "excb.augment (PIL + tv GaussianBlur)": lambda: [ours_pil(open_image(p)) for p in paths]}
        times = interleaved(cands, args.warmup, 1 if args.quick else args.repeat)
        ips = {k: [n / t for t in v] for k, v in times.items()}   # images per second
        extra = {}
        if args.loader:
            for name, tf in (("fast", fast), ("DINO-style PIL", dino)):
                extra[f"DataLoader 2 workers, batch 16: {name}"] = f"{loader_throughput(paths, tf, 2, 16):.1f} img/s"
        report("Multi-crop augmentation throughput (images/s, higher is better)",
               {"views": f"2x{g} + {L}x{l}", "images": n, "jpeg sizes": "ImageNet-like (333-640 px)", "threads": 1},
               ips, {"fast / DINO-style PIL": ("fast (excb.fast_augment, tensor)", "DINO-style PIL pipeline", 1.5, ">="),
                     "excb.augment / DINO-style PIL": ("excb.augment (PIL + tv GaussianBlur)", "DINO-style PIL pipeline",
                                                        None, ">=")},
               unit="img/s", extra=extra, json_path=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
