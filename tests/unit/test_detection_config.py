"""Detection stage without Detectron2: the protocol config as data, the config layering, COCO
layout checks, results parsing, the synthetic COCO set and the 'not installed' skip."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from excb import ExcbError
from detection import train as T
from detection.synthetic import make_synthetic_coco, polygon_area


def _full():
    return yaml.safe_load((T.CONFIG_DIR / T.FULL_CONFIG).read_text())


def test_protocol_config_holds_the_issue_values():
    d = _full()
    m = d["MODEL"]
    assert m["META_ARCHITECTURE"] == "GeneralizedRCNN" and m["MASK_ON"] is True
    assert m["BACKBONE"]["FREEZE_AT"] == 0
    assert m["RESNETS"]["DEPTH"] == 50 and m["RESNETS"]["OUT_FEATURES"] == ["res4"]   # C4
    assert m["RESNETS"]["NORM"] == "naiveSyncBN" and m["RESNETS"]["STRIDE_IN_1X1"] is False
    assert m["ROI_HEADS"]["NAME"] == "Res5ROIHeadsExtraNorm"
    assert m["PIXEL_MEAN"] == [123.675, 116.28, 103.53] and m["PIXEL_STD"] == [58.395, 57.12, 57.375]
    assert d["INPUT"]["FORMAT"] == "RGB"
    assert d["INPUT"]["MIN_SIZE_TRAIN"] == list(range(640, 801, 32)) and d["INPUT"]["MIN_SIZE_TEST"] == 800
    assert d["TEST"]["PRECISE_BN"]["ENABLED"] is True
    s = d["SOLVER"]
    assert (s["IMS_PER_BATCH"], s["BASE_LR"], s["STEPS"], s["MAX_ITER"]) == (16, 0.02, [60000, 80000], 90000)


def test_smoke_config_is_small():
    s = yaml.safe_load((T.CONFIG_DIR / T.SMOKE_CONFIG).read_text())
    assert s["SOLVER"]["MAX_ITER"] <= 20 and max(s["INPUT"]["MIN_SIZE_TRAIN"]) <= 128
    assert s["MODEL"]["ROI_HEADS"]["BATCH_SIZE_PER_IMAGE"] <= 32


def _over(tmp_path, world=1, cuda=False, **cfg):
    c = {**T.DEFAULTS, **cfg}
    return T.build_d2_overrides(c, run_dir=tmp_path, datasets=("tr", "va"), weights="w.pkl", world_size=world,
                                cuda=cuda, arch={"depth": 50}, num_classes=None)


def test_layering_and_written_yaml(tmp_path):
    d = _over(tmp_path)
    assert d["MODEL"]["RESNETS"]["NORM"] == "BN"          # one process: synchronised BN -> BN
    assert d["MODEL"]["WEIGHTS"] == "w.pkl" and d["DATASETS"] == {"TRAIN": ["tr"], "TEST": ["va"]}
    assert d["SOLVER"]["MAX_ITER"] == 90000 and d["OUTPUT_DIR"] == str(tmp_path / "d2")
    assert yaml.safe_load(yaml.safe_dump(d)) == d        # plain YAML data all the way down
    assert _over(tmp_path, world=8, cuda=True)["MODEL"]["RESNETS"]["NORM"] == "naiveSyncBN"
    smoke = _over(tmp_path, smoke=True, opts={"SOLVER.MAX_ITER": 3, "MODEL": {"RPN": {"BATCH_SIZE_PER_IMAGE": 8}}})
    assert smoke["SOLVER"]["MAX_ITER"] == 3                         # opts beat the smoke config
    assert smoke["SOLVER"]["BASE_LR"] == 0.01                       # smoke beats the protocol
    assert smoke["MODEL"]["RPN"]["BATCH_SIZE_PER_IMAGE"] == 8
    assert smoke["MODEL"]["RPN"]["PRE_NMS_TOPK_TRAIN"] == 200       # nested merge keeps siblings
    assert smoke["MODEL"]["ROI_HEADS"]["NAME"] == "Res5ROIHeadsExtraNorm"
    lst = _over(tmp_path, opts=["SOLVER.BASE_LR", 0.04, "MODEL.RESNETS.NORM", "SyncBN"])
    assert lst["SOLVER"]["BASE_LR"] == 0.04 and lst["MODEL"]["RESNETS"]["NORM"] == "BN"
    with pytest.raises(ExcbError, match="KEY VALUE"):
        _over(tmp_path, opts=["SOLVER.BASE_LR"])


def test_resnet18_sets_basic_block_width(tmp_path):
    c = dict(T.DEFAULTS)
    d = T.build_d2_overrides(c, run_dir=tmp_path, datasets=("a", "b"), weights="", world_size=1, cuda=False,
                             arch={"depth": 18}, num_classes=3)
    assert d["MODEL"]["RESNETS"]["DEPTH"] == 18 and d["MODEL"]["RESNETS"]["RES2_OUT_CHANNELS"] == 64
    assert d["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 3


@pytest.mark.parametrize("norm,world,cuda,want", [
    ("SyncBN", 1, True, "BN"), ("naiveSyncBN", 1, False, "BN"), ("SyncBN", 2, False, "naiveSyncBN"),
    ("SyncBN", 2, True, "SyncBN"), ("FrozenBN", 1, False, "FrozenBN"), ("GN", 4, True, "GN")])
def test_effective_norm(norm, world, cuda, want):
    assert T.effective_norm(norm, world, cuda) == want


def test_coco_layout_errors_name_the_missing_file(tmp_path):
    with pytest.raises(ExcbError, match="coco_root: required"):
        T.validate_coco_root(None)
    with pytest.raises(ExcbError, match="not found"):
        T.validate_coco_root(tmp_path / "nope")
    make_synthetic_coco(tmp_path / "c", n_train=2, n_val=1, image_size=32)
    assert T.validate_coco_root(tmp_path / "c")["val_images"] == tmp_path / "c" / "val2017"
    (tmp_path / "c" / "annotations" / "instances_train2017.json").unlink()
    with pytest.raises(ExcbError, match=r"instances_train2017\.json"):
        T.validate_coco_root(tmp_path / "c")
    T.validate_coco_root(tmp_path / "c", need_train=False)  # evaluation needs only val
    (tmp_path / "c" / "val2017").rename(tmp_path / "c" / "val")
    with pytest.raises(ExcbError, match="val2017"):
        T.validate_coco_root(tmp_path / "c", need_train=False)


def test_parse_detectron2_metrics():
    raw = {"bbox": {"AP": 38.21, "AP50": 58.2, "AP75": 41.2, "APs": 21.0, "APm": 40.1, "APl": 50.0,
                    "AP-person": 50.0},
           "segm": {"AP": 33.3, "AP50": 54.7, "AP75": 35.2, "APs": float("nan"), "APm": 36.0, "APl": 49.0}}
    m = T.parse_detectron2_metrics(raw)
    assert (m["AP_box"], m["AP50_box"], m["AP75_box"]) == (38.21, 58.2, 41.2)
    assert (m["AP_mask"], m["AP50_mask"], m["AP75_mask"]) == (33.3, 54.7, 35.2)
    assert m["APs_mask"] is None and m["units"] == "percent"   # NaN (nothing detected) -> null
    json.dumps(m, allow_nan=False)
    box_only = T.parse_detectron2_metrics({"bbox": raw["bbox"]})
    assert box_only["AP_box"] == 38.21 and box_only["AP_mask"] is None
    with pytest.raises(ExcbError, match="bbox"):
        T.parse_detectron2_metrics({"classification": {"top1": 1.0}})


def test_leaderboard_reads_our_metric_names():
    """The leaderboard's metric sources find the keys this stage writes."""
    from benchmarks.leaderboard import DEFAULTS as LB  # noqa: N811

    srcs = LB["metric_sources"]
    for col, key in (("ap_box", "AP_box"), ("ap50_box", "AP50_box"), ("ap75_box", "AP75_box"),
                     ("ap_mask", "AP_mask"), ("ap50_mask", "AP50_mask"), ("ap75_mask", "AP75_mask")):
        assert key in srcs[col].split(":", 1)[1].split("|")


def test_synthetic_coco(tmp_path):
    root = make_synthetic_coco(tmp_path / "s", n_train=5, n_val=3, image_size=64, seed=1)
    tr = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    assert len(tr["images"]) == 5 and {c["id"] for c in tr["categories"]} == {1, 2, 3}
    assert T.count_images(root / "annotations" / "instances_train2017.json") == 5
    assert T.count_images(root / "annotations" / "instances_val2017.json", chunk=7) == 3  # needle split across blocks
    for a in tr["annotations"]:
        poly = a["segmentation"][0]
        xs, ys = poly[0::2], poly[1::2]
        assert len(poly) >= 6 and len(poly) % 2 == 0
        x, y, w, h = a["bbox"]
        assert math.isclose(x, min(xs)) and math.isclose(x + w, max(xs), abs_tol=0.02)
        assert 0 <= x and x + w <= 64 and 0 <= y and y + h <= 64
        assert 0 < a["area"] <= w * h + 0.05  # both rounded to 0.01
    for im in tr["images"]:
        assert (root / "train2017" / im["file_name"]).is_file()
    mtime = (root / "annotations" / "instances_train2017.json").stat().st_mtime_ns
    make_synthetic_coco(tmp_path / "s", n_train=5, n_val=3, image_size=64, seed=1)  # reused, not rewritten
    assert (root / "annotations" / "instances_train2017.json").stat().st_mtime_ns == mtime


def test_polygon_area():
    assert polygon_area([(0, 0), (4, 0), (4, 3), (0, 3)]) == 12.0
    assert polygon_area([(0, 0), (4, 0), (0, 3)]) == 6.0


def test_missing_detectron2_is_a_skip(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "detectron2" or name.startswith("detectron2."):
            raise ImportError(f"No module named '{name}'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(T.DetectronMissing) as ei:
        T.run({"dataset": "synthetic", "smoke": True}, tmp_path)
    msg = str(ei.value)
    assert "\n" not in msg and "detectron2.readthedocs.io" in msg and "not on PyPI" in msg
    assert isinstance(ei.value, ExcbError) and ei.value.skip_stage
    assert not (tmp_path / "results.json").exists()


def test_coco_errors_come_before_the_detectron2_check(tmp_path):
    with pytest.raises(ExcbError, match="coco_root: required"):
        T.run({"dataset": "coco"}, tmp_path)
    with pytest.raises(ExcbError, match="machine_rank"):
        T.run({"machine_rank": 2, "num_machines": 2}, tmp_path)


def test_stage_configs_resolve():
    from excb.config import resolve_config

    root = Path(__file__).resolve().parents[2] / "configs" / "detection"
    demo = resolve_config(T.DEFAULTS, root / "demo.yaml")
    assert demo["smoke"] is True and demo["dataset"] in ("synthetic", "auto")
    full = resolve_config(T.DEFAULTS, root / "r50_c4_1x.yaml", ["coco_root=/data/coco"])
    assert full["smoke"] is False and full["d2_config"] == T.FULL_CONFIG and full["coco_root"] == "/data/coco"


def test_protocol_record_keeps_protocol_drops_locations(tmp_path):
    cfg = {**T.DEFAULTS, "coco_root": "/data/coco", "num_gpus": 8, "smoke": False}
    over = T.build_d2_overrides(cfg, run_dir=tmp_path, datasets=("a", "b"), weights="w", world_size=8, cuda=True,
                                arch={"depth": 50})
    p = T.protocol_record(cfg, over)
    assert "coco_root" not in p and "num_gpus" not in p and "checkpoint" not in p
    d = p["detectron2"]
    assert d["SOLVER.IMS_PER_BATCH"] == 16 and d["SOLVER.MAX_ITER"] == 90000 and d["SOLVER.STEPS"] == [60000, 80000]
    assert d["MODEL.RESNETS.NORM"] == "naiveSyncBN" and d["MODEL.ROI_HEADS.NAME"] == "Res5ROIHeadsExtraNorm"
