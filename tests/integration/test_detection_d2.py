"""Detection stage with Detectron2 installed (skipped with a reason otherwise): converted
weights load completely, and the C4 smoke model trains, checkpoints, resumes and evaluates on
a generated COCO-format set with polygon masks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("detectron2", reason="Detectron2 is not installed (not on PyPI; see docs/detection.md)",
                    exc_type=ImportError)  # a broken install (missing dependency) skips too
pytest.importorskip("pycocotools", reason="pycocotools (a Detectron2 dependency) is not installed")

from excb import ExcbError  # noqa: E402
from excb.backbones import create_backbone  # noqa: E402
from detection import train as T  # noqa: E402

pytestmark = pytest.mark.detectron2


def _model_cfg(tmp_path: Path, depth: int):
    from detectron2.config import get_cfg
    import yaml

    from detection import d2  # noqa: F401  (registers Res5ROIHeadsExtraNorm)

    over = T.build_d2_overrides(dict(T.DEFAULTS, smoke=True), run_dir=tmp_path, datasets=("a", "b"),
                                weights="", world_size=1, cuda=False, arch={"depth": depth}, num_classes=3)
    cfg = get_cfg()
    base = T.detectron2_config_file()
    if base is not None:
        cfg.merge_from_file(str(base))
    p = tmp_path / "over.yaml"
    p.write_text(yaml.safe_dump(over))
    cfg.merge_from_file(str(p))
    return cfg


@pytest.mark.parametrize("arch,depth", [("resnet50", 50), ("resnet18", 18)])
def test_converted_weights_load_without_missing_backbone_keys(tmp_path, arch, depth):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from detection.convert import convert_to_detectron2, save_detectron2_pickle
    from detection.d2 import verify_backbone_loaded

    torch.manual_seed(0)
    backbone, _ = create_backbone(arch)
    d2_sd, rep = convert_to_detectron2(backbone)
    pkl = save_detectron2_pickle(tmp_path / "w.pkl", d2_sd)
    model = build_model(_model_cfg(tmp_path, depth))
    names = set(model.state_dict())
    # every converted tensor has exactly one home: stem/res2-4 in the backbone, res5 in the C4 box head
    for k in d2_sd:
        home = f"roi_heads.{k}" if k.startswith("res5.") else f"backbone.{k}"
        assert home in names, k
    DetectionCheckpointer(model).load(str(pkl))
    check = verify_backbone_loaded(model, {k: v.numpy() for k, v in d2_sd.items()})
    assert check == {"not_found": [], "ambiguous": [], "differ": [], "uninitialised": []}
    assert any(k.startswith("roi_heads.res5.norm.") for k in names)  # the extra norm after res5
    # the check is not vacuous: a model that did not load is caught
    fresh = build_model(_model_cfg(tmp_path, depth))
    assert verify_backbone_loaded(fresh, {k: v.numpy() for k, v in d2_sd.items()})["differ"]


def _stage_cfg(tmp_path: Path, ck: Path, **kw):
    cfg = {"checkpoint": str(ck), "dataset": "synthetic", "smoke": True, "device": "cpu", "num_gpus": 1,
           "num_workers": 0, "synthetic": {"root": str(tmp_path / "coco"), "n_train": 8, "n_val": 4,
                                           "image_size": 96, "seed": 0},
           "opts": {"SOLVER": {"MAX_ITER": 4, "STEPS": [3], "CHECKPOINT_PERIOD": 2}}}
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def r18_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    m, _ = create_backbone("resnet18")
    p = tmp_path_factory.mktemp("ck") / "r18.pth"
    torch.save(m.state_dict(), p)
    return p


def test_smoke_train_eval_resume(tmp_path, r18_checkpoint):
    run_dir = tmp_path / "detect"
    res = T.run(_stage_cfg(tmp_path, r18_checkpoint), run_dir)
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk["metrics"] == res["metrics"]
    m = res["metrics"]
    for k in ("AP_box", "AP50_box", "AP75_box", "AP_mask", "AP50_mask", "AP75_mask"):
        assert isinstance(m[k], float) and 0.0 <= m[k] <= 100.0, (k, m[k])
    assert set(res) >= {"stage", "metrics", "protocol", "data", "checkpoint", "seed", "world_size", "wall_s", "versions"}
    assert res["data"] == {**res["data"], "name": "synthetic-coco", "n_train": 8, "n_val": 4}
    assert res["checkpoint"]["format"] and res["checkpoint"]["sha256"] and res["checkpoint"]["arch"] == "resnet18"
    assert res["protocol"]["detectron2"]["MODEL.RESNETS.NORM"] == "BN" and res["protocol"]["detectron2"]["iterations_done"] == 4
    assert res["protocol"]["detectron2"]["SOLVER.MAX_ITER"] == 4 and "coco_root" not in res["protocol"]
    assert (run_dir / "backbone_d2.pkl").is_file() and (run_dir / "config_d2.yaml").is_file()
    assert (run_dir / "d2" / "model_final.pth").is_file()
    assert "Res5ROIHeadsExtraNorm" in (run_dir / "config_d2.yaml").read_text()

    assert res["protocol"]["detectron2"]["iterations_this_run"] == 4 and res["mode"] == "train"
    # a plain state dict is torchvision's format: the row is named after it, not "ours"
    assert res["label"] == res["checkpoint"]["label"] == "torchvision resnet18 (r18.pth)"

    # rerun with the same config: the finished run is reported as recorded, Detectron2 not launched
    metrics_file = run_dir / "metrics_detectron2.json"
    stamp = metrics_file.stat().st_mtime_ns
    again = T.run(_stage_cfg(tmp_path, r18_checkpoint), run_dir)
    assert again == res and metrics_file.stat().st_mtime_ns == stamp
    # resume=true past the end (what a rerun did before): evaluates again, still 4 iterations, none trained here
    (run_dir / "results.json").unlink()
    resumed = T.run(_stage_cfg(tmp_path, r18_checkpoint), run_dir)
    d = resumed["protocol"]["detectron2"]
    assert resumed["metrics"] == res["metrics"]
    assert (d["iterations_done"], d["iterations_this_run"], d["resumed_from"]) == (4, 0, 4)
    # evaluation only, of the finished model
    ev = T.run(_stage_cfg(tmp_path, r18_checkpoint, eval_only=True), run_dir)
    assert ev["metrics"] == res["metrics"] and ev["mode"] == "eval_only"
    assert ev["protocol"]["detectron2"]["iterations_done"] == 4
    # ... also without the checkpoint: the depth comes from the run's config, not backbone.name,
    # and the row stays the one of the backbone it was trained from
    ev2 = T.run(_stage_cfg(tmp_path, None, eval_only=True, checkpoint=None), run_dir)
    assert ev2["metrics"] == res["metrics"] and ev2["checkpoint"]["format"] == "detectron2-model"
    assert ev2["checkpoint"]["arch"] == "resnet18" and ev2["label"] == "torchvision resnet18 (r18.pth)"
    # resuming checkpoints made under another config is refused
    with pytest.raises(ExcbError, match="another config"):
        T.run(_stage_cfg(tmp_path, r18_checkpoint, opts={"SOLVER": {"MAX_ITER": 6}}), run_dir)


def _twenty_category_set(root: Path) -> Path:
    """The generated shapes set relabelled as a 20-category COCO-format set with gapped ids
    (3 used categories: 7, 36, 90; 17 unused ones)."""
    from detection.synthetic import make_synthetic_coco

    make_synthetic_coco(root, n_train=8, n_val=4, image_size=96, seed=0)
    new_id = {1: 7, 2: 36, 3: 90}
    cats = [{"id": new_id[i], "name": n, "supercategory": "shape"} for i, n in ((1, "box"), (2, "triangle"), (3, "ellipse"))]
    cats += [{"id": i, "name": f"unused{i}", "supercategory": "none"} for i in range(40, 57)]
    for split in ("train2017", "val2017"):
        p = root / "annotations" / f"instances_{split}.json"
        d = json.loads(p.read_text())
        for a in d["annotations"]:
            a["category_id"] = new_id[a["category_id"]]
        d["categories"] = cats
        p.write_text(json.dumps(d))
    return root


def test_non_coco_category_count_trains_and_evaluates(tmp_path, r18_checkpoint):
    """A COCO-format set with 20 categories (not 80): NUM_CLASSES comes from the annotation
    file, so COCOEvaluator gets predictions of known classes; rerun and eval-only work too."""
    root = _twenty_category_set(tmp_path / "coco20")
    cfg = _stage_cfg(tmp_path, r18_checkpoint, dataset="coco", coco_root=str(root))
    run_dir = tmp_path / "detect"
    res = T.run(cfg, run_dir)
    assert res["status"] == "complete" and res["data"]["num_classes"] == 20 and res["data"]["name"] == "coco"
    assert res["data"]["categories"]["ids"][:3] == [7, 36, 40] and res["data"]["categories"]["ids"][-1] == 90
    assert "NUM_CLASSES: 20" in (run_dir / "config_d2.yaml").read_text()
    assert all(isinstance(res["metrics"][k], float) for k in ("AP_box", "AP_mask"))
    assert T.run(cfg, run_dir) == res
    ev = T.run({**cfg, "eval_only": True}, run_dir)
    assert ev["metrics"] == res["metrics"]


def test_eval_only_without_a_model_is_an_error(tmp_path, r18_checkpoint):
    with pytest.raises(ExcbError, match="no trained model"):
        T.run(_stage_cfg(tmp_path, r18_checkpoint, eval_only=True), tmp_path / "empty")


@pytest.mark.slow  # 20-35 s on 2 shared cores
def test_smoke_r50_c4(tmp_path):
    """The protocol's own architecture (R50-C4, extra norm, BN) through the smoke schedule."""
    torch.manual_seed(0)
    m, _ = create_backbone("resnet50")
    ck = tmp_path / "r50.pth"
    torch.save(m.state_dict(), ck)
    res = T.run(_stage_cfg(tmp_path, ck), tmp_path / "detect")
    assert res["checkpoint"]["arch"] == "resnet50"
    assert all(isinstance(res["metrics"][k], float) for k in ("AP_box", "AP_mask"))


@pytest.mark.slow
def test_two_cpu_processes(tmp_path, r18_checkpoint):
    """Detectron2's launcher with 2 CPU processes (gloo): synchronised BN stays on (naiveSyncBN),
    evaluation is gathered on rank 0, results.json is written once."""
    res = T.run(_stage_cfg(tmp_path, r18_checkpoint, num_gpus=2), tmp_path / "detect")
    assert res["world_size"] == 2
    assert res["protocol"]["detectron2"]["MODEL.RESNETS.NORM"] == "naiveSyncBN"
    assert all(isinstance(res["metrics"][k], float) for k in ("AP_box", "AP_mask"))
    assert json.loads((tmp_path / "detect" / "results.json").read_text())["world_size"] == 2
