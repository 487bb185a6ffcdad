"""Pretraining configs: every mistake is a one-line ExcbError naming the key; the recipes resolve."""
from __future__ import annotations

from pathlib import Path

import pytest

from tiny_helpers import make_tiny_config
from excb import ExcbError
from excb.config import resolve_config
from excb.train import PRETRAIN_DEFAULTS, train, validate_config

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "configs" / "pretrain").glob("*.yaml"))


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


def test_unknown_key_suggests_nearest():
    with pytest.raises(ExcbError) as e:
        resolve_config(PRETRAIN_DEFAULTS, None, ["optim.lrr=0.1"])
    msg = _one_line(e)
    assert "optim.lrr" in msg and "did you mean 'optim.lr'" in msg


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("balancer:\n  nmae: excb\n")
    with pytest.raises(ExcbError) as e:
        resolve_config(PRETRAIN_DEFAULTS, p)
    msg = _one_line(e)
    assert str(p) in msg and "balancer.nmae" in msg and "balancer.name" in msg


def test_wrong_type():
    with pytest.raises(ExcbError) as e:
        resolve_config(PRETRAIN_DEFAULTS, None, ["batch_size=large"])
    msg = _one_line(e)
    assert "batch_size" in msg and "int" in msg and "large" in msg
    with pytest.raises(ExcbError, match="centroids"):
        resolve_config(PRETRAIN_DEFAULTS, None, ["centroids=5"])


@pytest.mark.parametrize("override,key", [("batch_size", "batch_size"), ("epochs", "epochs"),
                                          ("centroids.K", "centroids.K"), ("loss.teacher_temp", "loss.teacher_temp")])
def test_non_positive_values_refused(override, key):
    cfg = make_tiny_config(**{override: -4})
    with pytest.raises(ExcbError) as e:
        validate_config(cfg)
    assert key in _one_line(e)


def test_negative_batch_refused_by_train(tmp_path):
    with pytest.raises(ExcbError) as e:
        train(make_tiny_config(batch_size=-64), tmp_path)
    assert "batch_size" in _one_line(e)
    assert not (tmp_path / "checkpoint.pth").exists()


# K larger than the training set is a warning, not an error: tests/unit/test_budget.py, tests/integration/test_owndata_budget.py


def test_batch_larger_than_data(tmp_path):
    with pytest.raises(ExcbError) as e:
        train(make_tiny_config(batch_size=512, **{"centroids.K": 16}), tmp_path)
    assert "batch_size" in _one_line(e)


def test_unknown_balancer_and_recipe(tmp_path):
    with pytest.raises(ExcbError) as e:
        validate_config(make_tiny_config(recipe="offical-code"))
    assert "recipe" in _one_line(e)
    with pytest.raises(ExcbError) as e:
        train(make_tiny_config(**{"balancer.name": "sinkorn"}), tmp_path)
    assert "sinkorn" in _one_line(e)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_resolves(path):
    cfg = resolve_config(PRETRAIN_DEFAULTS, path)
    validate_config(cfg, str(path))


def test_paper_recipes_values():
    byname = {p.stem: resolve_config(PRETRAIN_DEFAULTS, p) for p in RECIPES}
    for name in ("r50_mc_100ep", "r50_mc_200ep", "r50_mc_400ep", "r50_nomc_100ep", "vit_s16_800ep"):
        assert name in byname, name
    for name, cfg in byname.items():
        if name == "demo" or name.startswith("own_"):   # CPU demo; own-data presets (test_owndata_presets.py)
            continue
        assert cfg["batch_size"] == 1024 and cfg["centroids"]["K"] == 65536, name
        assert cfg["loss"]["teacher_temp"] == 0.04 and cfg["loss"]["student_temp"] == 0.1
        assert cfg["balancer"]["momentum"] == 0.999 and cfg["ema"]["momentum"] == 0.996
    r50 = byname["r50_mc_400ep"]
    assert r50["epochs"] == 400 and r50["backbone"]["name"] == "resnet50"
    assert r50["augment"]["n_local"] == 6 and r50["augment"]["global_size"] == 224
    assert r50["augment"]["global_scale"] == [0.2, 1.0] and r50["augment"]["local_scale"] == [0.05, 0.2]
    assert r50["optim"]["name"] == "sgd" and r50["optim"]["lr"] == 0.15 and r50["optim"]["weight_decay"] == 1e-4
    assert byname["r50_nomc_100ep"]["augment"]["n_local"] == 0
    assert byname["r50_nomc_100ep"]["augment"]["global_scale"] == [0.14, 1.0]
    assert byname["vit_s16_800ep"]["optim"]["name"] == "adamw" and byname["vit_s16_800ep"]["epochs"] == 800
    assert byname["r50_official_code"]["recipe"] == "official-code"
