"""Per-step schedules: linear warm-up then half-cosine; the pretraining schedules of SPEC section 4."""
from __future__ import annotations

import math

import numpy as np
import pytest

from excb.schedules import cosine_schedule


def test_warmup_then_cosine_by_hand():
    s = cosine_schedule(1.0, 0.0, epochs=3, steps_per_epoch=4, warmup_epochs=1)
    assert len(s) == 12
    np.testing.assert_allclose(s[:4], [0.0, 0.25, 0.5, 0.75])           # linear ramp from 0
    rest = 8
    expected = [0.5 * (1 + math.cos(math.pi * t / rest)) for t in range(rest)]
    np.testing.assert_allclose(s[4:], expected)
    assert s[4] == 1.0                                                    # base right after warm-up
    assert np.all(np.diff(s[4:]) < 0)


def test_no_warmup_and_final_value():
    s = cosine_schedule(0.996, 1.0, epochs=10, steps_per_epoch=100)
    assert s[0] == pytest.approx(0.996)
    assert s[-1] == pytest.approx(1.0, abs=1e-6) and s[-1] < 1.0
    assert np.all(np.diff(s) >= 0)
    wd = cosine_schedule(1e-3, 1e-4, epochs=5, steps_per_epoch=7)
    assert wd[0] == pytest.approx(1e-3) and wd[-1] == pytest.approx(1e-4, rel=5e-2) and wd[-1] > 1e-4


def test_warmup_longer_than_training_is_clipped():
    s = cosine_schedule(1.0, 0.0, epochs=1, steps_per_epoch=5, warmup_epochs=3)
    assert len(s) == 5
    np.testing.assert_allclose(s, [0.0, 0.2, 0.4, 0.6, 0.8])


def test_pretrain_schedules_follow_the_paper():
    from excb.config import resolve_config
    from excb.train import PRETRAIN_DEFAULTS, build_schedules

    cfg = resolve_config(PRETRAIN_DEFAULTS, None, ["epochs=100"])
    steps = 1251  # ImageNet at batch 1024
    sch = build_schedules(cfg, steps)
    assert all(len(v) == 100 * steps for v in sch.values())
    # lr = 0.15 * 1024 / 256 = 0.6 after 10 warm-up epochs, then cosine
    assert sch["lr"][0] == 0.0
    assert sch["lr"][10 * steps] == pytest.approx(0.6)
    assert sch["lr"][10 * steps - 1] < 0.6
    assert sch["lr"][-1] < 1e-5
    # centroid weight decay: cosine 1e-3 -> 1e-4; EMA momentum 0.996 -> 1
    assert sch["wd_centroids"][0] == pytest.approx(1e-3) and sch["wd_centroids"][-1] == pytest.approx(1e-4, rel=1e-3)
    assert sch["momentum"][0] == pytest.approx(0.996) and sch["momentum"][-1] == pytest.approx(1.0, abs=1e-8)
    assert sch["wd"][0] == pytest.approx(1e-4) and sch["wd"][-1] == pytest.approx(1e-4)
