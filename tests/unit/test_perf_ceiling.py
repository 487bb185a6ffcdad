"""The machine-ceiling benchmark's FLOP counting and the demo timer (no timing asserted)."""
from __future__ import annotations

import json
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode


def _useful_counter():
    from benchmarks.perf.bench_ceiling import _conv_bwd, _conv_fwd

    aten = torch.ops.aten
    return FlopCounterMode(display=False, custom_mapping={aten.convolution: _conv_fwd, aten._convolution: _conv_fwd,
                                                          aten.convolution_backward: _conv_bwd})


def test_valid_taps_by_hand():
    from benchmarks.perf.bench_ceiling import valid_taps

    # length 4, k 3, pad 1: outputs at the two borders see 2 real pixels, the two inside 3 -> 10
    assert valid_taps(4, 4, 3, 1, 1, 1) == 10
    assert valid_taps(1, 1, 3, 1, 1, 1) == 1           # a 1-pixel map: only the centre tap is real
    assert valid_taps(5, 3, 3, 2, 1, 1) == 2 + 3 + 2    # stride 2: inputs -1..1, 1..3, 3..5 of 0..4
    assert valid_taps(6, 4, 3, 1, 0, 1) == 12          # no padding: every tap is real


def test_useful_flops_skip_padding_and_count_backward():
    x = torch.randn(2, 4, 1, 1, requires_grad=True)
    w = torch.randn(5, 4, 3, 3, requires_grad=True)
    with _useful_counter() as fc:
        torch.nn.functional.conv2d(x, w, padding=1).sum().backward()
    # forward 2*N*Cout*Cin*1 tap = 80; grad_input and grad_weight 80 each
    assert fc.get_total_flops() == 3 * 2 * 2 * 5 * 4 * 1
    x2 = torch.randn(2, 4, 6, 6, requires_grad=True)
    with _useful_counter() as fc, FlopCounterMode(display=False) as ref:
        torch.nn.functional.conv2d(x2, w).sum().backward()
    assert fc.get_total_flops() == 3 * 2 * 2 * 5 * 4 * 9 * 16   # no padding: 9 taps at 4x4 outputs
    # weight-only gradient (input without grad): forward + grad_weight
    with _useful_counter() as fc:
        torch.nn.functional.conv2d(torch.randn(2, 4, 1, 1), w, padding=1).sum().backward()
    assert fc.get_total_flops() == 2 * 2 * 2 * 5 * 4


def test_time_demo_measures_first_to_last_line_and_reads_stage_times(tmp_path):
    from benchmarks.perf.time_demo import fmt_s, run_and_time, stage_table

    code = "import time; time.sleep(0.3); print('a', flush=True); time.sleep(0.5); print('b', flush=True)"
    r = run_and_time([sys.executable, "-c", code], {})
    assert r["returncode"] == 0
    assert 0.4 <= r["first_to_last_s"] < r["process_s"]        # the 0.3 s before the first line is not counted
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {
        "pretrain": {"status": "complete", "wall_s": 125.0, "start": 1.0, "end": 126.0},
        "detect": {"status": "skipped", "start": 10.0, "end": 10.5}}}))
    rows = stage_table(tmp_path)
    assert rows == [{"stage": "pretrain", "status": "complete", "seconds": 125.0},
                    {"stage": "detect", "status": "skipped", "seconds": 0.5}]
    assert fmt_s(125.0) == "2 min 05.0 s" and fmt_s(9.25) == "9.2 s"
