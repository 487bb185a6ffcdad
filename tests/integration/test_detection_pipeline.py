"""The detect stage inside the pipeline: without Detectron2 it is recorded as skipped (with the
install hint), not failed; the demo pipeline's detect section resolves against DEFAULTS."""
from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _hide_detectron2(monkeypatch):
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "detectron2" or name.startswith("detectron2."):
            raise ImportError(f"No module named '{name}'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)


def test_demo_pipeline_marks_detect_skipped_without_detectron2(tmp_path, monkeypatch):
    from excb_bench.pipeline import resolve_pipeline, run_pipeline

    cfg = resolve_pipeline(REPO / "configs" / "pipelines" / "demo.yaml")
    assert cfg["detect"]["smoke"] is True and cfg["detect"]["dataset"] == "synthetic"
    _hide_detectron2(monkeypatch)
    statuses = run_pipeline(cfg, tmp_path / "run", only=["detect"])
    assert statuses == {"detect": "skipped"}
    entry = json.loads((tmp_path / "run" / "manifest.json").read_text())
    entry = entry.get("stages", entry).get("detect", entry)
    assert "detectron2.readthedocs.io" in json.dumps(entry)
    assert not (tmp_path / "run" / "detect" / "results.json").exists()
