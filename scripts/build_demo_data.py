#!/usr/bin/env python3
"""Rebuild excb/assets/fashion_mnist_demo.npz from Fashion-MNIST's IDX files.

Source: Debian's ``dataset-fashion-mnist`` package (Zalando Research, MIT licence), which
installs the IDX files under /usr/share/datasets/fashion-mnist. The subset is
deterministic: the first ``--train-per-class`` train images and the first
``--val-per-class`` test images of each class, in file order.

    apt-get install dataset-fashion-mnist
    python scripts/build_demo_data.py
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise SystemExit(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def take_per_class(labels: np.ndarray, n: int) -> np.ndarray:
    idx = [np.flatnonzero(labels == c)[:n] for c in range(10)]
    return np.sort(np.concatenate(idx))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "excb/assets/fashion_mnist_demo.npz"))
    ap.add_argument("--train-per-class", type=int, default=600)
    ap.add_argument("--val-per-class", type=int, default=100)
    a = ap.parse_args()
    src = Path(a.src)
    tr_x = read_idx(src / "train-images-idx3-ubyte.gz")
    tr_y = read_idx(src / "train-labels-idx1-ubyte.gz")
    te_x = read_idx(src / "t10k-images-idx3-ubyte.gz")
    te_y = read_idx(src / "t10k-labels-idx1-ubyte.gz")
    ti = take_per_class(tr_y, a.train_per_class)
    vi = take_per_class(te_y, a.val_per_class)
    np.savez_compressed(a.out, train_images=tr_x[ti], train_labels=tr_y[ti].astype(np.int64),
                        train_index=ti.astype(np.int64), val_images=te_x[vi],
                        val_labels=te_y[vi].astype(np.int64), val_index=vi.astype(np.int64),
                        classes=np.array(CLASSES))
    digest = hashlib.sha256(Path(a.out).read_bytes()).hexdigest()
    print(f"wrote {a.out}: {len(ti)} train, {len(vi)} val images; sha256 {digest}")


if __name__ == "__main__":
    main()
