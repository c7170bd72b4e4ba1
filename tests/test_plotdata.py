"""The `dvc plots` data: per-cell across-seed means, thinned, with a blown-up probe as inf (bnflow.plotdata)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bnflow.plotdata import cell_curves, publish_plot_data


def tables() -> dict[str, pd.DataFrame]:
    steps = [0, 50, 100, 150]
    metrics = pd.DataFrame([{"cell": "c", "seed": s, "step": t, "split": "train", "loss": 10.0 - t / 50 + s,
                             "acc": None} for s in (0, 1) for t in steps])
    land = []
    for s in (0, 1):
        for t in (0, 50, 100):
            for eta, loss in ((1.0, 2.0), (2.0, 8.0)):
                land.append({"cell": "c", "seed": s, "step": t, "eta": eta, "loss": loss * (s + 1),
                             "grad_change": eta * (s + 1), "ratio": 3.0 + s})
    land = pd.DataFrame(land)
    land.loc[(land.seed == 1) & (land.step == 100) & (land.eta == 2.0), "loss"] = float("nan")  # a blow-up
    return {"metrics": metrics, "landscape": land}


def test_curves_are_the_across_seed_means_by_hand():
    out = cell_curves(tables(), "c", "dln", every=50)
    loss = out["train_loss"].set_index("step").loss
    assert loss[0] == 10.5 and loss[50] == 9.5  # mean of seed 0 (10, 9) and seed 1 (11, 10)
    band = out["loss_band"].set_index("step").loss_band
    assert band[0] == 4.0  # max/min over eta is 4 for both seeds
    beta = out["beta_eff"].set_index("step").beta_eff
    assert beta[0] == 3.5
    assert "train_acc" not in out  # the DLN has no accuracy


def test_a_blown_up_probe_is_inf_never_skipped():
    out = cell_curves(tables(), "c", "dln", every=50)
    for name in ("loss_band", "grad_change", "beta_eff"):
        assert math.isinf(out[name].set_index("step")[name][100]), name


def test_thinning_keeps_every_nth_step_and_the_last(tmp_path):
    out = cell_curves(tables(), "c", "dln", every=100)
    assert list(out["train_loss"].step) == [0, 100, 150]
    runs = pd.DataFrame({"cell": ["c"], "model": ["dln"]})
    written = publish_plot_data(tables(), runs, tmp_path / "plots")
    assert sorted(p.relative_to(tmp_path / "plots").as_posix() for p in written) == [
        "beta_eff/c.csv", "grad_change/c.csv", "loss_band/c.csv", "train_loss/c.csv"]
    again = pd.read_csv(tmp_path / "plots" / "train_loss" / "c.csv")
    assert np.allclose(again.loss, cell_curves(tables(), "c", "dln")["train_loss"].loss)
