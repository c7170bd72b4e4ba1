"""The lr scan: trainability of short runs and the threshold logic, on hand-made tables and a tiny real scan."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bnflow.config import from_dict, to_plain
from bnflow.data.dln import save_problems
from bnflow.errors import ConfigError
from bnflow.data import make_synthetic, save_prepared
from bnflow.lrscan import is_trainable, scan_lrs, thresholds
from conftest import tiny_params


def test_trainable_means_finite_and_clearly_below_the_start():
    assert is_trainable([2.0] * 9 + [1.0], False, 0.9) == (2.0, 1.0, True)
    assert not is_trainable([2.0] * 10, False, 0.9)[2]  # did not learn
    assert not is_trainable([2.0, 1.0], True, 0.9)[2]  # diverged
    assert not is_trainable([], False, 0.9)[2]


def test_threshold_is_the_last_trainable_lr_before_the_first_failure():
    scan = pd.DataFrame({"model": "vgg", "variant": "bn", "seed": 0, "lr": [0.1, 1.0, 10.0, 0.01],
                         "trainable": [True, False, True, True]})
    t = thresholds(scan).iloc[0]
    assert t.max_trainable_lr == 0.1 and t.first_failing_lr == 1.0  # the lucky 10.0 after a failure is ignored
    never = thresholds(scan.assign(trainable=False)).iloc[0]
    assert math.isnan(never.max_trainable_lr) and never.first_failing_lr == 0.01
    always = thresholds(scan.assign(trainable=True)).iloc[0]
    assert always.max_trainable_lr == 10.0 and math.isnan(always.first_failing_lr)


def test_a_tiny_scan_separates_a_sane_lr_from_a_diverging_one(tmp_path):
    data = tmp_path / "d.npz"
    save_prepared(data, make_synthetic(0, 256, 64))
    raw = to_plain(tiny_params(tmp_path))
    raw["lrscan"] = {"models": ["vgg", "dln"], "vgg": {"variants": ["bn"], "lrs": [0.05, 1000.0], "steps": 30},
                     "dln": {"variants": ["standard"], "lrs": [1e-6, 1.0], "steps": 20}, "seeds": 1,
                     "loss_fraction": 0.9}
    params = from_dict(raw)
    dln_data = tmp_path / "dln.npz"
    save_problems(dln_data, 0, params.train.seeds.indices("dln"), params.train.dln.n_samples, params.train.dln.dim)
    vgg = scan_lrs(params, "vgg", data, tmp_path / "scan" / "vgg")  # one model per call: one job per model
    dln = scan_lrs(params, "dln", dln_data, tmp_path / "scan" / "dln")
    assert set(vgg.model) == {"vgg"} and set(dln.model) == {"dln"}
    got = pd.concat([vgg, dln]).set_index(["model", "lr"]).trainable.to_dict()
    assert got[("vgg", 0.05)] and not got[("vgg", 1000.0)]
    assert not got[("dln", 1.0)]
    limits = pd.read_csv(tmp_path / "scan" / "vgg" / "thresholds.csv").set_index("model")
    assert limits.loc["vgg", "max_trainable_lr"] == 0.05 and limits.loc["vgg", "first_failing_lr"] == 1000.0
    for model in ("vgg", "dln"):
        assert (tmp_path / "scan" / model / "summary.json").exists()
        assert (tmp_path / "scan" / model / "provenance.json").exists()
    with pytest.raises(ConfigError, match="--model 'resnet'"):
        scan_lrs(params, "resnet", data, tmp_path / "scan" / "resnet")
