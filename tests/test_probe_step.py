"""Dense probes inside training and the checkpoint-wise `probe` step: same numbers, no effect on training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bnflow.config import from_dict, to_plain
from bnflow.data import make_synthetic, save_prepared
from bnflow.errors import DataError
from bnflow.io import RUN_TABLE
from bnflow.probes.checkpoint import probe_cell
from bnflow.train.cell import train_cell
from conftest import tiny_params, data_for

CELLS = ("vgg-noisy_bn-lr0.1", "dln-bn-lr1e-06")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "dataset.npz"
    save_prepared(path, make_synthetic(1, 256, 64))
    return path


def probed_params(tmp_path: Path, every: int = 10, **probe):
    raw = to_plain(tiny_params(tmp_path))
    raw["train"]["probes"]["vgg"].update(every=every, ics_layers=[3, 6], activation_layers=[2, 8])
    raw["train"]["probes"]["dln"].update(every=every, ics_layers=[2, 3], activation_layers=[1, 4])
    raw["probe"]["vgg"].update(ics_layers=[3, 6], activation_layers=[2, 8])
    raw["probe"]["dln"].update(ics_layers=[2, 3], activation_layers=[1, 4])
    raw["probe"]["curvature"].update(enabled=False, eig_iters=10)  # its own test below switches it on
    raw["probe"].update(probe)
    return from_dict(raw)


def train(params, cell, data, root):
    train_cell(params, cell, data_for(cell, data), root / "runs" / cell, root / "ckpt" / cell)


@pytest.mark.parametrize("cell", CELLS)
def test_dense_probes_leave_training_bit_identical(tmp_path, dataset, cell):
    train(probed_params(tmp_path, every=10), cell, dataset, tmp_path / "on")
    train(probed_params(tmp_path, every=0), cell, dataset, tmp_path / "off")
    on = pd.read_csv(tmp_path / "on" / "runs" / cell / "s0" / "metrics.csv.gz")
    off = pd.read_csv(tmp_path / "off" / "runs" / cell / "s0" / "metrics.csv.gz")
    pd.testing.assert_frame_equal(on, off)
    last = sorted((tmp_path / "on" / "ckpt" / cell / "s0").iterdir())[-1].name
    a = torch.load(tmp_path / "on" / "ckpt" / cell / "s0" / last, weights_only=True)
    b = torch.load(tmp_path / "off" / "ckpt" / cell / "s0" / last, weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert all(torch.equal(x, y) for x, y in zip(a["noise_state"], b["noise_state"]))
    assert not (tmp_path / "off" / "runs" / cell / "s0" / "landscape.csv.gz").exists()
    land = pd.read_csv(tmp_path / "on" / "runs" / cell / "s0" / "landscape.csv.gz")
    n_steps = 30 if cell.startswith("vgg") else 40
    assert sorted(land.step.unique()) == list(range(0, n_steps, 10))


@pytest.mark.parametrize("cell", CELLS)
def test_checkpoint_wise_probes_agree_with_dense_ones(tmp_path, dataset, cell):
    params = probed_params(tmp_path, every=10)
    train(params, cell, dataset, tmp_path)
    probe_cell(params, cell, tmp_path / "ckpt" / cell, data_for(cell, dataset), tmp_path / "probes" / cell)
    for table, keys in (("landscape", ["step", "eta"]), ("ics", ["step", "layer"]),
                        ("act_channels", ["step", "layer", "channel"]), ("act_units", ["step", "layer", "unit"])):
        dense = pd.read_csv(tmp_path / "runs" / cell / "s0" / RUN_TABLE.format(table))
        ckpt = pd.read_csv(tmp_path / "probes" / cell / "s0" / f"{table}.csv")
        assert set(ckpt.step) == ({0, 10, 30} if "vgg" in cell else {0, 20, 40})
        both = dense.merge(ckpt, on=keys, suffixes=("_dense", "_ckpt"))
        shared = set(dense.step) & set(ckpt.step)
        assert len(both) == len(dense[dense.step.isin(shared)]) > 0, table
        for col in dense.columns:
            if col not in keys and pd.api.types.is_float_dtype(dense[col]):
                np.testing.assert_allclose(both[f"{col}_ckpt"], both[f"{col}_dense"], rtol=2e-5, atol=1e-6,
                                           err_msg=f"{table}.{col}")


def test_random_directions_are_an_option_of_the_checkpoint_step(tmp_path, dataset):
    params = probed_params(tmp_path, every=0, direction="random")
    train(params, "vgg-bn-lr0.1", dataset, tmp_path)
    probe_cell(params, "vgg-bn-lr0.1", tmp_path / "ckpt" / "vgg-bn-lr0.1", dataset, tmp_path / "rnd")
    grad = probed_params(tmp_path, every=0)
    probe_cell(grad, "vgg-bn-lr0.1", tmp_path / "ckpt" / "vgg-bn-lr0.1", dataset, tmp_path / "grad")
    r = pd.read_csv(tmp_path / "rnd" / "s0" / "landscape.csv")
    g = pd.read_csv(tmp_path / "grad" / "s0" / "landscape.csv")
    assert (r.direction == "random").all() and (g.direction == "gradient").all()
    np.testing.assert_allclose(r.loss0, g.loss0, rtol=1e-6)  # same point, same batch
    assert not np.allclose(r.loss, g.loss)  # another direction
    # ratio = grad_change / (eta * |d|) with |d| = |g|
    np.testing.assert_allclose(r.ratio, r.grad_change / (r.eta * r.grad_norm), rtol=2e-5)  # 6 digits each


def test_checkpoints_of_another_cell_or_other_params_are_refused(tmp_path, dataset):
    params = probed_params(tmp_path, every=0)
    train(params, "vgg-bn-lr0.1", dataset, tmp_path)
    with pytest.raises(DataError, match="not of 'vgg-standard-lr0.1'"):
        probe_cell(params, "vgg-standard-lr0.1", tmp_path / "ckpt" / "vgg-bn-lr0.1", dataset, tmp_path / "p1")
    changed = from_dict(to_plain(params) | {"train": to_plain(params.train) | {
        "norm": to_plain(params.train.norm) | {"eps": 1e-3}}})
    with pytest.raises(DataError, match="trained with other params"):
        probe_cell(changed, "vgg-bn-lr0.1", tmp_path / "ckpt" / "vgg-bn-lr0.1", dataset, tmp_path / "p2")
    bad = tmp_path / "ckpt" / "vgg-bn-lr0.1" / "s0" / "step000010.pt"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DataError, match="not a readable bnflow checkpoint"):
        probe_cell(params, "vgg-bn-lr0.1", tmp_path / "ckpt" / "vgg-bn-lr0.1", dataset, tmp_path / "p3")
    assert not (tmp_path / "p1").exists() and not (tmp_path / "p3").exists()


def test_checkpoint_step_adds_curvature_and_theorem_tables(tmp_path, dataset):
    params = probed_params(tmp_path, every=0, curvature={"enabled": True, "eig_k": 1, "eig_iters": 10,
                                                         "eig_tol": 1e-3, "eig_method": "lanczos",
                                                         "theorem42_channels": 1})
    train(params, "vgg-bn-lr0.1", dataset, tmp_path)
    probe_cell(params, "vgg-bn-lr0.1", tmp_path / "ckpt" / "vgg-bn-lr0.1", dataset, tmp_path / "p",
               full_out=tmp_path / "pf")
    curv = pd.read_csv(tmp_path / "p" / "s0" / "curvature.csv")
    assert list(curv.step) == [0, 10, 30] and np.isfinite(curv.lambda_max).all()
    np.testing.assert_allclose(curv.two_over_lr, 2 / 0.1)
    np.testing.assert_allclose(curv.lr_lambda_max, 0.1 * curv.lambda_max)
    t41 = pd.read_csv(tmp_path / "pf" / "s0" / "theorem41.csv")  # per channel: the DVC-cached full table
    assert set(t41.layer) == set(range(1, 9)) and (t41.rel_gap_exact < 1e-4).all()
    assert not (tmp_path / "p" / "s0" / "theorem41.csv").exists()
    layers = pd.read_csv(tmp_path / "p" / "s0" / "theorem41_layers.csv")  # per layer: what git keeps
    for (step, layer), d in t41.groupby(["step", "layer"]):
        row = layers[(layers.step == step) & (layers.layer == layer)].iloc[0]
        assert row.n_channels == len(d)
        np.testing.assert_allclose([row.reduction_median, row.rel_gap_exact_max],
                                   [d.reduction.median(), d.rel_gap_exact.max()], rtol=2e-5)
    t42 = pd.read_csv(tmp_path / "p" / "s0" / "theorem42.csv")
    assert len(t42) and np.isfinite(t42.lhs).all()
    # without BN there is nothing to check the theorems on, and curvature can be switched off
    off = from_dict(to_plain(params) | {"probe": to_plain(params.probe) | {
        "curvature": to_plain(params.probe.curvature) | {"enabled": False}}})
    probe_cell(off, "vgg-bn-lr0.1", tmp_path / "ckpt" / "vgg-bn-lr0.1", dataset, tmp_path / "q")
    assert not (tmp_path / "q" / "s0" / "curvature.csv").exists()


@pytest.mark.gpu
def test_gpu_probes_match_a_float64_reference_with_tf32_on():
    """PERFORMANCE.md: probes switch TF32 off; on a GPU their gradient changes must match a float64 CPU reference."""
    import copy

    from bnflow.models import build_vgg
    from bnflow.probes.landscape import landscape_probe

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    model = build_vgg("vgg11", "bn", width_mult=0.25, generator=torch.Generator().manual_seed(0))
    x = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(2))

    def loss_fn(m, xb, yb):
        return torch.nn.functional.cross_entropy(m(xb), yb)

    etas = [0.05, 0.1, 0.2, 0.4]
    gpu = landscape_probe(copy.deepcopy(model).cuda().train(), loss_fn, x.cuda(), y.cuda(), etas=etas)
    ref = landscape_probe(copy.deepcopy(model).double().train(), loss_fn, x.double(), y, etas=etas)
    np.testing.assert_allclose(gpu.loss, ref.loss, rtol=1e-4)
    np.testing.assert_allclose(gpu.grad_change, ref.grad_change, rtol=1e-3)


@pytest.mark.parametrize("how", ["missing", "extra", "bitflip"])
def test_a_checkpoint_set_that_differs_from_the_params_is_refused(tmp_path, dataset, how):
    """Issue 13.5: the probe step probed whatever step*.pt files existed, and read a flipped bit as good data."""
    from test_faults import flip_tensor_byte

    cell = "dln-bn-lr1e-06"  # checkpoints at steps 0, 20, 40
    params = probed_params(tmp_path, every=0)
    train(params, cell, dataset, tmp_path)
    folder = tmp_path / "ckpt" / cell / "s0"
    if how == "missing":
        (folder / "step000020.pt").unlink()
        match = r"s0: checkpoints differ from train\.dln\.checkpoint_steps = \[0, 20, 40\]: missing step\(s\) 20"
    elif how == "extra":
        (folder / "step000030.pt").write_bytes((folder / "step000020.pt").read_bytes())
        match = r"s0: checkpoints differ from train\.dln\.checkpoint_steps = \[0, 20, 40\]: extra file\(s\) step000030"
    else:
        flip_tensor_byte(folder / "step000020.pt")
        match = r"step000020\.pt: bnflow checkpoint content differs from the sha256 recorded when it was written"
    with pytest.raises(DataError, match=match + rf".*re-train the cell: `rm -rf .*dvc repro train@{cell}`"):
        probe_cell(params, cell, tmp_path / "ckpt" / cell, data_for(cell, dataset), tmp_path / "probes" / cell)
    assert not (tmp_path / "probes" / cell).exists()


@pytest.mark.gpu
def test_gpu_dense_probes_match_a_float64_reference_with_tf32_on(tmp_path, dataset):
    """Issue 12: the dense path (probes inside the training step) on a GPU with TF32 on, as by default. A step that
    ran in TF32 must not lend its gradient as g or G, so the numbers match a float64 CPU reference within the
    tolerances of the recompute path (test_gpu_probes_match_a_float64_reference_with_tf32_on)."""
    from bnflow.probes.ics import ics_probe, preceding_params_in_blocks
    from bnflow.probes.landscape import landscape_probe
    from bnflow.tasks import VggTask

    cell = "vgg-bn-lr0.01"  # lr 0.01: BN's ICS is of the size of TF32's error (issue 12)
    raw = to_plain(probed_params(tmp_path, every=10))
    raw["train"]["execution"].update(device="cuda", cuda_graphs=False)
    params = from_dict(raw)
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        train(params, cell, dataset, tmp_path)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags
    # the reference: θ_0 (checkpoint step 0) and step 0's batch, everything in float64 on the CPU
    task = VggTask(params.train, params.cell(cell), 0, dataset, torch.device("cpu"))
    task.model.load_state_dict(torch.load(tmp_path / "ckpt" / cell / "s0" / "step000000.pt",
                                          weights_only=True)["state_dict"])
    model = task.model.double().train()
    batch = task.batch(0)
    x, y = batch.x.double(), batch.y

    def loss_fn(m, xb, yb):
        return task.loss(m(xb), yb)

    lr, cfg = params.cell(cell).lr, params.train.probes.vgg
    ref = landscape_probe(model, loss_fn, x, y, etas=[f * lr for f in cfg.eta_factors])
    land = pd.read_csv(tmp_path / "runs" / cell / "s0" / "landscape.csv.gz").query("step == 0").sort_values("eta")
    np.testing.assert_allclose(land.loss, ref.loss, rtol=1e-4)
    np.testing.assert_allclose(land.grad_change, ref.grad_change, rtol=1e-3)
    ref_ics = ics_probe(model, loss_fn, x, y, lr=lr, layers=list(cfg.ics_layers), layer_params=model.layer_params,
                        preceding_params=preceding_params_in_blocks(model, include_norm=True))
    ics = pd.read_csv(tmp_path / "runs" / cell / "s0" / "ics.csv.gz").query("step == 0").sort_values("layer")
    np.testing.assert_allclose(ics.l2, [r.l2 for r in ref_ics], rtol=1e-3)
    np.testing.assert_allclose(ics.rel, [r.rel for r in ref_ics], rtol=1e-3)
