"""Mistakes on the command line are ONE stderr line (exit code 2, no traceback) naming the file,
key or value, with a hint: a directory or a binary file as --config, -o naming an existing file,
a YAML syntax error (with line and column), a mistyped stage override (keeping its stage prefix),
a missing --runs directory, and a --data-root without train/ and val/."""
from __future__ import annotations

from pathlib import Path

import pytest

from faultlib import EXCB_BENCH, Proc, assert_one_line_error

KNN = ["backbone.name=resnet18", "data.limit_train=50", "data.limit_val=20", "resize=36", "crop=32", "num_workers=0"]


def _cases(d: Path) -> dict:
    (d / "a_dir").mkdir()
    (d / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (d / "an_existing_file").write_text("not a folder\n")
    # line 3 starts with a tab: YAML cannot start a token with it (line 3, column 1)
    (d / "bad.yaml").write_text("k: [10, 20]\ntemperature: 0.07\n\tcrop: 32\n")
    (d / "empty_root").mkdir()
    return {
        # name: (argv, strings the one line must contain)
        "config_is_dir": (["knn", "--config", str(d / "a_dir"), "-o", str(d / "o1")], [str(d / "a_dir"), "is a directory"]),
        "config_is_binary": (["run-all", "--config", str(d / "binary.yaml"), "-o", str(d / "o2")],
                             [str(d / "binary.yaml"), "not a text file"]),
        "stage_output_is_file": (["knn", "-o", str(d / "an_existing_file"), *KNN],
                                 [str(d / "an_existing_file"), "existing file", "-o"]),
        "run_all_output_is_file": (["run-all", "-o", str(d / "an_existing_file" / "run")],
                                   ["an_existing_file", "existing file"]),
        "pretrain_output_is_file": (["pretrain", "-o", str(d / "an_existing_file")], ["an_existing_file", "existing file"]),
        "yaml_syntax": (["knn", "--config", str(d / "bad.yaml"), "-o", str(d / "o3")],
                        [f"{d / 'bad.yaml'}:3:1:", "not valid YAML"]),
        "stage_override_typo": (["run-all", "-o", str(d / "o4"), "linear.epoch=1"],
                                ["override 'linear.epoch=1'", "unknown key 'linear.epoch'", "did you mean 'linear.epochs'"]),
        "leaderboard_missing_runs": (["leaderboard", "--runs", str(d / "no_such_run"), "-o", str(d / "o5")],
                                     ["--runs", str(d / "no_such_run"), "not found"]),
        "figures_missing_runs": (["figures", "--runs", str(d / "no_such_run"), "-o", str(d / "o6")],
                                 ["--runs", str(d / "no_such_run"), "not found"]),
        "data_root_missing": (["knn", "--data-root", str(d / "no_such_data"), "-o", str(d / "o7"), *KNN[2:]],
                              [str(d / "no_such_data"), "not found", "train/", "val/"]),
        "data_root_without_splits": (["knn", "--data-root", str(d / "empty_root"), "-o", str(d / "o8"), *KNN[2:]],
                                     [str(d / "empty_root"), "has no train/ folder", "val/"]),
    }


@pytest.mark.slow   # > ~15 s on 2 cores; CI runs it (.ci/run: pytest -m slow)
def test_cli_mistakes_are_one_line_errors(tmp_path):
    cases = _cases(tmp_path)
    procs = {name: Proc([*EXCB_BENCH, *argv], tmp_path, tag=name) for name, (argv, _) in cases.items()}
    failures = []
    for name, pr in procs.items():
        pr.wait(180)
        pr._close()
        try:
            assert_one_line_error(pr, *cases[name][1])
        except AssertionError as e:
            failures.append(f"[{name}] {e}")
    assert (tmp_path / "an_existing_file").read_text() == "not a folder\n"
    assert not failures, "\n\n".join(failures)
