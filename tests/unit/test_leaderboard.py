"""Leaderboard: published rows from configs/baselines + hand-written run directories, cell by cell."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from benchmarks import leaderboard as L
from excb import ExcbError


# ----------------------------------------------------------------------------- fixtures
def _results(path: Path, stage: str, metrics: dict, protocol: dict, data=("demo", 6000, 1000), **extra) -> None:
    path.mkdir(parents=True, exist_ok=True)
    res = {"stage": stage, "metrics": metrics, "protocol": protocol,
           "data": {"name": data[0], "n_train": data[1], "n_val": data[2]},
           "checkpoint": {"path": "x.pth", "sha256": "0", "format": "excb-bench"}, "seed": 0, "world_size": 1,
           "wall_s": 1.0, "versions": {}, **extra}
    (path / "results.json").write_text(json.dumps(res))


KNN = {"k": 20, "temperature": 0.07, "num_workers": 2, "batch_size": 256}
LIN = {"epochs": 100, "lr": 0.3, "batch_size": 256}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "myrun"
    _results(run / "pretrain", "pretrain", {"epochs_done": 3},
             {"batch_size": 64, "epochs": 3, "backbone": {"name": "resnet18"}, "augment": {"n_local": 2}})
    _results(run / "knn", "knn", {"top1": 80.1, "top5": 97.0}, KNN)
    _results(run / "linear", "linear", {"top1": 71.2}, LIN)
    _results(run / "semisup_1", "semisup", {"top1": 40.0, "top5": 70.0}, {"pct": 1})
    _results(run / "semisup_10", "semisup", {"top1": 60.0, "top5": 90.0}, {"pct": 10})
    _results(run / "sanity_random" / "knn", "knn", {"top1": 70.0}, {**KNN, "features": "random", "num_workers": 0})
    _results(run / "sanity_pixels" / "knn", "knn", {"top1": 84.0}, {**KNN, "features": "pixels"})
    _results(run / "eval_dino" / "knn", "knn", {"top1": 79.0}, KNN)
    _results(run / "eval_dino" / "linear", "linear", {"top1": 75.0}, LIN)
    (run / "eval_dino" / "label.txt").write_text("DINO R50 (official) & 50%_x\n")
    _results(run / "eval_moco" / "knn", "knn", {"top1": 90.0}, {**KNN, "k": 10})
    (run / "eval_moco" / "eval.json").write_text(json.dumps({"label": "MoCo-v2"}))
    return run


def _baselines():
    return L.load_baselines(L.baseline_files(L.DEFAULTS))


def _row(section, method):
    hits = [r for r in section["rows"] if r["cells"]["method"] == method]
    assert len(hits) == 1, (method, [r["cells"]["method"] for r in section["rows"]])
    return hits[0]


def _md_line(md: str, method: str) -> list:
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0] == method:
            return cells
    raise AssertionError(f"{method} not in\n{md}")


# ----------------------------------------------------------------------------- published rows
def test_baseline_files_complete_and_exact():
    rows = _baselines()
    per = {}
    for r in rows:
        per[r["table"]] = per.get(r["table"], 0) + 1
    # Table 1: 17 methods; Table 2: 4 methods x 3 epochs; Table 3: 13 rows x 3 epochs; Table 4: 10; Table 5: 8
    assert per == {"table1": 17, "table2": 12, "table3": 39, "table4": 10, "table5": 8, "ablations": 11, "zoo": 3}
    t1 = {r["method"]: r for r in rows if r["table"] == "table1"}
    assert t1["ExCB"]["metrics"] == {"linear_top1": 76.5, "knn_top1": 71.0}
    assert (t1["ExCB"]["batch"], t1["ExCB"]["epochs"]) == (1024, 400)
    assert t1["TWIST"]["epochs"] == "800+50" and t1["NNCLR"]["metrics"]["knn_top1"] is None
    assert t1["Supervised"]["batch"] is None and t1["Supervised"]["reference"] is True
    assert "[10]" in t1["DINO"]["source"]["cite"] and "Table 1" in t1["DINO"]["source"]["paper"]
    t3 = [r for r in rows if r["table"] == "table3" and r["method"] == "SMoG"]
    assert [(r["multi_crop"], r["batch"], r["epochs"], r["metrics"]["linear_top1"]) for r in t3] == [
        (False, 2048, 100, 67.2), (False, 2048, 200, None), (False, 2048, 400, 73.6),
        (True, 4096, 100, None), (True, 4096, 200, None), (True, 4096, 400, 76.4)]
    t5 = {r["method"]: r for r in rows if r["table"] == "table5"}
    assert list(t5["ExCB"]["metrics"].values()) == [39.2, 59.4, 42.3, 34.3, 56.2, 36.3]
    assert all(r["data"] == "coco" for r in t5.values())


def test_published_table1_best_and_second():
    t = L.build_tables(_baselines(), [], tables=["table1"])["table1"]
    assert len(t["sections"]) == 1
    sec = t["sections"][0]
    assert sec["kind"] == "published" and sec["data"] == "imagenet"
    assert _row(sec, "ExCB")["emph"] == {"linear_top1": "best", "knn_top1": "best"}
    assert _row(sec, "CoKe")["emph"] == {"linear_top1": "second"}      # tie 76.4: both underlined
    assert _row(sec, "SMoG")["emph"] == {"linear_top1": "second"}
    assert _row(sec, "MIRA")["emph"] == {"knn_top1": "second"}
    assert _row(sec, "MAST")["emph"] == {}
    assert _row(sec, "Supervised")["rank"] is False and _row(sec, "Supervised")["emph"] == {}
    md = L.render(t, "md")
    assert _md_line(md, "ExCB")[-2:] == ["**76.5**", "**71.0**"]
    assert _md_line(md, "SMoG")[-2:] == ["<u>76.4</u>", "–"]
    assert _md_line(md, "TWIST*")[1:4] == ["resnet50", "2048", "800+50"]
    assert _md_line(md, "Supervised")[1:] == ["resnet50", "–", "–", "75.6", "–"]


def test_published_table3_sections_and_pivot():
    t = L.build_tables(_baselines(), [], tables=["table3"])["table3"]
    assert [c["key"] for c in t["columns"]] == ["method", "batch", "epochs=100", "epochs=200", "epochs=400"]
    without, with_ = t["sections"]
    assert "without multi-crop" in without["title"] and "with multi-crop" in with_["title"]
    # ranked within each multi-crop section separately
    assert _row(without, "ExCB")["emph"] == {"epochs=100": "best", "epochs=200": "best", "epochs=400": "best"}
    assert _row(without, "TWIST")["emph"] == {"epochs=100": "second"}
    assert _row(with_, "MIRA")["emph"] == {"epochs=100": "second", "epochs=200": "second"}
    assert _row(with_, "SMoG")["cells"]["epochs=100"] is None
    assert _row(with_, "SMoG")["emph"] == {"epochs=400": "second"}
    md = L.render(t, "md")
    assert _md_line(md, "SMoG")[2:] == ["67.2", "–", "<u>73.6</u>"]          # without multi-crop first
    assert _md_line(md[md.index("with multi-crop ·"):], "SMoG")[2:] == ["–", "–", "<u>76.4</u>"]


def test_published_table5_ties():
    sec = L.build_tables(_baselines(), [], tables=["table5"])["table5"]["sections"][0]
    assert _row(sec, "MoCo-v2")["emph"]["ap_box"] == "best"
    for m in ("SimSiam", "Barlow Twins", "ExCB"):
        assert _row(sec, m)["emph"]["ap_box"] == "second"
    assert _row(sec, "MoCo-v2")["emph"]["ap75_box"] == "best" and _row(sec, "Barlow Twins")["emph"]["ap75_box"] == "best"
    assert _row(sec, "ExCB")["emph"]["ap75_box"] == "second"
    assert "ap_box" not in _row(sec, "DINO")["emph"]


# ----------------------------------------------------------------------------- measured rows
def test_measured_rows_separate_section_with_sanity_and_eval(run_dir: Path):
    cfg = L.resolve_config(L.DEFAULTS)
    measured = L.collect_measured([run_dir], cfg)
    names = [m["method"] for m in measured]
    assert names == ["ExCB (ours)", "Random init (sanity)", "Raw pixels (sanity)", "DINO R50 (official) & 50%_x", "MoCo-v2"]
    t = L.build_tables(_baselines(), measured, cfg, tables=["table1"])["table1"]
    pub, meas = t["sections"]
    assert pub["kind"] == "published" and meas["kind"] == "measured"
    assert "ExCB (ours)" not in [r["cells"]["method"] for r in pub["rows"]]
    assert meas["title"] == "demo: Fashion-MNIST subset (6000 train / 1000 val) · measured"
    ours = _row(meas, "ExCB (ours)")
    assert ours["cells"] == {"method": "ExCB (ours)", "arch": "resnet18", "batch": 64, "epochs": 3,
                             "linear_top1": 71.2, "knn_top1": 80.1}
    # k-NN: k=20 rows (a) ranked together, the k=10 row (b) alone -> unmarked but labelled
    assert ours["variant"] == {"knn_top1": "a"}
    assert _row(meas, "Raw pixels (sanity)")["emph"] == {"knn_top1": "best"}
    assert ours["emph"] == {"knn_top1": "second", "linear_top1": "second"}
    assert _row(meas, "DINO R50 (official) & 50%_x")["emph"] == {"linear_top1": "best"}
    moco = _row(meas, "MoCo-v2")
    assert moco["variant"] == {"knn_top1": "b"} and moco["emph"] == {} and moco["cells"]["linear_top1"] is None
    assert any("knn: protocols differ" in n and "(a) k=20" in n and "(b) k=10" in n for n in meas["notes"])
    assert any("Sanity rows" in n for n in meas["notes"])

    md = L.render(t, "md")
    assert _md_line(md, "Raw pixels (sanity)")[1:] == ["raw pixels", "–", "–", "–", "**84.0** (a)"]
    assert _md_line(md, "Random init (sanity)")[1:] == ["resnet18", "–", "–", "–", "70.0 (a)"]
    assert _md_line(md, "ExCB (ours)")[-2:] == ["<u>71.2</u>", "<u>80.1</u> (a)"]
    assert _md_line(md, "MoCo-v2")[-1] == "90.0 (b)"
    assert md.index("published") < md.index("· measured")

    tex = L.render(t, "tex")
    assert r"DINO R50 (official) \& 50\%\_x & -- & -- & -- & \textbf{75.0} & 79.0$^{a}$ \\" in tex
    assert r"Raw pixels (sanity) & raw pixels & -- & -- & -- & \textbf{84.0}$^{a}$ \\" in tex
    assert r"\multicolumn{6}{l}{\textit{demo: Fashion-MNIST subset (6000 train / 1000 val) · measured}}" in tex

    rows = list(csv.DictReader(io.StringIO(L.render(t, "csv"))))
    ours_knn = [r for r in rows if r["method"] == "ExCB (ours)" and r["metric"] == "k-NN"]
    assert len(ours_knn) == 1
    assert ours_knn[0]["value"] == "80.1" and ours_knn[0]["emphasis"] == "second" and ours_knn[0]["variant"] == "a"
    assert ours_knn[0]["data"] == "demo" and ours_knn[0]["kind"] == "ours"
    sup = [r for r in rows if r["method"] == "Supervised" and r["metric"] == "k-NN"][0]
    assert sup["value"] == "" and sup["ranked"] == "0"


def test_semisup_measured_and_missing_detection(run_dir: Path):
    cfg = L.resolve_config(L.DEFAULTS)
    tables = L.build_tables(_baselines(), L.collect_measured([run_dir], cfg), cfg)
    meas = [s for s in tables["table4"]["sections"] if s["kind"] == "measured"]
    assert len(meas) == 1 and [r["cells"]["method"] for r in meas[0]["rows"]] == ["ExCB (ours)"]
    assert meas[0]["rows"][0]["cells"]["semisup_10_top5"] == 90.0
    assert meas[0]["rows"][0]["emph"] == {}          # a single row is not "best" of anything
    assert all(s["kind"] == "published" for s in tables["table5"]["sections"])   # no detect results
    assert all(s["kind"] == "published" for s in tables["table2"]["sections"])


def test_different_data_sets_never_share_a_section(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    _results(a / "knn", "knn", {"top1": 50.0}, KNN, data=("demo", 6000, 1000))
    _results(b / "knn", "knn", {"top1": 60.0}, KNN, data=("imagefolder", 1300, 50))
    _results(b / "linear", "linear", {"top1": 0.55, "units": "fraction"}, LIN, data=("imagefolder", 1300, 50))
    cfg = L.resolve_config(L.DEFAULTS)
    measured = L.collect_measured([a, b], cfg)
    assert [m["method"] for m in measured] == ["ExCB (ours, a)", "ExCB (ours, b)"]
    secs = L.build_tables([], measured, cfg, tables=["table1"])["table1"]["sections"]
    assert [s["title"] for s in secs] == ["demo: Fashion-MNIST subset (6000 train / 1000 val) · measured",
                                          "ImageFolder (1300 train / 50 val) · measured"]
    assert all(len(s["rows"]) == 1 and not s["rows"][0]["emph"] for s in secs)
    assert secs[1]["rows"][0]["cells"]["linear_top1"] == pytest.approx(55.0)   # fraction -> %


def test_run_writes_all_formats(run_dir: Path):
    out = run_dir / "leaderboard"
    res = L.run({}, out)                       # runs=[] -> the parent of the stage folder
    for ext in ("md", "tex", "csv"):
        p = out / f"leaderboard.{ext}"
        assert p.is_file() and p.stat().st_size > 1000 and res["outputs"][ext] == str(p)
    assert json.loads((out / "results.json").read_text())["stage"] == "leaderboard"
    assert res["metrics"]["n_measured_sources"] == 5 and res["metrics"]["n_baseline_rows"] == 100   # 97 from the paper + 3 demo reference rows
    assert not [f for f in out.iterdir() if f.name.endswith(".tmp")]
    md = (out / "leaderboard.md").read_text()
    assert md.count("## Table") == 6 and "· measured" in md
    rows = list(csv.DictReader(io.StringIO((out / "leaderboard.csv").read_text())))
    assert {r["table"] for r in rows} == {"zoo", "table1", "table2", "table3", "table4", "table5", "ablations"}
    # ours (demo, 80.1) meets the demo reference run's 76.8 in the measured-vs-published table
    zoo_knn = [r for r in rows if r["table"] == "zoo" and r["method"] == "ExCB (ours)"]
    assert {r["metric"]: r["value"] for r in zoo_knn}["Δ k-NN"] == "+3.3"
    assert sum(1 for r in rows if r["table"] == "table") == 0          # one header only
    inputs = {str(p) for p in L.inputs({}, out)}
    assert str(run_dir / "eval_moco" / "knn" / "results.json") in inputs


def test_run_without_measured_results_warns(tmp_path: Path):
    res = L.run({"tables": ["table1"]}, tmp_path / "empty" / "leaderboard")
    assert res["metrics"]["n_measured_rows"] == 0
    assert any("no measured results" in w for w in res["warnings"])


def test_corrupt_results_is_a_warning(run_dir: Path):
    (run_dir / "linear" / "results.json").write_text("{not json")
    warnings: list = []
    measured = L.collect_measured([run_dir], L.resolve_config(L.DEFAULTS), warnings)
    assert "linear" not in measured[0]["stages"] and any("not valid JSON" in w for w in warnings)


# ----------------------------------------------------------------------------- validation / escaping
def test_bad_baseline_file_is_one_line_error(tmp_path: Path):
    p = tmp_path / "bad.yaml"
    p.write_text("table: table1\nrows:\n  - {method: X, arch: r50, batch: 1, epochs: 1, protocol: p, data: imagenet,"
                 " metrics: {linear_top1: 1.0}}\n")
    with pytest.raises(ExcbError) as e:
        L.load_baselines([p])
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and "source" in msg and "row 0 (X)" in msg
    p.write_text("table: table9\nrows: []\n")
    with pytest.raises(ExcbError, match="unknown table 'table9'"):
        L.load_baselines([p])
    p.write_text("table: table1\nrows:\n  - {method: X, arch: r50, batch: 1, epochs: 1, protocol: p, data: imagenet,"
                 " source: s, metrics: {linear_top1: '76.5%'}}\n")
    with pytest.raises(ExcbError, match="not a number"):
        L.load_baselines([p])


def test_latex_escape_and_unknown_format():
    assert L.latex_escape("a_b & 5% #1 $x$ {y} ~ ^ \\") == (
        r"a\_b \& 5\% \#1 \$x\$ \{y\} \textasciitilde{} \textasciicircum{} \textbackslash{}")
    t = L.build_tables([], [], tables=["table1"])["table1"]
    with pytest.raises(ExcbError, match="unknown format"):
        L.render(t, "html")
    with pytest.raises(ExcbError, match="unknown table"):
        L.build_tables([], [], tables=["table42"])


def test_mark_best_rules():
    sec = {"rows": [
        {"cells": {"m": 1.0}, "emph": {}, "variant": {}, "rank": True},
        {"cells": {"m": 3.0}, "emph": {}, "variant": {}, "rank": True},
        {"cells": {"m": 3.0}, "emph": {}, "variant": {}, "rank": True},
        {"cells": {"m": 2.0}, "emph": {}, "variant": {}, "rank": True},
        {"cells": {"m": 9.0}, "emph": {}, "variant": {}, "rank": False},   # reference: ignored
        {"cells": {"m": None}, "emph": {}, "variant": {}, "rank": True},
    ]}
    L.mark_best(sec, ["m"])
    assert [r["emph"].get("m") for r in sec["rows"]] == [None, "best", "best", "second", None, None]


# ----------------------------------------------------------------------------- provenance, measured vs published
IMNET = ("imagefolder", 1281167, 50000)
KNN_P = {"k": [10, 20], "headline_k": 20, "temperature": 0.07, "resize": 256, "crop": 224}
LIN_P = {"epochs": 100, "lrs": [0.1, 0.3], "resize": 256, "crop": 224}


def _ck(sha: str, zoo=None, trusted=False, arch="resnet50", fmt="dino", which=None) -> dict:
    ck = {"path": "/x.pth", "sha256": sha, "format": fmt, "arch": arch, "which": which, "trusted_pickle": trusted}
    if zoo:
        ck["zoo"] = {"name": zoo}
    return ck


def test_comparison_table_measured_published_delta(tmp_path: Path):
    run = tmp_path / "r"
    sha = "ab" * 32
    _results(run / f"eval_{sha[:12]}" / "knn", "knn", {"top1": 66.9}, KNN_P, data=IMNET, checkpoint=_ck(sha, "dino_resnet50"))
    _results(run / f"eval_{sha[:12]}" / "linear", "linear", {"top1": 75.0, "selected_lr": 0.3}, LIN_P, data=IMNET,
             checkpoint=_ck(sha, "dino_resnet50"))
    (run / f"eval_{sha[:12]}" / "label.txt").write_text("dino_resnet50\n")
    sha2 = "cd" * 32
    _results(run / f"eval_{sha2[:12]}" / "knn", "knn", {"top1": 40.0}, KNN_P, checkpoint=_ck(sha2, "swav_800ep", fmt="swav"))
    (run / f"eval_{sha2[:12]}" / "label.txt").write_text("swav_800ep\n")
    cfg = L.resolve_config(L.DEFAULTS)
    measured = L.collect_measured([run], cfg)
    dino = [m for m in measured if m["method"] == "dino_resnet50"][0]
    assert (dino["epochs"], dino["batch"]) == (800, 4096)          # filled from the zoo entry
    t = L.build_tables(_baselines(), measured, cfg, tables=["zoo"])["zoo"]
    imnet, demo = t["sections"]
    assert imnet["title"] == "ImageFolder (1281167 train / 50000 val) · measured vs published"
    row = _row(imnet, "dino_resnet50")
    # DINO ResNet-50, ExCB paper Table 1: k-NN 67.5, linear 75.3
    assert row["cells"]["knn_top1"] == 66.9 and row["cells"]["knn_top1@pub"] == 67.5
    assert row["cells"]["knn_top1@delta"] == "-0.6"
    assert row["cells"]["linear_top1@pub"] == 75.3 and row["cells"]["linear_top1@delta"] == "-0.3"
    assert row["cells"]["published_source"] == "ExCB paper, Tables 1, 4, 5"
    assert row["emph"] == {} and row["rank"] is False
    prov = [n for n in imnet["notes"] if n.startswith("Provenance — dino_resnet50")][0]
    assert f"sha256 {sha[:8]}" in prov and "zoo:dino_resnet50" in prov and "k=20, T=0.07, 224 px (resize 256)" in prov
    assert "linear: 100 ep, lr 0.3, 224 px" in prov
    # measured on the demo data, published on ImageNet: no Δ, said why
    swav = _row(demo, "swav_800ep")
    assert swav["cells"]["knn_top1@pub"] == 65.7 and swav["cells"]["knn_top1@delta"] == "≠ data"
    assert any("published number is on imagenet" in n for n in demo["notes"])
    md = L.render(t, "md")
    assert _md_line(md, "dino_resnet50")[4:11] == ["66.9", "67.5", "-0.6", "75.0", "75.3", "-0.3",
                                                   "ExCB paper, Tables 1, 4, 5"]
    assert not [ln for ln in md.splitlines() if ln.startswith("|") and ("**" in ln or "<u>" in ln)]   # nothing ranked


def test_comparison_shows_semisup_columns_only_when_measured(tmp_path: Path):
    run = tmp_path / "r"
    sha = "ef" * 32
    _results(run / f"eval_{sha[:12]}" / "semisup_1", "semisup_1", {"top1": 50.0, "top5": 79.0}, {"epochs": 50},
             data=IMNET, checkpoint=_ck(sha, "dino_resnet50"))
    (run / f"eval_{sha[:12]}" / "label.txt").write_text("dino_resnet50\n")
    cfg = L.resolve_config(L.DEFAULTS)
    t = L.build_tables(_baselines(), L.collect_measured([run], cfg), cfg, tables=["zoo"])["zoo"]
    (sec,) = t["sections"]
    row = _row(sec, "dino_resnet50")
    # DINO ResNet-50, ExCB paper Table 4: 1 % labels 52.2 top-1 / 78.2 top-5
    assert row["cells"]["semisup_1_top1@pub"] == 52.2 and row["cells"]["semisup_1_top1@delta"] == "-2.2"
    assert row["cells"]["semisup_1_top5@pub"] == 78.2 and row["cells"]["semisup_1_top5@delta"] == "+0.8"
    keys = [c["key"] for c in t["columns"]]
    assert "semisup_1_top1@delta" in keys and "knn_top1" not in keys and "ap_box" not in keys


def test_comparison_reference_rows_from_baselines(tmp_path: Path, run_dir: Path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "demo_reference.yaml").write_text(
        "table: zoo\nrows:\n- {method: 'ExCB (ours)', arch: resnet18, batch: 64, epochs: 3, protocol: demo, data: demo,"
        " data_sizes: [6000, 1000], metrics: {knn_top1: 79.6, linear_top1: null}, source: 'reference run'}\n")
    cfg = L.resolve_config(L.DEFAULTS, None, [f"baselines_dir={base}"])
    base_rows = L.load_baselines(L.baseline_files(cfg))
    t = L.build_tables(base_rows, L.collect_measured([run_dir], cfg), cfg, tables=["zoo"])["zoo"]
    (sec,) = t["sections"]
    ours = _row(sec, "ExCB (ours)")
    assert ours["cells"]["knn_top1@pub"] == 79.6 and ours["cells"]["knn_top1@delta"] == "+0.5"   # 80.1 - 79.6
    assert ours["cells"]["linear_top1"] == 71.2 and ours["cells"]["linear_top1@pub"] is None
    assert [r["cells"]["method"] for r in sec["rows"]] == ["ExCB (ours)"]   # rows without a reference are left out


def test_provenance_trust_mark_and_vit_routing(tmp_path: Path):
    run = tmp_path / "r"
    _results(run / "eval_a" / "knn", "knn", {"top1": 50.0}, KNN_P, checkpoint=_ck("12" * 32, trusted=True, which="teacher"))
    (run / "eval_a" / "label.txt").write_text("mine\n")
    _results(run / "eval_v" / "knn", "knn", {"top1": 60.0}, KNN_P,
             checkpoint=_ck("34" * 32, arch="vit_small_patch16_224", fmt="timm"))
    (run / "eval_v" / "label.txt").write_text("a ViT\n")
    cfg = L.resolve_config(L.DEFAULTS)
    tables = L.build_tables(_baselines(), L.collect_measured([run], cfg), cfg, tables=["table1", "table2"])
    meas1 = [s for s in tables["table1"]["sections"] if s["kind"] == "measured"][0]
    assert [r["cells"]["method"] for r in meas1["rows"]] == ["mine †"]          # the ViT is not in the ResNet table
    assert any(n.startswith("Provenance — mine †: checkpoint sha256 12121212, dino, teacher, † loaded with "
                            "--trust-checkpoint · k-NN: k=20, T=0.07, 224 px (resize 256)") for n in meas1["notes"])
    assert any("--trust-checkpoint" in n and n.startswith("†") for n in meas1["notes"])
    meas2 = [s for s in tables["table2"]["sections"] if s["kind"] == "measured"][0]
    assert [r["cells"]["method"] for r in meas2["rows"]] == ["a ViT"]
    assert _row(meas2, "a ViT")["cells"]["knn_top1"] == 60.0


def test_latex_caption_names_data_set_and_protocol(run_dir: Path):
    cfg = L.resolve_config(L.DEFAULTS)
    t = L.build_tables(_baselines(), L.collect_measured([run_dir], cfg), cfg, tables=["table1"])["table1"]
    cap = [ln for ln in L.render(t, "tex").splitlines() if ln.startswith(r"\caption")][0]
    assert "ImageNet" in cap and "k-NN k=20 T=0.07" in cap and "linear probe 100 ep" in cap
    assert "demo: Fashion-MNIST subset (6000 train / 1000 val)" in cap and "protocol per row in the notes" in cap
