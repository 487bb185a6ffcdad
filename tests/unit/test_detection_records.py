"""Detection on COCO-format data other than COCO, without Detectron2: categories read from the
annotation files set NUM_CLASSES (Detectron2's sorted-id order), bad annotation files are
one-line errors, ``--coco`` is honoured with the demo config, rows are labelled from the
checkpoint, and a rerun keeps the recorded wall_s / iteration count."""
from __future__ import annotations

import builtins
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from excb import ExcbError
from detection import train as T
from detection.categories import read_categories
from detection.records import checkpoint_label, finished_result, iteration_record

REPO = Path(__file__).resolve().parents[2]
# 20 categories with COCO-like gaps, listed out of order: contiguous class i <-> i-th smallest id
CAT_IDS = [60, 3, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45, 48, 51, 54, 57, 6]


def _coco_set(root: Path, ids=CAT_IDS, val_ids=None, n_images=(3, 2)) -> Path:
    """A COCO-layout folder (annotation files + empty image folders) with categories ``ids``."""
    for split, n, cat_ids in (("train2017", n_images[0], ids), ("val2017", n_images[1], val_ids or ids)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images = [{"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "width": 64, "height": 64} for i in range(n)]
        anns = [{"id": i + 1, "image_id": i + 1, "category_id": cat_ids[i % len(cat_ids)], "bbox": [1, 1, 10, 10],
                 "area": 100.0, "iscrowd": 0, "segmentation": [[1, 1, 11, 1, 11, 11, 1, 11]]} for i in range(n)]
        cats = [{"id": c, "name": f"thing{c}", "supercategory": "categories"} for c in cat_ids]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def _hide_detectron2(monkeypatch):
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "detectron2" or name.startswith("detectron2.") or name == "detection.d2":
            raise ImportError(f"No module named '{name}' (hidden by the test)")
        if name == "detection" and a and len(a) >= 3 and a[2] and "d2" in a[2]:
            raise ImportError("detection.d2 hidden by the test")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)


# ----------------------------------------------------------------------------- categories
def test_twenty_categories_set_num_classes_in_sorted_id_order(tmp_path):
    root = _coco_set(tmp_path / "coco20")
    p = T.plan({"coco_root": str(root), "checkpoint": None, "backbone": {"name": "resnet18"}}, tmp_path / "run")
    assert p["overrides"]["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 20
    assert p["data"]["num_classes"] == 20 and p["data"]["name"] == "coco"
    ids = p["data"]["categories"]["ids"]
    assert ids == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45, 48, 51, 54, 57, 60]
    assert p["data"]["categories"]["names"][0] == "thing3" and p["data"]["categories"]["names"][-1] == "thing60"
    # an explicit count that disagrees with the file is refused, naming both
    with pytest.raises(ExcbError, match=r"num_classes: 80 requested but .*instances_val2017\.json has 20"):
        T.plan({"coco_root": str(root), "checkpoint": None, "num_classes": 80}, tmp_path / "run")


def test_eval_only_refuses_a_model_trained_for_another_class_count(tmp_path):
    """A model trained with 80 classes (e.g. before this check) is not evaluated on a
    20-category val set: its heads would be skipped on load and the APs meaningless."""
    root = _coco_set(tmp_path / "coco20")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config_d2.yaml").write_text("MODEL:\n  RESNETS:\n    DEPTH: 18\n  ROI_HEADS:\n    NUM_CLASSES: 80\n")
    with pytest.raises(ExcbError, match=r"trained for 80 classes but .*instances_val2017\.json has 20 categories"):
        T.plan({"coco_root": str(root), "eval_only": True, "checkpoint": None}, run_dir)
    (run_dir / "config_d2.yaml").write_text("MODEL:\n  RESNETS:\n    DEPTH: 18\n  ROI_HEADS:\n    NUM_CLASSES: 20\n")
    p = T.plan({"coco_root": str(root), "eval_only": True, "checkpoint": None}, run_dir)
    assert p["overrides"]["MODEL"]["RESNETS"]["DEPTH"] == 18 and p["checkpoint"]["format"] == "detectron2-model"


def test_refused_before_detectron2_and_training(tmp_path, monkeypatch):
    """The checks run before the Detectron2 import: nothing is trained with a wrong head."""
    _hide_detectron2(monkeypatch)
    root = _coco_set(tmp_path / "c", val_ids=CAT_IDS[:19])
    with pytest.raises(ExcbError, match="different categories") as ei:
        T.run({"coco_root": str(root), "dataset": "coco"}, tmp_path / "run")
    assert "instances_train2017.json" in str(ei.value) and "instances_val2017.json" in str(ei.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content,match", [
    (None, "not found"),
    ("{\"images\": [], \"categories\": [", r"not valid JSON \(line 1 column"),
    (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not a text file"),
    ("[1, 2]", "not a COCO annotation file"),
    ("{\"images\": []}", "no 'categories' entry"),
    ("{\"categories\": []}", "non-empty list"),
    ("{\"categories\": [{\"id\": \"1\", \"name\": \"a\"}]}", r"categories\[0\] needs an integer 'id'"),
    ("{\"categories\": [{\"id\": 1, \"name\": \"a\"}, {\"id\": 1, \"name\": \"b\"}]}", "id 1 appears twice"),
])
def test_bad_annotation_file_is_a_one_line_error_naming_it(tmp_path, monkeypatch, content, match):
    _hide_detectron2(monkeypatch)
    root = _coco_set(tmp_path / "c")
    val = root / "annotations" / "instances_val2017.json"
    if content is None:
        val.unlink()
    elif isinstance(content, bytes):
        val.write_bytes(content)
    else:
        val.write_text(content)
    with pytest.raises(ExcbError, match=match) as ei:
        T.run({"coco_root": str(root), "dataset": "coco"}, tmp_path / "run")
    msg = str(ei.value)
    assert "\n" not in msg and str(val) in msg


def test_large_annotation_file_is_scanned_not_parsed(tmp_path):
    """Above the parse limit only the top-level categories list is read; a "categories" string
    that is a value (not a key) and needles split across read blocks do not confuse it."""
    root = _coco_set(tmp_path / "c")
    p = root / "annotations" / "instances_train2017.json"
    parsed = read_categories(p)
    assert [c["id"] for c in parsed] == CAT_IDS
    for chunk in (5, 7, 64, 1 << 20):
        assert read_categories(p, parse_limit=0, chunk=chunk) == parsed
    # a second, different "categories" key is ambiguous
    d = json.loads(p.read_text())
    d["info"] = {"categories": [{"id": 1, "name": "other"}]}
    p.write_text(json.dumps(d))
    with pytest.raises(ExcbError, match="2 different 'categories' lists"):
        read_categories(p, parse_limit=0)
    p.write_text(json.dumps({"images": [{"file_name": "categories"}], "annotations": []}))
    with pytest.raises(ExcbError, match="no 'categories' list found"):
        read_categories(p, parse_limit=0)


# ----------------------------------------------------------------------------- --coco with the demo config
def _cli(*args, cwd: Path):
    return subprocess.run([sys.executable, "-m", "excb_bench.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_coco_flag_is_honoured_with_the_demo_config(tmp_path):
    from excb_bench.cli import _stage_cfg_from_args, build_parser

    root = _coco_set(tmp_path / "coco20")
    demo = str(REPO / "configs" / "detection" / "demo.yaml")
    args = build_parser().parse_args(["detect", "--config", demo, "--coco", str(root), "-o", str(tmp_path / "o")])
    cfg = _stage_cfg_from_args("detect", args)
    p = T.plan(cfg, tmp_path / "run")
    assert p["kind"] == "coco" and p["data"]["root"] == str(root) and p["data"]["n_train"] == 3
    assert p["overrides"]["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 20
    assert p["overrides"]["SOLVER"]["MAX_ITER"] == 8           # still the demo's smoke recipe
    assert not (tmp_path / "run" / "synthetic_coco").exists()

    # end to end: the given set's annotation file is what gets read (a broken one is reported)
    (root / "annotations" / "instances_val2017.json").write_text("{broken")
    r = _cli("detect", "--config", demo, "--coco", str(root), "-o", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode != 0 and "instances_val2017.json: not valid JSON" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o" / "synthetic_coco").exists()


def test_coco_root_with_an_explicit_synthetic_dataset_is_refused(tmp_path, monkeypatch):
    _hide_detectron2(monkeypatch)
    root = _coco_set(tmp_path / "c")
    with pytest.raises(ExcbError, match="dataset=synthetic would ignore it") as ei:
        T.run({"dataset": "synthetic", "coco_root": str(root), "smoke": True}, tmp_path / "run")
    assert str(root) in str(ei.value) and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- labels
def test_checkpoint_labels():
    assert checkpoint_label({"format": "excb-bench", "arch": "resnet50", "path": "/r/pretrain/checkpoint.pth"}) is None
    assert checkpoint_label({"format": "torchvision", "arch": "resnet50", "path": "/w/resnet50-0676ba61.pth"}) \
        == "torchvision resnet50 (resnet50-0676ba61.pth)"
    assert checkpoint_label({"format": "mocov2", "arch": "resnet50", "path": "m.pth.tar"}) == "MoCo v2 resnet50 (m.pth.tar)"
    assert checkpoint_label({"format": "random-init", "arch": "resnet50", "path": None}) == "Random init resnet50"
    assert checkpoint_label({"format": "torchvision", "arch": "resnet50", "path": "x.pth"}, "My R50") == "My R50"
    zoo = {"format": "mocov2", "arch": "resnet50", "path": "/cache/zoo/moco_v2_800ep_pretrain.pth.tar",
           "zoo": {"name": "mocov2_r50_800ep", "method": "MoCo v2"}}
    assert checkpoint_label(zoo) == "MoCo v2 resnet50 (zoo:mocov2_r50_800ep)"
    # evaluating a model trained here keeps the row of the backbone it was trained from
    tv = {"format": "torchvision", "arch": "resnet18", "path": "tv.pth"}
    assert checkpoint_label({"format": "detectron2-model", "trained_from": tv}) == "torchvision resnet18 (tv.pth)"
    assert checkpoint_label({"format": "detectron2-model", "trained_from": {"format": "excb-bench"}}) is None


def test_torchvision_checkpoint_gets_its_own_leaderboard_row(tmp_path):
    from torchvision.models import resnet18

    from benchmarks import leaderboard as L

    torch.manual_seed(0)
    ck = tmp_path / "tv_r18.pth"
    torch.save(resnet18().state_dict(), ck)
    run = tmp_path / "run"
    p = T.plan({"dataset": "synthetic", "smoke": True, "checkpoint": str(ck),
                "synthetic": {"root": str(tmp_path / "syn"), "n_train": 2, "n_val": 1, "image_size": 32}},
               run / "detect")
    assert p["checkpoint"]["format"] == "torchvision" and p["checkpoint"]["label"] == "torchvision resnet18 (tv_r18.pth)"
    raw = {"results": {"bbox": {"AP": 1.5, "AP50": 3.0, "AP75": 1.0}, "segm": {"AP": 1.25, "AP50": 2.5, "AP75": 0.5}},
           "start_iter": 0, "iter": 8, "max_iter": 8}
    res = T.compose_results(raw, plan_=p, d2_config=p["overrides"], config_path="c.yaml", base_config=None,
                            world_size=1, wall_s=10.0)
    assert res["label"] == "torchvision resnet18 (tv_r18.pth)"
    (run / "detect" / "results.json").write_text(json.dumps(res))
    (run / "knn").mkdir(parents=True)
    (run / "knn" / "results.json").write_text(json.dumps({
        "stage": "knn", "metrics": {"top1": 50.0}, "protocol": {"k": 20}, "data": {"name": "demo"},
        "checkpoint": {"format": "excb-bench", "path": "checkpoint.pth"}}))
    rows = L.collect_measured([run], L.resolve_config(L.DEFAULTS))
    by_name = {r["method"]: r for r in rows}
    assert set(by_name) == {"ExCB (ours)", "torchvision resnet18 (tv_r18.pth)"}
    assert set(by_name["ExCB (ours)"]["stages"]) == {"knn"}
    assert set(by_name["torchvision resnet18 (tv_r18.pth)"]["stages"]) == {"detect"}
    tables = L.build_tables([], rows, L.resolve_config(L.DEFAULTS), tables=["table5"])
    t5 = [r["cells"]["method"] for s in tables["table5"]["sections"] for r in s["rows"]]
    assert t5 == ["torchvision resnet18 (tv_r18.pth)"]


# ----------------------------------------------------------------------------- iterations and reruns
@pytest.mark.parametrize("start,end,want", [
    (0, 8, {"iterations_done": 8, "iterations_this_run": 8, "resumed_from": None}),    # fresh run
    (8, 9, {"iterations_done": 8, "iterations_this_run": 0, "resumed_from": 8}),       # rerun of a finished run
    (4, 8, {"iterations_done": 8, "iterations_this_run": 4, "resumed_from": 4}),       # resumed after a kill
    (8, None, {"iterations_done": 8, "iterations_this_run": 0, "resumed_from": 8}),    # evaluation only
])
def test_iteration_record(start, end, want):
    assert iteration_record(start, end, 8) == want


def _synthetic_cfg(tmp_path, **kw):
    return {"dataset": "synthetic", "smoke": True, "device": "cpu", "num_gpus": 1, "checkpoint": None,
            "backbone": {"name": "resnet18"}, "synthetic": {"root": str(tmp_path / "syn"), "n_train": 2, "n_val": 1,
                                                           "image_size": 32}, **kw}


def test_rerun_of_a_finished_run_reports_it_as_recorded(tmp_path, monkeypatch):
    """results.json as the worker output of an 8-iteration run: a rerun with the same inputs
    returns it (wall_s, 8 iterations) without launching Detectron2; other inputs do launch."""
    monkeypatch.setattr(T, "require_detectron2", lambda: None)
    _hide_detectron2(monkeypatch)
    run_dir = tmp_path / "detect"
    cfg = _synthetic_cfg(tmp_path)
    p = T.plan(cfg, run_dir, world_size=1, cuda=False, base_config=T.detectron2_config_file())
    raw = {"results": {"bbox": {"AP": 2.0}, "segm": {"AP": 1.0}}, "start_iter": 0, "iter": 8, "max_iter": 8}
    first = T.compose_results(raw, plan_=p, d2_config=p["overrides"], config_path="c", base_config=None,
                              world_size=1, wall_s=123.4)
    assert first["protocol"]["detectron2"]["iterations_done"] == 8
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(first))
    before = (run_dir / "results.json").read_bytes()

    again = T.run(cfg, run_dir)
    assert again["wall_s"] == 123.4 and again["protocol"]["detectron2"]["iterations_done"] == 8
    assert (run_dir / "results.json").read_bytes() == before
    assert finished_result(run_dir, p["fingerprint"]) == first
    # a moved run directory is the same run (locations are not inputs) ...
    moved = T.plan(cfg, tmp_path / "elsewhere" / "detect", world_size=1, cuda=False,
                   base_config=T.detectron2_config_file())
    assert moved["fingerprint"] == p["fingerprint"]
    # ... but other inputs, eval_only or resume=false go on to Detectron2 (hidden here)
    for kw in ({"seed": 1}, {"eval_only": True}, {"resume": False}):
        with pytest.raises(ImportError, match="hidden by the test"):
            T.run({**cfg, **kw}, run_dir)
    assert finished_result(run_dir, "0" * 64) is None
    (run_dir / "results.json").write_text(json.dumps({**first, "status": "failed"}))
    assert finished_result(run_dir, p["fingerprint"]) is None
