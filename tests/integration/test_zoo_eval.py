"""zoo:NAME wherever a checkpoint is accepted; eval folders keyed by checkpoint content; input
hashes that survive a moved run directory; a pretrain checkpoint changed after completion."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zoo_helpers import ZooServer, write_registry  # noqa: E402

from excb import ExcbError  # noqa: E402
from excb_bench.pipeline import resolve_pipeline, run_pipeline  # noqa: E402

TINY_KNN = {"data": {"name": "demo", "limit_train": 120, "limit_val": 30}, "resize": 18, "crop": 16,
            "num_workers": 0, "progress": False, "batch_size": 64, "k": [5, 20]}


def _resnet18_file(path: Path, seed: int) -> str:
    """A plain torchvision resnet18 state dict (the 'torchvision' format); returns its sha256."""
    from excb.backbones import create_backbone

    torch.manual_seed(seed)
    net, _ = create_backbone("resnet18")
    torch.save(net.state_dict(), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pipeline(tmp: Path, stages, knn_ck=None, extra=None) -> Path:
    knn = dict(TINY_KNN)
    if knn_ck:
        knn["checkpoint"] = str(knn_ck)
    cfg = {"name": "t", "output_dir": "run", "seed": 0, "stages": stages, "knn": knn,
           "leaderboard": {}}
    cfg.update(extra or {})
    p = tmp / "pipeline.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _cli(args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "excb_bench.cli", *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=cwd)


@pytest.fixture
def served(tmp_path, monkeypatch):
    server = ZooServer()
    data_path = tmp_path / "served.pth"
    sha = _resnet18_file(data_path, 11)
    server.files["/r18.pth"] = data_path.read_bytes()
    reg = write_registry(tmp_path / "zoo.yaml", {"tiny_r18": {"urls": [server.url("/r18.pth")], "format": "torchvision",
                                                              "arch": "resnet18"}})
    env = {"EXCB_ZOO_REGISTRY": str(reg), "EXCB_CACHE": str(tmp_path / "cache"), "EXCB_NO_PROGRESS": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for var in ("EXCB_OFFLINE", "EXCB_ZOO_MIRROR", "EXCB_ZOO_LOCK"):
        monkeypatch.delenv(var, raising=False)
    yield server, sha
    server.close()


def test_knn_stage_accepts_zoo_name_and_records_provenance(tmp_path, served):
    server, sha = served
    over = [f"data.limit_train=120", "data.limit_val=30", "resize=18", "crop=16", "num_workers=0", "progress=false",
            "k=[5,20]"]
    out = _cli(["knn", "--checkpoint", "zoo:tiny_r18", "-o", str(tmp_path / "k1"), *over])
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "k1" / "results.json").read_text())
    ck = res["checkpoint"]
    assert ck["sha256"] == sha and ck["format"] == "torchvision" and ck["arch"] == "resnet18"
    assert ck["zoo"]["name"] == "tiny_r18" and ck["zoo"]["url"] == server.url("/r18.pth")
    assert ck["trusted_pickle"] is False
    # offline afterwards: served from the cache, no new request
    n = len(server.requests)
    out = _cli(["knn", "--offline", "--checkpoint", "zoo:tiny_r18", "-o", str(tmp_path / "k2"), *over])
    assert out.returncode == 0, out.stderr
    assert len(server.requests) == n
    assert json.loads((tmp_path / "k2" / "results.json").read_text())["metrics"]["top1"] == res["metrics"]["top1"]
    # an unknown name is a one-line error listing the names
    bad = _cli(["knn", "--checkpoint", "zoo:nope", "-o", str(tmp_path / "k3"), *over])
    assert bad.returncode == 2 and "tiny_r18" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow   # five CLI processes (~30 s on 2 cores)
def test_eval_folders_keyed_by_content_label_collision_refused(tmp_path, served):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    sha_a = _resnet18_file(a_dir / "checkpoint.pth", 1)
    sha_b = _resnet18_file(b_dir / "checkpoint.pth", 2)
    pipe = _pipeline(tmp_path, ["knn", "leaderboard"])
    base = tmp_path / "run"
    for ck in (a_dir / "checkpoint.pth", b_dir / "checkpoint.pth"):
        out = _cli(["eval", "--checkpoint", str(ck), "--stages", "knn", "--config", str(pipe), "-o", str(base)])
        assert out.returncode == 0, out.stderr
    folders = sorted(p.name for p in base.glob("eval_*"))
    assert folders == sorted([f"eval_{sha_a[:12]}", f"eval_{sha_b[:12]}"])
    # same file name, two checkpoints: two rows, the label made unique by the leaderboard
    for sha in (sha_a, sha_b):
        res = json.loads((base / f"eval_{sha[:12]}" / "knn" / "results.json").read_text())
        assert res["checkpoint"]["sha256"] == sha
    md = (base / "leaderboard" / "leaderboard.md").read_text()
    assert f"checkpoint [{sha_a[:8]}]" in md and f"checkpoint [{sha_b[:8]}]" in md
    # an explicit label already naming another checkpoint is refused
    out = _cli(["eval", "--checkpoint", str(b_dir / "checkpoint.pth"), "--label", "mine", "--stages", "knn",
                "--config", str(pipe), "-o", str(base)])
    assert out.returncode == 0, out.stderr
    out = _cli(["eval", "--checkpoint", str(a_dir / "checkpoint.pth"), "--label", "mine", "--stages", "knn",
                "--config", str(pipe), "-o", str(base)])
    assert out.returncode == 2 and "already names" in out.stderr and sha_b[:12] in out.stderr
    # zoo:NAME through eval: the folder is the file's content hash, the label the zoo name
    out = _cli(["eval", "--checkpoint", "zoo:tiny_r18", "--stages", "knn", "--config", str(pipe), "-o", str(base)])
    assert out.returncode == 0, out.stderr
    meta = json.loads((base / f"eval_{served[1][:12]}" / "eval.json").read_text())
    assert meta["label"] == "tiny_r18" and meta["zoo"] == "tiny_r18"


def test_moved_run_and_absolute_output_do_not_recompute(tmp_path, monkeypatch, served):
    monkeypatch.chdir(tmp_path)
    ck = tmp_path / "ext.pth"
    _resnet18_file(ck, 5)
    cfg = resolve_pipeline(_pipeline(tmp_path, ["knn", "leaderboard"], knn_ck=ck))
    assert run_pipeline(cfg, Path("run")) == {"knn": "complete", "leaderboard": "complete"}
    # -o given as an absolute path: nothing recomputed
    assert run_pipeline(cfg, (tmp_path / "run").resolve()) == {"knn": "up-to-date", "leaderboard": "up-to-date"}
    # the whole run directory moved elsewhere
    shutil.move(str(tmp_path / "run"), str(tmp_path / "moved"))
    assert run_pipeline(cfg, tmp_path / "moved") == {"knn": "up-to-date", "leaderboard": "up-to-date"}
    # the checkpoint copied to another path: same content, same result
    shutil.copy(ck, tmp_path / "copy.pth")
    cfg2 = resolve_pipeline(_pipeline(tmp_path, ["knn", "leaderboard"], knn_ck=tmp_path / "copy.pth"))
    assert run_pipeline(cfg2, tmp_path / "moved") == {"knn": "up-to-date", "leaderboard": "up-to-date"}
    # a different checkpoint content does rerun
    _resnet18_file(tmp_path / "copy.pth", 6)
    assert run_pipeline(cfg2, tmp_path / "moved")["knn"] == "complete"


def test_pretrain_checkpoint_changed_after_completion_is_reported(tmp_path, monkeypatch):
    from excb.io import sha256_file
    from excb_bench.pipeline import Manifest

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    cfg = resolve_pipeline(_pipeline(tmp_path, ["knn"]))
    # a finished pretraining (as the manifest records it) whose checkpoint is then replaced
    (run / "pretrain").mkdir(parents=True)
    ck = run / "pretrain" / "checkpoint.pth"
    from excb.backbones import create_backbone

    net, _ = create_backbone("resnet18")
    sd = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    torch.save({"format": "excb-bench", "version": 1, "epoch": 1, "config": {},
                "backbone": {"name": "resnet18", "kwargs": {}}, "student": sd, "teacher": sd}, ck)
    Manifest(run).update("pretrain", status="complete", checkpoint_sha256=sha256_file(ck))
    assert run_pipeline(cfg, run) == {"knn": "complete"}
    sd = {k: v + 0.01 if v.is_floating_point() else v for k, v in sd.items()}
    torch.save({"format": "excb-bench", "version": 1, "epoch": 1, "config": {},
                "backbone": {"name": "resnet18", "kwargs": {}}, "student": sd, "teacher": sd}, ck)
    before = (run / "knn" / "results.json").read_bytes()
    with pytest.raises(ExcbError) as e:
        run_pipeline(cfg, run)
    assert "changed after pretraining finished" in str(e.value) and "--force knn" in str(e.value)
    assert (run / "knn" / "results.json").read_bytes() == before      # not silently re-evaluated
    assert run_pipeline(cfg, run, force=["knn"]) == {"knn": "complete"}
