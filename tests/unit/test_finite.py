"""Non-finite checks (excb.finite) and how the stages use them: a diverged linear head is never
selected, and a probe whose every head diverged fails naming the head tensors."""
from __future__ import annotations

import pytest
import torch

from excb import ExcbError
from excb.finite import nonfinite_tensors, require_finite, require_finite_rows


def test_nonfinite_tensors_names_and_counts():
    a = torch.zeros(10)
    a[2], a[3], a[4] = float("nan"), float("inf"), float("-inf")
    named = [("ok", torch.ones(3)), ("a", a), ("ints", torch.arange(3)), ("b", torch.full((2, 2), float("nan")))]
    assert nonfinite_tensors(named) == ["a (1 nan, 2 inf of 10)", "b (4 nan of 4)"]
    with pytest.raises(ExcbError, match=r"^model: non-finite values \(NaN/Inf\) in 2 tensor\(s\): a \(1 nan, 2 inf of 10\), "
                                        r"b \(4 nan of 4\); hint$"):
        require_finite(named, "model", "hint")
    require_finite([("ok", torch.ones(3))], "model", "hint")   # finite: no error


def test_nonfinite_rows_are_counted():
    x = torch.ones(6, 4)
    x[1, 0] = float("nan")
    x[4, 3] = float("inf")
    with pytest.raises(ExcbError, match=r"feats: 2 of 6 vectors are non-finite \(NaN/Inf\), first at rows \[1, 4\]; h"):
        require_finite_rows(x, "feats", "h")


LINEAR = ["backbone.name=resnet18", "data.limit_train=200", "data.limit_val=100", "resize=36", "crop=32",
          "num_workers=0", "epochs=2", "batch_size=50", "mode=cached-features", "progress=false", "cache=false"]


def _linear(tmp_path, lrs):
    from excb.config import resolve_config
    from benchmarks import linear

    cfg = resolve_config(linear.DEFAULTS, None, [*LINEAR, f"lrs={lrs}"])
    return linear.run(cfg, tmp_path)


def test_linear_never_selects_a_diverged_head(tmp_path):
    # lr 1e38 overflows float32 within two epochs: that head's weights become inf/NaN
    res = _linear(tmp_path / "a", [0.3, 1e38])
    per = res["metrics"]["per_lr"]
    assert per[1].get("diverged") is True and "diverged" not in per[0]
    assert res["metrics"]["selected_lr"] == 0.3 and res["metrics"]["best_on_val"]["lr"] == 0.3
    with pytest.raises(ExcbError, match=r"linear: every trained head: non-finite values .* heads\.0\.weight"):
        _linear(tmp_path / "b", [1e38])
    assert not (tmp_path / "b" / "results.json").exists()
