"""The three cluster-size figures carry names that say which is which — in the JSONL log, the
console, results.json and the figures — and readers still understand logs of older runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tiny_helpers import make_tiny_config
from excb.cluster_stats import console_line, final_pass_line, get_stat, renamed
from excb.io import read_jsonl
from excb.train import train

OLD_KEYS = {"cluster_size_min", "cluster_size_max", "clusters_used", "s_min_rel", "s_max_rel",
            "final_empty_fraction", "final_max_rel_size", "final_purity"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import contextlib
    import io

    out = tmp_path_factory.mktemp("stats") / "pretrain"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        res = train(make_tiny_config(**{"data.limit_train": 128}), out)   # 2 epochs x 2 steps, final pass
    return out, res, buf.getvalue()


def test_log_results_and_console_use_the_new_names(run):
    out, res, console = run
    epochs = [r for r in read_jsonl(out / "log.jsonl") if r.get("kind") == "epoch"]
    steps = [r for r in read_jsonl(out / "log.jsonl") if r.get("kind") == "step"]
    for r in epochs:
        assert {"train_assign_size_min", "train_assign_size_max", "train_assign_used", "s_estimate_min",
                "s_estimate_max"} <= set(r) and not OLD_KEYS & set(r), sorted(r)
        assert r["train_assign_size_min"] <= 1 <= r["train_assign_size_max"]
    assert all("s_estimate_max" in r and "s_max_rel" not in r for r in steps)
    m = res["metrics"]
    assert {"final_pass_empty_fraction", "final_pass_max_size", "final_pass_purity", "train_assign_size_max",
            "s_estimate_max"} <= set(m) and not OLD_KEYS & set(m)
    # 128 images into K = 64 clusters after 4 steps: the raw argmax uses few clusters...
    counts = np.load(out / "final_cluster_counts.npy")
    assert m["final_pass_empty_fraction"] == pytest.approx(float((counts == 0).mean()))
    assert m["final_pass_max_size"] == pytest.approx(counts.max() * 64 / 128)
    # ...and the console names each figure and says the final pass of a short run is expected to look so
    lines = [ln for ln in console.splitlines() if ln.startswith("[excb] epoch")]
    assert len(lines) == 2 and all("train_assign_size=" in ln and "s_estimate=" in ln for ln in lines)
    assert "cluster_size_min" not in console
    final = [ln for ln in console.splitlines() if "final eval-mode pass" in ln]
    assert len(final) == 1 and f"{100 * m['final_pass_empty_fraction']:.1f}% of clusters empty" in final[0]
    if m["final_pass_empty_fraction"] > 0.3:
        assert "expected after a short run" in final[0]


def test_console_and_final_lines_by_hand():
    ep = {"train_assign_size_min": 0.5, "train_assign_size_max": 1.75, "train_assign_used": 1.0,
          "s_estimate_min": 0.9, "s_estimate_max": 1.125}
    assert console_line(ep) == "train_assign_size=0.50-1.75 (100% used)  s_estimate=0.90-1.12"
    old = {"cluster_size_min": 0.5, "cluster_size_max": 1.75, "clusters_used": 1.0, "s_min_rel": 0.9,
           "s_max_rel": 1.125}
    assert console_line(old) == console_line(ep)           # a log of an older run reads the same
    assert renamed({"s_min_rel": 0.9, "loss": 3.0}) == {"s_estimate_min": 0.9, "loss": 3.0}
    assert get_stat({"final_empty_fraction": 0.8}, "final_pass_empty_fraction") == 0.8
    assert get_stat({}, "final_pass_max_size", 7) == 7
    short = final_pass_line({"final_pass_empty_fraction": 0.78, "final_pass_max_size": 12.34}, steps=300)
    assert "78.0% of clusters empty, largest 12.3x" in short and "expected after a short run" in short
    long = final_pass_line({"final_pass_empty_fraction": 0.016, "final_pass_max_size": 19.5}, steps=500_000)
    assert "1.6% of clusters empty" in long and "expected" not in long


def test_figures_name_the_three_figures(run, tmp_path, monkeypatch):
    """Panel (c) of training_stats.png draws the training assignments and s under those names; the
    final pass figure says it is not what training used and that short runs look unbalanced there."""
    import benchmarks.figures as F

    out, _, _ = run
    root = out.parent
    texts = {}
    real_save = F.save_png

    def capture(fig, path, dpi):
        found = [t.get_text() for t in fig.texts] + [ax.get_title() for ax in fig.axes]
        for ax in fig.axes:
            if ax.get_legend() is not None:
                found += [t.get_text() for t in ax.get_legend().get_texts()]
            found += [t.get_text() for t in ax.texts]
        texts[Path(path).name] = "\n".join(found)
        return real_save(fig, path, dpi)

    monkeypatch.setattr(F, "save_png", capture)
    res = F.run({"run": str(root), "figures": ["training_stats", "cluster_sizes"]}, tmp_path / "figures")
    assert not res["skipped"], res["skipped"]
    stats = texts["training_stats.png"]
    assert "(c) balanced training assignments and s" in stats
    for label in ("training assignments max", "training assignments min", "s estimate max", "s estimate min"):
        assert label in stats, label
    sizes = texts["cluster_sizes.png"]
    assert "Final eval-mode pass over the training set" in sizes and "no balancing" in sizes
    assert "not what training used" in sizes and "50-85 %" in sizes


def test_figures_read_logs_of_older_runs(tmp_path):
    """A log written before the rename still draws panel (c) from cluster_size_min/max and s_*_rel."""
    import benchmarks.figures as F

    recs = [{"kind": "epoch", "epoch": e, "loss": 5.0, "cluster_size_min": 0.5, "cluster_size_max": 2.0,
             "s_min_rel": 0.8, "s_max_rel": 1.3} for e in (1, 2)]
    x, y = F._series(recs, "train_assign_size_max")
    assert list(x) == [1, 2] and list(y) == [2.0, 2.0]
    x, y = F._series(recs, "s_estimate_min")
    assert list(y) == [0.8, 0.8]
    pre = tmp_path / "pretrain"
    pre.mkdir()
    (pre / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    res = F.run({"run": str(tmp_path), "figures": ["training_stats"]}, tmp_path / "figures")
    assert res["figures"] and not res["skipped"]
