"""Budgets that are not whole epochs: fractional epochs/warm-up, max_steps, time_budget parsing and
the stop rule, step spans, K-vs-data warning text (values computed by hand in the tests)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from tiny_helpers import make_tiny_config
from excb import ExcbError
from excb.budget import (StopRule, cluster_capacity_warning, epoch_spans, parse_duration, resume_step, total_steps)
from excb.config import dump_yaml, resolve_config
from excb.train import PRETRAIN_DEFAULTS, EpochShardSampler, build_schedules, validate_config


@pytest.mark.parametrize("text,seconds", [
    (3600, 3600.0), ("90", 90.0), ("90s", 90.0), ("45m", 2700.0), ("7.5h", 27000.0), ("2d", 172800.0),
    ("23:30:00", 84600.0), ("05:30", 330.0), ("1-02:00:00", 93600.0), ("", 0.0), (0, 0.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "5 weeks", "-3m", "1:2:3:4"])
def test_bad_duration_names_key(bad):
    with pytest.raises(ExcbError, match="time_budget"):
        parse_duration(bad)


def test_fractional_epochs_resolve_and_integral_values_stay_ints():
    cfg = resolve_config(PRETRAIN_DEFAULTS, None, ["epochs=1.5", "optim.warmup_epochs=0.25"])
    assert cfg["epochs"] == 1.5 and cfg["optim"]["warmup_epochs"] == 0.25
    cfg = resolve_config(PRETRAIN_DEFAULTS, None, ["epochs=3"])
    assert type(cfg["epochs"]) is int and cfg["epochs"] == 3        # configs and their hashes read as before
    assert type(resolve_config(PRETRAIN_DEFAULTS)["epochs"]) is int
    assert type(resolve_config(PRETRAIN_DEFAULTS, None, ["epochs=2.0"])["epochs"]) is int
    assert yaml.safe_load(dump_yaml(resolve_config(PRETRAIN_DEFAULTS)))["epochs"] == 100
    with pytest.raises(ExcbError, match="batch_size"):                # other int keys stay whole
        resolve_config(PRETRAIN_DEFAULTS, None, ["batch_size=0.5"])


def test_total_steps_and_spans_by_hand():
    cfg = make_tiny_config(epochs=1.5)
    assert total_steps(cfg, 10) == 15
    assert total_steps(make_tiny_config(epochs=3, max_steps=7), 10) == 7
    assert total_steps(make_tiny_config(epochs=3, max_steps=70), 10) == 30   # a cap, not a target
    assert total_steps(make_tiny_config(epochs=0.01), 10) == 1              # never zero steps
    assert list(epoch_spans(0, 25, 10)) == [(0, 0, 10), (1, 0, 10), (2, 0, 5)]
    assert list(epoch_spans(13, 25, 10)) == [(1, 3, 10), (2, 0, 5)]
    assert list(epoch_spans(20, 20, 10)) == []


def test_schedules_span_fractional_runs_and_max_steps():
    # batch 64 -> peak lr 0.3 * 64 / 256 = 0.075; 4 steps per epoch
    sch = build_schedules(make_tiny_config(epochs=1.5, **{"optim.warmup_epochs": 0.5}), 4)
    assert all(len(v) == 6 for v in sch.values())
    np.testing.assert_allclose(sch["lr"][:3], [0.0, 0.0375, 0.075])          # 2 warm-up steps, then the peak
    np.testing.assert_allclose(sch["lr"][3:], [0.075 * 0.5 * (1 + math.cos(math.pi * t / 4)) for t in (1, 2, 3)])
    capped = build_schedules(make_tiny_config(epochs=10, max_steps=6, **{"optim.warmup_epochs": 0.5}), 4)
    np.testing.assert_allclose(capped["lr"], sch["lr"])                      # max_steps: the run is 6 steps long
    assert capped["momentum"][-1] > capped["momentum"][0]                    # EMA momentum anneals within them


def test_sampler_skips_to_a_step_inside_the_epoch():
    full = EpochShardSampler(n=50, batch_per_rank=4, seed=3, rank=0, world=1)
    full.set_epoch(2)
    whole = list(full)
    assert len(whole) == 48 and len(full) == 48
    part = EpochShardSampler(n=50, batch_per_rank=4, seed=3, rank=0, world=1)
    part.set_epoch(2, first=5, end=9)
    assert list(part) == whole[20:36] and len(part) == 16
    # two ranks: each skips its own first batches
    for rank in (0, 1):
        a = EpochShardSampler(n=50, batch_per_rank=4, seed=3, rank=rank, world=2)
        a.set_epoch(1)
        b = EpochShardSampler(n=50, batch_per_rank=4, seed=3, rank=rank, world=2)
        b.set_epoch(1, first=2)
        assert list(b) == list(a)[8:]


def test_stop_rule_time_budget_with_a_fake_clock():
    rule = StopRule(time_budget_s=10.0, started=0.0, _last=0.0)
    assert rule.stop_reason(1, now=4.0) is None        # 4 s done, next step est. 4 s -> 8 < 10
    # est. step = 0.8 * 4 + 0.2 * 3 = 3.8 s; 7 + 3.8 >= 10 -> stop before overrunning
    assert rule.stop_reason(2, now=7.0) == "time_budget"
    assert StopRule(stop_after_step=3).stop_reason(2) is None
    assert StopRule(stop_after_step=3).stop_reason(3) == "stop_after_step"
    saver = StopRule(save_every_steps=5)
    assert [s for s in range(1, 16) if saver.save_due(s)] == [5, 10, 15]
    assert not StopRule().save_due(5)


def test_resume_step_of_old_and_new_checkpoints():
    assert resume_step({"epoch": 3}, 10) == 30                                  # before step checkpoints
    assert resume_step({"epoch": 1, "step": 17, "steps_per_epoch": 10}, 10) == 17
    assert resume_step({"epoch": 2, "step": 20, "steps_per_epoch": 10}, 8) == 16  # batch size changed at an epoch end
    with pytest.raises(ExcbError, match="same batch_size"):
        resume_step({"epoch": 1, "step": 17, "steps_per_epoch": 10}, 8)


@pytest.mark.parametrize("key,value", [("max_steps", -1), ("save_every_steps", -5), ("stop_after_step", -2),
                                       ("time_budget", "tomorrow"), ("optim.warmup_epochs", -0.5)])
def test_bad_budget_values_are_refused(key, value):
    with pytest.raises(ExcbError, match=key.split(".")[-1]):
        validate_config(make_tiny_config(**{key: value}))


def test_k_larger_than_data_warning_explains_the_consequence():
    assert cluster_capacity_warning(64, 256, 512) is None
    # 256 images, 2 global views, 1 epoch of 256 images -> 512 rows / 512 clusters = 1.00 each
    msg = cluster_capacity_warning(512, 256, 512)
    assert "centroids.K (512)" in msg and "256 images" in msg and "1.00 expected" in msg
    assert "at least 256 clusters (50 %) empty" in msg and "centroids.K <= 64" in msg
    # fewer rows per epoch than clusters: some clusters certainly get no member in an epoch
    msg = cluster_capacity_warning(1000, 300, 600)
    assert "0.60 expected" in msg and "at least 400 clusters get none in an epoch" in msg
    assert "at least 700 clusters (70 %) empty" in msg and "\n" not in msg
