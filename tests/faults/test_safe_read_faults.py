"""Every file a run reads back goes through the weights-only reader: a pickle whose ``__reduce__``
would run code, planted as a stage's ``state.pth``, a feature cache, pretraining's
``checkpoint.pth`` or a Detectron2 weights pickle, is refused with ONE stderr line naming the file
and the globals it asks for. The code never runs (its marker file is not created), and the file is
neither renamed to ``.corrupt`` nor replaced by a silent restart from epoch 0."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import List

import pytest
import torch
import torchvision

from faultlib import EXCB_BENCH, assert_one_line_error, pretrain_cmd, run

SMALL = ["data.name=demo", "data.limit_train=200", "data.limit_val=100", "resize=36", "crop=32", "num_workers=0"]
LINEAR = ["linear", *SMALL, "epochs=2", "batch_size=100", "extract_batch_size=100", "mode=cached-features"]
SEMISUP = ["semisup", "--percent", "10", *SMALL, "epochs=2", "batch_size=20", "extract_batch_size=100"]


class _RunsCode:
    """Unpickling this calls exec(): what a malicious file does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


def plant(path: Path, marker: Path, legacy: bool) -> bytes:
    """Replace ``path`` by a payload: a raw (legacy, non-zip) pickle or a zip ``torch.save``."""
    obj = {"epoch": 0, "features": torch.zeros(2, 2), "payload": _RunsCode(marker)}
    if legacy:
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def resnet18_ck(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("ck") / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), p)
    return p


def _assert_refused(pr, planted: Path, payload: bytes, marker: Path) -> None:
    line = assert_one_line_error(pr, str(planted), "builtins.exec", "refusing to load this")
    assert not marker.exists(), f"the planted pickle's code ran: {line}"
    assert planted.read_bytes() == payload, "the planted file was replaced"
    assert not list(planted.parent.glob(planted.name + ".corrupt*")), "the planted file was renamed aside"


@pytest.mark.parametrize("stage,legacy", [("linear", True), ("semisup", False)])
def test_stage_state_with_code_is_refused_on_resume(tmp_path, resnet18_ck, stage, legacy):
    args: List[str] = LINEAR if stage == "linear" else SEMISUP
    out = tmp_path / "out"
    cmd = [*EXCB_BENCH, *args[:1], "--checkpoint", str(resnet18_ck), "-o", str(out), *args[1:], "stop_after_epoch=1"]
    first = run(cmd, tmp_path, timeout=300, tag="first")
    assert first.p.returncode == 0 and (out / "state.pth").exists(), first.report()
    marker = tmp_path / "MARKER"
    payload = plant(out / "state.pth", marker, legacy)
    again = run(cmd, tmp_path, timeout=300, tag="again")
    _assert_refused(again, out / "state.pth", payload, marker)
    assert not (out / "results.json").exists()


def test_feature_cache_with_code_is_refused(tmp_path, resnet18_ck):
    out = tmp_path / "out"
    cmd = [*EXCB_BENCH, "knn", "--checkpoint", str(resnet18_ck), "-o", str(out), *SMALL, "batch_size=100", "k=[5]",
           "headline_k=5"]
    first = run(cmd, tmp_path, timeout=300, tag="first")
    assert first.p.returncode == 0, first.report()
    caches = sorted((out / "features").glob("*.pt"))
    assert len(caches) == 2, caches
    marker = tmp_path / "MARKER"
    payloads = {p: plant(p, marker, legacy=i == 0) for i, p in enumerate(caches)}
    (out / "results.json").unlink()
    again = run(cmd, tmp_path, timeout=300, tag="again")
    line = assert_one_line_error(again, "feature cache", "builtins.exec")
    assert not marker.exists(), f"the planted pickle's code ran: {line}"
    assert any(str(p) in line for p in caches), line
    assert all(p.read_bytes() == b for p, b in payloads.items()), "a planted cache file was replaced"
    assert not (out / "results.json").exists()


@pytest.mark.parametrize("legacy", [True, False])
def test_pretrain_checkpoint_with_code_is_refused(tmp_path, legacy):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "MARKER"
    payload = plant(out / "checkpoint.pth", marker, legacy)
    pr = run(pretrain_cmd(out), tmp_path, timeout=300, tag="pretrain")
    _assert_refused(pr, out / "checkpoint.pth", payload, marker)
    assert not (out / "checkpoint_prev.pth").exists(), "training started over the planted file"
    assert not (out / "results.json").exists()


def test_run_all_resume_refuses_planted_state(tmp_path, resnet18_ck):
    """The pipeline path: run-all resumes an unfinished linear stage whose state.pth was replaced."""
    cfg = tmp_path / "pipe.yaml"
    cfg.write_text(
        "name: t\noutput_dir: run\nseed: 0\ndata: {name: demo, limit_train: 200, limit_val: 100}\n"
        "stages: [linear]\n"
        f"linear: {{checkpoint: {resnet18_ck}, resize: 36, crop: 32, epochs: 2, batch_size: 100, "
        "extract_batch_size: 100, mode: cached-features, num_workers: 0, stop_after_epoch: 1}\n")
    cmd = [*EXCB_BENCH, "run-all", "--config", str(cfg), "-o", str(tmp_path / "run")]
    first = run(cmd, tmp_path, timeout=300, tag="first")
    state = tmp_path / "run" / "linear" / "state.pth"
    assert first.p.returncode == 0 and state.exists(), first.report()
    marker = tmp_path / "MARKER"
    payload = plant(state, marker, legacy=False)
    again = run(cmd, tmp_path, timeout=300, tag="again")
    _assert_refused(again, state, payload, marker)
    assert not (tmp_path / "run" / "linear.prev").exists(), "the unfinished stage was moved aside"


def test_detectron2_weights_pickle_with_code_is_refused(tmp_path):
    """detection reads its converted weights back through the same policy (restricted unpickler)."""
    from excb import ExcbError
    from detection.convert import load_detectron2_pickle, save_detectron2_pickle

    ok = save_detectron2_pickle(tmp_path / "ok.pkl", {"stem.conv1.weight": torch.ones(2, 3)})
    assert torch.equal(torch.as_tensor(load_detectron2_pickle(ok)["model"]["stem.conv1.weight"]), torch.ones(2, 3))
    marker = tmp_path / "MARKER"
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps({"model": {}, "x": _RunsCode(marker)}, protocol=pickle.HIGHEST_PROTOCOL))
    with pytest.raises(ExcbError, match=r"bad\.pkl.*builtins\.exec"):
        load_detectron2_pickle(bad)
    assert not marker.exists()
