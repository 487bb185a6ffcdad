"""Collapse symptoms and the subset choice of the online k-NN (excb/monitor.py), on hand-made statistics."""
import math

import pytest

from excb import ExcbError
from excb.monitor import CollapseDetector, likely_cause, spaced_indices
from tiny_helpers import make_tiny_config


def test_spaced_indices_spread_over_the_split():
    assert spaced_indices(10, 4) == [0, 3, 6, 9]
    assert spaced_indices(5, 0) == [0, 1, 2, 3, 4]
    assert spaced_indices(5, 9) == [0, 1, 2, 3, 4]
    # an ImageFolder lists classes in order: 3 classes x 100 images, 6 picks reach every class
    assert sorted({i // 100 for i in spaced_indices(300, 6)}) == [0, 1, 2]


def _detector(**over):
    cfg = make_tiny_config(**{"monitor.patience": 2, "monitor.grace_epochs": 1, **over})
    # K = 64, 512 assignment rows per epoch (4 steps x 64 images x 2 global views)
    return CollapseDetector(cfg, rows_per_epoch=512, rows_per_step=128)


BALANCED = {"loss": 8.0, "clusters_used": 0.8, "cluster_size_max": 3.0, "agreement": 0.05, "agreement_chance": 0.02}
COLLAPSED = {"loss": 2.6, "clusters_used": 3 / 64, "cluster_size_max": 25.0, "agreement": 0.58, "agreement_chance": 0.4}


def test_collapse_symptoms_from_epoch_statistics():
    d = _detector()
    assert d.symptoms(BALANCED, None) == {}
    s = d.symptoms(COLLAPSED, None)
    assert set(s) == {"clusters", "largest"}
    assert s["clusters"][0] == s["largest"][0] == "collapse"
    assert "only 3 of 64 clusters" in s["clusters"][1]
    assert "39 %" in s["largest"][1]           # 25 / 64 of the rows
    # a uniform prediction's loss is G ln K = 2 ln 64 = 8.3178
    assert set(d.symptoms({**BALANCED, "loss": 8.3178}, None)) == {"loss"}
    assert d.symptoms({**BALANCED, "loss": 8.1}, None) == {}


def test_agreement_at_chance_needs_enough_images():
    cfg = make_tiny_config(**{"centroids.K": 512})
    at_chance = {**BALANCED, "agreement": 0.0021, "agreement_chance": 0.002}
    # 1,000,000 images: standard error sqrt(0.002 * 0.998 / 1e6) = 4.5e-5, 0.0021 + 3 se < 1.5 x 0.002
    big = CollapseDetector(cfg, rows_per_epoch=2_000_000, rows_per_step=2048)
    assert set(big.symptoms(at_chance, None)) == {"agreement"}
    assert big.symptoms({**at_chance, "agreement": 0.0035}, None) == {}
    # 256 images: se = 0.0028, far too coarse to tell 0.0021 from 1.5 x chance
    small = CollapseDetector(cfg, rows_per_epoch=512, rows_per_step=128)
    assert small.symptoms(at_chance, None) == {}


def test_knn_symptom_needs_no_improvement():
    d = _detector()
    low = {"knn_top1": 55.0, "random_init": 63.0}
    assert "knn" in d.symptoms(BALANCED, {**low, "improving": False})
    assert "knn" not in d.symptoms(BALANCED, {**low, "improving": True})
    assert "knn" not in d.symptoms(BALANCED, {"knn_top1": 64.0, "random_init": 63.0, "improving": False})


def test_alarm_needs_patience_and_names_cause():
    d = _detector()
    assert d.update(1, COLLAPSED, None) == []            # first epoch with the symptom
    alarms = d.update(2, COLLAPSED, None)
    assert [a.severity for a in alarms] == ["collapse"]
    assert "balancer.name=none" not in alarms[0].line() and "K x (1 - m_s)" in alarms[0].line()
    assert d.update(3, BALANCED, None) == []              # recovered: streak reset
    assert d.update(4, COLLAPSED, None) == []


def test_likely_cause_numbers():
    cfg = make_tiny_config(**{"centroids.K": 65536, "balancer.momentum": 0.999, "batch_size": 1024})
    # 65536 x 0.001 / 2048 rows per step = 0.032
    assert "= 0.032" in likely_cause(cfg, rows_per_step=2048)
    assert "balancer.name=none" in likely_cause(make_tiny_config(**{"balancer.name": "none"}), 128)


def test_bad_monitor_keys_are_one_line_errors(tmp_path):
    from excb.train import train

    with pytest.raises(ExcbError, match="monitor.knn_every"):
        train(make_tiny_config(**{"monitor.knn_every": -1}), tmp_path)
    with pytest.raises(ExcbError, match="monitor.data"):
        train(make_tiny_config(**{"monitor.knn_every": 1, "monitor.data": {"name": "demo", "limt_train": 3}}),
              tmp_path / "b")
