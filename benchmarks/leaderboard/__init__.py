"""Leaderboard: the paper's published rows + rows measured in run directories -> Markdown / LaTeX / CSV.

Two inputs:

* published rows, one YAML file per paper table in ``configs/baselines/`` (``table: <name>``,
  ``rows: [{method, arch, batch, epochs, multi_crop?, protocol, data, metrics: {...}, source}]``);
* measured rows, read from run directories (layout below; every path is a config key)::

      <run>/pretrain/results.json          batch, epochs, arch, multi-crop of "ExCB (ours)"
      <run>/<stage>/results.json           stage in knn, linear, semisup_1, semisup_10, detect
      <run>/sanity_random/<stage>/results.json   random-initialised backbone (sanity row)
      <run>/sanity_pixels/<stage>/results.json   k-NN on raw pixels (sanity row)
      <run>/eval_<name>/<stage>/results.json     third-party checkpoints (``excb-bench eval``);
      <run>/eval_<name>/label.txt | eval.json {"label": ...}   the row's name (else <name>)

Rows are only compared with *comparable* rows: every table is split into sections, one per
(data set, protocol) — published ImageNet/COCO rows never share a section with rows measured
on the demo data. Inside a measured section, cells of one column whose stage protocol differs
(e.g. k-NN with k=20 vs k=10) get variant labels (a), (b) explained in the section notes, and
best (bold) / second best (underlined) are chosen within each variant only. Rows marked
``reference: true`` (the supervised rows) are shown but never ranked.

``build_tables(baseline_rows, measured_rows)`` is pure (dicts in, dicts out) and
``render(table, fmt)`` turns one table into text, so both can be tested cell by cell.
"""
from __future__ import annotations

from excb.config import resolve_config  # noqa: F401  (re-exported: callers resolve DEFAULTS with it)

from benchmarks.leaderboard.cells import format_value
from benchmarks.leaderboard.defaults import DEFAULTS, REPO_ROOT, STAGES
from benchmarks.leaderboard.layouts import LAYOUTS, Column, Layout, latex_escape
from benchmarks.leaderboard.published import baseline_files, default_baselines_dir, load_baselines
from benchmarks.leaderboard.render import RENDERERS, render, render_all
from benchmarks.leaderboard.render_csv import CSV_FIELDS, csv_rows
from benchmarks.leaderboard.rows import collect_measured
from benchmarks.leaderboard.sections import mark_best, protocol_fingerprint
from benchmarks.leaderboard.stage import inputs, main, run
from benchmarks.leaderboard.tables import build_tables
from benchmarks.leaderboard.util import first_present, parse_source

__all__ = ["DEFAULTS", "REPO_ROOT", "STAGES", "LAYOUTS", "Column", "Layout", "CSV_FIELDS", "RENDERERS",
           "baseline_files", "build_tables", "collect_measured", "csv_rows", "default_baselines_dir",
           "first_present", "format_value", "inputs", "latex_escape", "load_baselines", "main", "mark_best",
           "parse_source", "protocol_fingerprint", "render", "render_all", "resolve_config", "run"]
