"""The pipeline's `compare` section: zoo entries and own files through k-NN in one run directory,
skip-if-done, content-keyed folders, and the measured-vs-published table it feeds."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zoo_helpers import ZooServer, write_registry  # noqa: E402

from excb import ExcbError  # noqa: E402
from excb_bench.pipeline import REPO_ROOT, resolve_pipeline, run_pipeline  # noqa: E402

TINY_KNN = {"data": {"name": "demo", "limit_train": 120, "limit_val": 30}, "resize": 18, "crop": 16,
            "num_workers": 0, "progress": False, "batch_size": 64, "k": [5, 20]}


def _r18(path: Path, seed: int) -> str:
    from excb.backbones import create_backbone

    torch.manual_seed(seed)
    net, _ = create_backbone("resnet18")
    torch.save(net.state_dict(), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def zoo_env(tmp_path, monkeypatch):
    server = ZooServer()
    sha = _r18(tmp_path / "served.pth", 21)
    server.files["/r18.pth"] = (tmp_path / "served.pth").read_bytes()
    reg = write_registry(tmp_path / "zoo.yaml", {"tiny_r18": {
        "urls": [server.url("/r18.pth")], "arch": "resnet18", "format": "torchvision", "epochs": 7, "batch": 32,
        "published": [{"source": "made-up release", "data": "demo", "knn_top1": 50.0}]}})
    monkeypatch.setenv("EXCB_ZOO_REGISTRY", str(reg))
    monkeypatch.setenv("EXCB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("EXCB_NO_PROGRESS", "1")
    for var in ("EXCB_OFFLINE", "EXCB_ZOO_MIRROR", "EXCB_ZOO_LOCK"):
        monkeypatch.delenv(var, raising=False)
    yield server, sha
    server.close()


def test_compare_section_runs_zoo_and_own_checkpoints(tmp_path, zoo_env):
    server, zoo_sha = zoo_env
    run = tmp_path / "run"
    run.mkdir()
    own_sha = _r18(tmp_path / "mine.pth", 1)
    in_run_sha = _r18(run / "own.pth", 2)
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({
        "name": "z", "output_dir": str(run), "stages": ["leaderboard"], "knn": TINY_KNN,
        "compare": {"stages": ["knn"], "zoo": ["tiny_r18"],
                    "checkpoints": {"mine": str(tmp_path / "mine.pth"),
                                    "inrun": {"path": "<run>/own.pth", "label": "inside the run"}}}}, sort_keys=False))
    cfg = resolve_pipeline(p)
    assert cfg["stages"] == ["knn@tiny_r18", "knn@mine", "knn@inrun", "leaderboard"]
    st = run_pipeline(cfg, run)
    assert st == {"knn@tiny_r18": "complete", "knn@mine": "complete", "knn@inrun": "complete", "leaderboard": "complete"}
    for sha, label in ((zoo_sha, "tiny_r18 (zoo:tiny_r18)"), (own_sha, "mine"),
                       (in_run_sha, "inside the run")):
        folder = run / f"eval_{sha[:12]}"
        res = json.loads((folder / "knn" / "results.json").read_text())
        assert res["checkpoint"]["sha256"] == sha
        assert json.loads((folder / "eval.json").read_text())["label"] == label
    # everything done: a rerun skips every stage (also with the run directory spelled absolute)
    assert set(run_pipeline(resolve_pipeline(p), run.resolve()).values()) == {"up-to-date"}
    # the zoo row meets its published number (same data set name: Δ computed)
    md = (run / "leaderboard" / "leaderboard.md").read_text()
    zoo_line = [ln for ln in md.splitlines() if ln.startswith("| tiny_r18 (zoo:tiny_r18)")][0]
    cells = [c.strip() for c in zoo_line.strip("|").split("|")]
    measured = json.loads((run / f"eval_{zoo_sha[:12]}" / "knn" / "results.json").read_text())["metrics"]["top1"]
    assert cells[1:5] == ["resnet18", "7", "32", f"{measured:.1f}"]
    assert cells[5] == "50.0" and cells[6] == f"{measured - 50.0:+.1f}" and cells[-1] == "made-up release"
    # the in-run file changes: only its stage reruns, the old folder moves to eval.prev/
    new_sha = _r18(run / "own.pth", 3)
    st = run_pipeline(resolve_pipeline(p), run)
    assert st == {"knn@tiny_r18": "up-to-date", "knn@mine": "up-to-date", "knn@inrun": "complete",
                  "leaderboard": "complete"}
    assert (run / f"eval_{new_sha[:12]}" / "knn" / "results.json").is_file()
    assert (run / "eval.prev" / f"eval_{in_run_sha[:12]}" / "knn" / "results.json").is_file()
    assert not (run / f"eval_{in_run_sha[:12]}").exists()
    # one compare stage by name
    assert run_pipeline(resolve_pipeline(p), run, only=["knn@mine"], force=["knn@mine"]) == {"knn@mine": "complete"}


def test_compare_section_errors_are_one_line(tmp_path, zoo_env):
    def cfg(comp):
        p = tmp_path / "p.yaml"
        p.write_text(yaml.safe_dump({"name": "z", "stages": ["leaderboard"], "knn": TINY_KNN, "compare": comp}))
        return p

    with pytest.raises(ExcbError, match="known: tiny_r18"):
        resolve_pipeline(cfg({"zoo": ["tiny_r81"]}))
    with pytest.raises(ExcbError, match="not an evaluation stage"):
        resolve_pipeline(cfg({"stages": ["pretrain"], "zoo": ["tiny_r18"]}))
    with pytest.raises(ExcbError, match="unknown key"):
        resolve_pipeline(cfg({"zooo": ["tiny_r18"]}))
    with pytest.raises(ExcbError, match="no zoo entry of architecture 'resnet152'"):
        resolve_pipeline(cfg({"zoo": ["arch:resnet152"]}))


def test_shipped_pipelines_resolve(monkeypatch):
    monkeypatch.delenv("EXCB_ZOO_REGISTRY", raising=False)
    demo = resolve_pipeline(REPO_ROOT / "configs" / "pipelines" / "demo.yaml")
    assert "knn@prev" in demo["stages"] and demo["stages"].index("knn@prev") < demo["stages"].index("leaderboard")
    assert demo["knn@prev"]["checkpoint"] == "<run>/pretrain/checkpoint_prev.pth"
    z = resolve_pipeline(REPO_ROOT / "configs" / "pipelines" / "imagenet_zoo.yaml",
                         ["compare.checkpoints.excb=/data/excb.pth", "data.root=/data/imagenet"])
    r50 = {"dino_resnet50", "swav_800ep", "mocov2_800ep", "mocov3_resnet50_1000ep", "barlowtwins_resnet50",
           "vicreg_resnet50", "simsiam_100ep", "deepclusterv2_800ep", "supervised_resnet50", "excb"}
    assert {s.split("@")[1] for s in z["stages"] if "@" in s} == r50
    assert {s.split("@")[0] for s in z["stages"] if "@" in s} == {"knn", "linear"}
    assert z["linear@excb"]["checkpoint"] == "/data/excb.pth" and z["knn@swav_800ep"]["checkpoint"] == "zoo:swav_800ep"
    assert z["linear@dino_resnet50"]["data"]["root"] == "/data/imagenet"
