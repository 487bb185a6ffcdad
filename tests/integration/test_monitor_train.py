"""Online k-NN and collapse alarms during real (tiny) pretraining runs."""
import pytest

from excb.checkpoint import load_checkpoint_file
from excb.io import read_jsonl
from excb.train import train
from tiny_helpers import make_tiny_config

MONITOR_SUBSET = {"monitor.data": {"name": "demo", "limit_train": 200, "limit_val": 100},
                  "monitor.n_train": 0, "monitor.n_val": 0, "monitor.batch_size": 100}


def _knn_stage(tmp_path, checkpoint, **over):
    from benchmarks.knn import DEFAULTS, run
    from excb.config import deep_update

    cfg = deep_update(DEFAULTS, {"checkpoint": checkpoint, "format": "excb-bench", "which": "teacher",
                                 "data": {"name": "demo", "limit_train": 200, "limit_val": 100},
                                 "k": [20], "headline_k": 20, "resize": 36, "crop": 32, "batch_size": 100,
                                 "num_workers": 0, "cache": False, "progress": False, **over})
    return run(cfg, tmp_path)["metrics"]["top1"]


def test_online_knn_equals_knn_stage_on_same_subset_and_checkpoint(tmp_path):
    run_dir = tmp_path / "pre"
    res = train(make_tiny_config(**{"epochs": 1, "final_pass": False, "monitor.knn_every": 1, **MONITOR_SUBSET}),
                run_dir)
    mon = {r["epoch"]: r for r in read_jsonl(run_dir / "log.jsonl") if r.get("kind") == "monitor"}
    assert set(mon) == {0, 1}
    assert mon[1]["knn_random_init"] == mon[0]["knn_top1"]
    assert res["metrics"]["knn_top1"] == mon[1]["knn_top1"]
    stage_top1 = _knn_stage(tmp_path / "knn", str(run_dir / "checkpoint.pth"))
    assert stage_top1 == pytest.approx(mon[1]["knn_top1"], abs=1e-9)
    # the epoch-0 reference is the untrained network: the random-init sanity row of the same seed
    random_top1 = _knn_stage(tmp_path / "rand", None, backbone={"name": "resnet18", "kwargs": {}})
    assert random_top1 == pytest.approx(mon[0]["knn_top1"], abs=1e-9)


COLLAPSING = {"balancer.name": "none", "ema.momentum": 0.9, "optim.lr": 1.2, "optim.warmup_epochs": 0,
              "epochs": 5, "final_pass": False}


def test_collapse_alarm_fires_and_stops_with_checkpoint_kept(tmp_path, capsys):
    res = train(make_tiny_config(**{**COLLAPSING, "monitor.stop_on_collapse": True}), tmp_path)
    out = capsys.readouterr().out
    alarms = [ln for ln in out.splitlines() if "ALARM" in ln]
    assert alarms and "(collapse)" in alarms[0] and "one cluster takes" in alarms[0]
    assert "balancer.name=none" in alarms[0]
    assert res["status"] == "collapsed"
    done = res["metrics"]["epochs_done"]
    assert 2 <= done < 5
    assert load_checkpoint_file(tmp_path / "checkpoint.pth")["epoch"] == done
    logged = [r for r in read_jsonl(tmp_path / "log.jsonl") if r.get("kind") == "alarm"]
    assert logged and logged[0]["severity"] == "collapse"


def test_no_alarm_on_excb_demo_settings(tmp_path, capsys):
    res = train(make_tiny_config(**{"epochs": 4, "final_pass": False, "monitor.knn_every": 2, **MONITOR_SUBSET}),
                tmp_path)
    assert "ALARM" not in capsys.readouterr().out
    assert res["status"] == "complete" and res["alarms"] == []
    assert [r["epoch"] for r in read_jsonl(tmp_path / "log.jsonl") if r.get("kind") == "monitor"] == [0, 2, 4]
