"""Feature extraction: 2-process gloo extraction equals single-process, in data-set order; cache."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch import nn

from benchmarks.common import shard_range
from benchmarks.features import cached_features, dataset_fingerprint, extract_features


class ToyData(torch.utils.data.Dataset):
    """n small 'images' whose content identifies the index (so order mistakes show)."""

    def __init__(self, n: int):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 3, 6, 6, generator=g) + torch.arange(n).view(n, 1, 1, 1) * 0.1
        self.targets = [i % 3 for i in range(n)]
        self.classes = ["a", "b", "c"]
        self.sample_ids = [f"img_{i}" for i in range(n)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


def toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str, sizes) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for n in sizes:
            f, y = extract_features(toy_model(), ToyData(n), batch_size=2, num_workers=0, show_progress=False)
            torch.save({"f": f, "y": y}, Path(out_dir) / f"r{rank}_n{n}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_shard_range_partitions_without_padding():
    for n in (0, 1, 5, 7, 64):
        for w in (1, 2, 3, 8):
            parts = [shard_range(n, r, w) for r in range(w)]
            covered = [i for s, e in parts for i in range(s, e)]
            assert covered == list(range(n))
            assert max(e - s for s, e in parts) - min(e - s for s, e in parts) <= 1


def test_two_gloo_processes_equal_single_process(tmp_path):
    sizes = (11, 1)   # odd size: shards of 6 and 5; one sample: rank 1's shard is empty
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), sizes), nprocs=2, join=True)
    for n in sizes:
        ref_f, ref_y = extract_features(toy_model(), ToyData(n), batch_size=3, num_workers=0, show_progress=False)
        assert ref_f.shape == (n, 4)
        for r in range(2):
            got = torch.load(tmp_path / f"r{r}_n{n}.pt")
            assert got["f"].shape == ref_f.shape, (r, n)   # no duplicates from sampler padding
            torch.testing.assert_close(got["f"], ref_f, rtol=1e-5, atol=1e-6)
            assert torch.equal(got["y"], ref_y)
            assert got["y"].tolist() == [i % 3 for i in range(n)]


def test_extraction_uses_eval_mode_and_restores_training_state():
    m = toy_model().train()
    bn = m[1]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    f1, _ = extract_features(m, ToyData(9), batch_size=4, show_progress=False)
    assert m.training, "training mode restored"
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k   # BN running stats untouched
    # batch size does not change eval-mode features
    f2, _ = extract_features(m, ToyData(9), batch_size=1, show_progress=False)
    torch.testing.assert_close(f1, f2)
    assert bn.num_batches_tracked.item() == 0


def test_feature_fn_replaces_forward():
    m = toy_model()
    f, _ = extract_features(m, ToyData(5), feature_fn=lambda mod, x: mod(x)[:, :2] * 2, show_progress=False)
    ref, _ = extract_features(m, ToyData(5), show_progress=False)
    torch.testing.assert_close(f, ref[:, :2] * 2)


def test_cache_is_reused_and_keyed(tmp_path):
    calls = []

    def compute(v):
        def f():
            calls.append(v)
            return torch.full((3, 2), float(v)), torch.arange(3)
        return f

    key = {"weights": "abc", "transform": {"resize": 36}, "data": dataset_fingerprint(ToyData(3))}
    a = cached_features(tmp_path, key, compute(1), log=lambda m: None)
    b = cached_features(tmp_path, key, compute(2), log=lambda m: None)
    assert calls == [1] and torch.equal(a[0], b[0])
    c = cached_features(tmp_path, {**key, "transform": {"resize": 40}}, compute(3), log=lambda m: None)
    assert calls == [1, 3] and float(c[0][0, 0]) == 3.0
    # a damaged cache file is recomputed
    for p in tmp_path.glob("*.pt"):
        p.write_bytes(b"garbage")
    cached_features(tmp_path, key, compute(4), log=lambda m: None)
    assert calls == [1, 3, 4]
    assert cached_features(None, key, compute(5))[0][0, 0] == 5.0
    assert dataset_fingerprint(ToyData(3)) != dataset_fingerprint(ToyData(4))
