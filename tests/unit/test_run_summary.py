"""run-all's console summary: per-stage times from the manifest."""
from __future__ import annotations

from excb_bench.run_summary import format_seconds, stage_times_table


def test_format_seconds():
    assert format_seconds(75.3) == "1 min 15 s"
    assert format_seconds(9.24) == "9.2 s"
    assert format_seconds(600) == "10 min 00 s"
    assert format_seconds(None) == "-"


def test_table_lists_every_stage_with_its_time():
    manifest = {"stages": {
        "pretrain": {"status": "complete", "wall_s": 200.0},
        "knn": {"status": "complete", "wall_s": 12.5},
        "detect": {"status": "skipped", "start": 100.0, "end": 100.25},
        "leaderboard": {"status": "complete", "wall_s": 1.0}}}
    statuses = {"pretrain": "up-to-date", "knn": "complete", "detect": "skipped"}
    lines = stage_times_table(statuses, manifest, total_s=14.0).splitlines()
    assert lines[0] == "[excb-bench] stage times:"
    assert lines[1].split() == ["pretrain", "up-to-date", "(ran", "earlier:", "3", "min", "20", "s)"]
    assert lines[2].split() == ["knn", "complete", "12.5", "s"]
    assert lines[3].split() == ["detect", "skipped", "0.2", "s"]
    assert lines[4].split() == ["total", "14.0", "s"]
    assert not any("leaderboard" in line for line in lines)   # not run by this invocation
