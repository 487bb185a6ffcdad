"""Bad checkpoints handed to a stage on the command line: each is ONE stderr line that names the
file and lists what did not match; a pickle that would run code is refused (and its code never
runs) unless ``--trust-checkpoint`` is given."""
from __future__ import annotations

import importlib
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from faultlib import EXCB_BENCH, Proc, assert_one_line_error, base_env, read_json, run

TINY_KNN = ["data.name=demo", "data.limit_train=100", "data.limit_val=50", "resize=36", "crop=32", "batch_size=50",
            "num_workers=0", "k=[5,20]"]


class _RunsCode:
    """Unpickling this calls exec(): what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


def _resnet18_sd() -> dict:
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("ckpts")
    sd = _resnet18_sd()
    files = {}
    partial = {k: v for k, v in sd.items() if not k.startswith("layer4.")}
    torch.save(partial, d / "partial.pth"); files["partial"] = d / "partial.pth"
    torch.save({"model": {"encoder.stem.weight": torch.zeros(8, 3, 3, 3), "encoder.blocks.0.w": torch.zeros(8)},
                "step": 1000}, d / "unknown_layout.pth"); files["unknown_layout"] = d / "unknown_layout.pth"
    (d / "notes.pth").write_text("not a checkpoint\n" * 100); files["text"] = d / "notes.pth"
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "JPEG")
    (d / "photo.pth").write_bytes(buf.getvalue()); files["jpeg"] = d / "photo.pth"
    torch.save(sd, d / "resnet18.pth"); files["resnet18"] = d / "resnet18.pth"
    torch.save([1, 2, 3], d / "list.pth"); files["list"] = d / "list.pth"
    marker = d / "PWNED"
    torch.save({"state_dict": sd, "payload": _RunsCode(marker)}, d / "evil.pth"); files["evil"] = d / "evil.pth"
    files["marker"] = marker
    # a checkpoint holding an instance of a user's own class (e.g. a Lightning-style run record)
    (d / "mylab_records.py").write_text("class RunRecord:\n    def __init__(self):\n        self.note = 'run 7'\n")
    sys.path.insert(0, str(d))
    try:
        mod = importlib.import_module("mylab_records")
        torch.save({"state_dict": sd, "record": mod.RunRecord()}, d / "custom.pth"); files["custom"] = d / "custom.pth"
    finally:
        sys.path.remove(str(d))
        sys.modules.pop("mylab_records", None)
    files["dir"] = d
    return files


CASES = {
    # name: (file key, extra args, strings the one line must contain)
    "partial": ("partial", [], ["partial.pth", "layer4"]),
    "unknown_layout": ("unknown_layout", [], ["unknown_layout.pth", "model", "--format"]),
    "text_file": ("text", [], ["notes.pth", "not a readable PyTorch checkpoint"]),
    "jpeg_file": ("jpeg", [], ["photo.pth", "not a readable PyTorch checkpoint"]),
    "not_a_dict": ("list", [], ["list.pth", "list"]),
    "other_arch": ("resnet18", ["arch=resnet50"], ["resnet18.pth", "resnet18", "resnet50"]),
    "wrong_format": ("resnet18", ["--format", "mocov3"], ["resnet18.pth", "mocov3", "torchvision"]),
    "code_in_pickle": ("evil", [], ["evil.pth", "exec", "--trust-checkpoint"]),
    "custom_class": ("custom", [], ["custom.pth", "mylab_records.RunRecord", "--trust-checkpoint"]),
}


@pytest.mark.slow   # > ~15 s on 2 cores; CI runs it (.ci/run: pytest -m slow)
def test_bad_checkpoints_are_one_line_errors(tmp_path, bad_files):
    procs = {}
    for name, (key, extra, _) in CASES.items():
        d = tmp_path / name
        d.mkdir()
        procs[name] = Proc([*EXCB_BENCH, "knn", "--checkpoint", str(bad_files[key]), "-o", str(d / "out"), *extra,
                            *TINY_KNN], d, tag=name)
    failures = []
    for name, pr in procs.items():
        pr.wait(180)
        pr._close()
        try:
            assert_one_line_error(pr, *CASES[name][2])
            assert not (tmp_path / name / "out" / "results.json").exists()
        except AssertionError as e:
            failures.append(f"[{name}] {e}")
    assert not bad_files["marker"].exists(), "the pickle's code ran without --trust-checkpoint"
    assert not failures, "\n\n".join(failures)


def test_trust_checkpoint_allows_a_custom_class(tmp_path, bad_files):
    """With --trust-checkpoint (and the class importable) the same file loads and the stage runs."""
    env = base_env()
    env["PYTHONPATH"] = str(bad_files["dir"]) + ":" + env["PYTHONPATH"]
    out = tmp_path / "out"
    pr = run([*EXCB_BENCH, "knn", "--checkpoint", str(bad_files["custom"]), "--trust-checkpoint", "-o", str(out),
              *TINY_KNN], tmp_path, env=env, timeout=240, tag="trusted")
    assert pr.p.returncode == 0, pr.report()
    res = read_json(out / "results.json")
    assert res["checkpoint"]["path"] == str(bad_files["custom"])
    # the same weights saved as a plain state dict must give exactly the same numbers: the trusted
    # file's state_dict was really loaded (not a random init, not a partial load)
    plain = run([*EXCB_BENCH, "knn", "--checkpoint", str(bad_files["resnet18"]), "-o", str(tmp_path / "plain"),
                 *TINY_KNN], tmp_path, timeout=240, tag="plain")
    assert plain.p.returncode == 0, plain.report()
    ref = read_json(tmp_path / "plain" / "results.json")
    assert res["checkpoint"]["sha256"] != ref["checkpoint"]["sha256"]
    assert res["metrics"] == ref["metrics"]
    random_init = run([*EXCB_BENCH, "knn", "-o", str(tmp_path / "random"), "backbone.name=resnet18", "seed=1",
                       *TINY_KNN], tmp_path, timeout=240, tag="random")
    assert random_init.p.returncode == 0, random_init.report()
    assert read_json(tmp_path / "random" / "results.json")["metrics"] != res["metrics"], "the metrics must depend on the weights"
