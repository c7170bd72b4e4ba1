"""Packed execution (issue 16): S seeds trained as one grouped model give each seed its separate run's numbers and
outputs (metrics, checkpoints, probes, divergence, resume).

Tolerances. Packing changes only the order of float summations (grouped convs, the batched head, per-seed losses).
This tiny VGG-11 at batch 8 is chaotic, however: in a *separate* float32 run a 1e-7 relative perturbation of the
initial weights moves the loss by ~1e-2 within 15 steps (measured while writing these tests), so float32 trajectories
of tens of steps cannot tell reassociation from a bug. The training equivalence is therefore checked in float64,
where reassociation is ~1e-16 per operation and stays below ~1e-7 of the weights after 20 steps even amplified, and
a real mismatch (a wrong slice, statistics shared across seeds, noise from the wrong generator) shows as >= 1e-3.
Forward passes, which do not amplify, are checked in float32 at the training precision.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch

from bnflow.config import Cell
from bnflow.data import make_synthetic, save_prepared
from bnflow.io import RUN_TABLE
from bnflow.models import build_vgg, set_noise_generator
from bnflow.models.packed import (PackingError, pack_inputs, pack_state, pack_vgg, packed_losses, unpack_state,
                                  zero_seed)
from bnflow.probes.checkpoint import checkpoint_name, load_checkpoint
from bnflow.probes.runner import Prober, ProbePlan
from bnflow.results import TABLES
from bnflow.tasks import VggTask
from bnflow.train.cell import loop_config, train_cell, write_run
from bnflow.train.loop import train_loop
from bnflow.train.packed import RESUME_FILE, PackedBatches, train_packed
from bnflow.train.packed_cell import VGG_FAMILIES, packed_plan, train_cell_packed
from bnflow.vocab import VARIANTS
from conftest import tiny_params

SEEDS = (0, 1)
LR = 0.02  # at lr 0.1 this batch-8 net's loss grows and amplifies float64 rounding to 1e-6 within 20 steps
F64_LOSS_RTOL = 1e-6  # metrics hold losses as float32 (6e-8 relative); float64 training differs by < 1e-8
F64_STATE_RTOL = 1e-6  # global relative difference of weights + buffers after 20 float64 steps (see module doc)
# Probe tables: single units' quantiles pass through batch statistics of 8 values, which turn the ~1e-9 weight
# difference at step 15 into up to 1e-5 relative (measured); a BN channel's mean cancels to ~0 and keeps an absolute
# ~1e-9. A wrong batch, noise draw or weight slice shows as >= 1e-2.
PROBE_RTOL, PROBE_ATOL = 1e-4, 1e-7
F32_FORWARD_RTOL = 2e-5  # one float32 forward: grouped vs single convs differ by reassociation (~1e-6 seen)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One CPU thread: the 2 cores are shared, and more OpenMP threads than free cores stall each other (>10x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "dataset.npz"
    save_prepared(path, make_synthetic(0, 256, 64))
    return path


@pytest.fixture
def params(tmp_path):
    return tiny_params(tmp_path, vgg={"batch_size": 8, "steps": 20, "log_every": 1, "eval_every": 10,
                                      "checkpoint_steps": [0, 10, 20]})


def cell_of(variant: str) -> Cell:
    return Cell(model="vgg", variant=variant, lr=LR)


def make_task(params, variant: str, seed: int, data: Path, dtype=torch.float64) -> VggTask:
    task = VggTask(params.train, cell_of(variant), seed, data, torch.device("cpu"))
    if dtype == torch.float64:
        task.model.double()
        task.normalise = lambda x, t=task: VggTask.normalise(t, x).double()  # batches and test sets alike
    return task


def meta(params, variant: str, seed: int) -> dict:
    return {"cell": cell_of(variant).id, "seed": seed, "fingerprint": f"fp{seed}", "variant": variant}


def separate(params, variant, data, root: Path, *, probe_every=0, dtype=torch.float64, poke=None):
    """Each seed trained alone by train_loop: [(outcome, final state, checkpoint folder)]."""
    cell = cell_of(variant)
    out = []
    for seed in SEEDS:
        task = make_task(params, variant, seed, data, dtype)
        if poke is not None:
            poke(seed, task.model)
        folder = root / f"sep{seed}"
        folder.mkdir(parents=True)
        prober = probe_plan_prober(params, task, seed) if probe_every else None
        outcome = train_loop(task, loop_config(params.train, cell, seed), folder, folder,
                             meta(params, variant, seed), f"fp{seed}", prober, probe_every)
        out.append((outcome, {k: v.clone() for k, v in task.model.state_dict().items()}, folder))
    return out


def packed(params, variant, data, root: Path, *, probe_every=0, dtype=torch.float64, poke=None, **kw):
    """The same seeds trained packed: (outcomes, tasks, checkpoint folders)."""
    cell = cell_of(variant)
    tasks = [make_task(params, variant, seed, data, dtype) for seed in SEEDS]
    if poke is not None:
        for seed, t in zip(SEEDS, tasks):
            poke(seed, t.model)
    dirs = [root / f"pk{seed}" for seed in SEEDS]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    probers = [probe_plan_prober(params, t, seed) for seed, t in zip(SEEDS, tasks)] if probe_every else None
    outcomes = train_packed(tasks, loop_config(params.train, cell, 0), root, dirs,
                            [meta(params, variant, s) for s in SEEDS], "packed-fp", probers, probe_every, **kw)
    return outcomes, tasks, dirs


def probe_plan_prober(params, task, seed) -> Prober:
    plan = ProbePlan.build(params.train.probes.vgg, params.train.probes, LR)
    return Prober.for_task(plan, task, base=params.train.seeds.base, seed=seed)


def rel_diff(a: dict, b: dict) -> float:
    """‖a − b‖ / ‖b‖ over every floating tensor of two state_dicts with the same keys."""
    assert list(a) == list(b)
    num = sum(float((a[k].double() - b[k].double()).square().sum()) for k in b if b[k].is_floating_point())
    den = sum(float(b[k].double().square().sum()) for k in b if b[k].is_floating_point())
    return (num / den) ** 0.5


def assert_rows_close(got: list[dict], want: list[dict], rtol: float, atol: float = 1e-12,
                      exact=("step", "split", "layer", "channel", "unit", "eta", "direction")) -> None:
    assert len(got) == len(want)
    g, w = pd.DataFrame(got), pd.DataFrame(want)
    assert list(g.columns) == list(w.columns)
    for c in w.columns:
        if c in exact or w[c].dtype == object:
            assert g[c].tolist() == w[c].tolist(), c
        else:
            pd.testing.assert_series_equal(g[c].astype(float), w[c].astype(float), rtol=rtol, atol=atol,
                                           check_names=False, obj=c)


# ------------------------------------------------------------------------------------------------- the packed model
@pytest.mark.parametrize("variant", VARIANTS)
def test_pack_then_unpack_gives_each_seed_its_exact_state(variant):
    models = [build_vgg("vgg11", variant, width_mult=0.125, generator=torch.Generator().manual_seed(s))
              for s in range(3)]
    with torch.no_grad():  # distinct buffers per seed, so a slice mix-up shows
        for s, m in enumerate(models):
            for name, b in m.named_buffers():
                if b.is_floating_point():
                    b.add_(s + 0.5)
    packed_model = pack_vgg(models)
    state = packed_model.state_dict()
    for s, m in enumerate(models):
        single = unpack_state(state, s, 3)
        assert list(single) == list(m.state_dict())
        for k, v in m.state_dict().items():
            assert single[k].shape == v.shape and torch.equal(single[k], v), k
    other = build_vgg("vgg11", variant, width_mult=0.25, generator=torch.Generator())
    with pytest.raises(PackingError, match="shapes differ"):
        pack_state([models[0].state_dict(), other.state_dict()])


@pytest.mark.parametrize("variant", VARIANTS)
def test_packed_forward_in_float32_matches_each_seed(variant):
    models = [build_vgg("vgg11", variant, width_mult=0.125, generator=torch.Generator().manual_seed(s))
              for s in range(3)]
    packed_model = pack_vgg(models)
    if "noisy" in variant:  # each seed's noise from its own generator, the packed copy starting where it starts
        gens = [torch.Generator().manual_seed(100 + s) for s in range(3)]
        for m, g in zip(models, gens):
            set_noise_generator(m, g)
        packed_model.set_noise_generators([torch.Generator().manual_seed(100 + s) for s in range(3)])
    xs = [torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(10 + s)) for s in range(3)]
    ys = [torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(20 + s)) for s in range(3)]
    out = packed_model(pack_inputs(xs))
    losses = packed_losses(out, torch.stack(ys, dim=1))
    for s, m in enumerate(models):
        logits = m(xs[s])
        torch.testing.assert_close(out[:, s], logits, rtol=F32_FORWARD_RTOL, atol=1e-5)
        torch.testing.assert_close(losses[s], torch.nn.functional.cross_entropy(logits, ys[s]),
                                   rtol=F32_FORWARD_RTOL, atol=0)


def test_packed_batches_are_each_seeds_own_batch(params, dataset):
    tasks = [make_task(params, "bn", s, dataset, torch.float32) for s in SEEDS]
    batches = PackedBatches(tasks, channels_last=False)
    for step in (0, 31, 40):  # 32 steps per epoch at batch 8: crosses an epoch
        x, y = batches(step)
        for i, t in enumerate(tasks):
            b = t.batch(step)
            assert torch.equal(x[:, 3 * i:3 * i + 3], b.x) and torch.equal(y[:, i], b.y)


@pytest.mark.parametrize("variant", ["bn", "weight_norm"])
def test_zero_seed_silences_only_that_seed(variant):
    models = [build_vgg("vgg11", variant, width_mult=0.125, generator=torch.Generator().manual_seed(s))
              for s in range(3)]
    packed_model = pack_vgg(models)
    before = {k: v.clone() for k, v in packed_model.state_dict().items()}
    zero_seed(packed_model, 1, 3)
    after = packed_model.state_dict()
    for s in (0, 2):
        for k, v in unpack_state(after, s, 3).items():
            assert torch.equal(v, unpack_state(before, s, 3)[k])
    # seed 1 computes exactly zero logits (weight_norm too: its direction v stays finite, its gain g is 0)
    x = torch.randn(8, 9, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(packed_model(x)[:, 1], torch.zeros(8, 10))


# ------------------------------------------------------------------------------------ training: packed == separate
@pytest.mark.parametrize("variant", VARIANTS)
def test_packed_training_matches_separate_runs(params, dataset, tmp_path, variant):
    runs = separate(params, variant, dataset, tmp_path / "sep")
    outcomes, tasks, dirs = packed(params, variant, dataset, tmp_path / "pk")
    packed_state = None
    for i, (want, state, folder) in enumerate(runs):
        got = outcomes[i]
        assert (got.diverged, got.n_steps) == (False, 20)
        assert_rows_close(got.tables["metrics"], want.tables["metrics"], F64_LOSS_RTOL)
        # the final weights: the task's single-model view holds θ_20 (the last test evaluation unpacked it)
        assert rel_diff(tasks[i].model.state_dict(), state) < F64_STATE_RTOL
        # checkpoints: the same files, format, meta and noise state as a separate run's; weights equal
        assert sorted(p.name for p in dirs[i].glob("step*.pt")) == sorted(p.name for p in folder.glob("step*.pt"))
        for step in (0, 10, 20):
            a, b = (load_checkpoint(d / checkpoint_name(step), cell_id=cell_of(variant).id, seed=SEEDS[i],
                                    fingerprint=f"fp{SEEDS[i]}") for d in (dirs[i], folder))
            assert set(a) == set(b) and a["meta"] == b["meta"] and a["step"] == b["step"] == step
            assert [torch.equal(x, y) for x, y in zip(a["noise_state"], b["noise_state"])] == [True] * len(
                b["noise_state"])  # the same draws so far, from the same stream
            assert {k: v.shape for k, v in a["state_dict"].items()} == {k: v.shape for k, v in b["state_dict"].items()}
            assert rel_diff(a["state_dict"], b["state_dict"]) < F64_STATE_RTOL
        packed_state = state
    assert packed_state is not None


@pytest.mark.parametrize("variant", ["bn", "noisy_bn", "l1"])
def test_packed_probe_tables_match_separate_ones(params, dataset, tmp_path, variant):
    # separate runs lend the training step's g and activations; packed runs recompute them on the unpacked seed
    runs = separate(params, variant, dataset, tmp_path / "sep", probe_every=5)
    outcomes, _, _ = packed(params, variant, dataset, tmp_path / "pk", probe_every=5)
    for i, (want, _, _) in enumerate(runs):
        names = sorted(n for n in want.tables if n != "metrics")
        assert names == ["act_channels", "act_units", "ics", "landscape"]
        assert sorted(n for n in outcomes[i].tables if n != "metrics") == names
        for name in names:
            assert {r["step"] for r in want.tables[name]} == {0, 5, 10, 15}
            assert_rows_close(outcomes[i].tables[name], want.tables[name], PROBE_RTOL, atol=PROBE_ATOL)


def test_a_diverging_seed_stops_alone(params, dataset, tmp_path):
    def poke(seed, model):  # seed 1's head blows up within a few steps; seed 0 is untouched
        if seed == 1:
            with torch.no_grad():
                model.classifier.weight.mul_(1e30)  # loss ~1e29 at step 0, non-finite at step 1

    params = tiny_params(tmp_path, vgg={"batch_size": 8, "steps": 20, "log_every": 1, "eval_every": 10,
                                        "checkpoint_steps": [0, 3, 10, 20]})
    runs = separate(params, "standard", dataset, tmp_path / "sep", poke=poke)
    outcomes, tasks, dirs = packed(params, "standard", dataset, tmp_path / "pk", poke=poke)
    blown, calm = runs[1][0], runs[0][0]
    assert blown.diverged and 0 < blown.diverged_at_step < 7  # before the first host sync (sync_every 7)
    assert (outcomes[1].diverged, outcomes[1].diverged_at_step, outcomes[1].n_steps) == (
        True, blown.diverged_at_step, blown.diverged_at_step)
    assert_rows_close(outcomes[1].tables["metrics"], blown.tables["metrics"], F64_LOSS_RTOL)
    # the blown-up seed keeps only checkpoints up to its divergence; the other trains on as if alone
    assert sorted(p.name for p in dirs[1].glob("step*.pt")) == [checkpoint_name(0)]
    assert (outcomes[0].diverged, outcomes[0].n_steps) == (False, 20)
    assert_rows_close(outcomes[0].tables["metrics"], calm.tables["metrics"], F64_LOSS_RTOL)
    assert rel_diff(tasks[0].model.state_dict(), runs[0][1]) < F64_STATE_RTOL
    assert sorted(p.name for p in dirs[0].glob("step*.pt")) == [checkpoint_name(s) for s in (0, 3, 10, 20)]


def test_packed_run_resumes_after_a_kill_bit_identically(params, dataset, tmp_path):
    params = tiny_params(tmp_path, vgg={"batch_size": 8, "steps": 20, "log_every": 1, "eval_every": 10,
                                        "checkpoint_steps": [0, 10, 20]}, execution={"resume_every_s": 0})
    whole, whole_tasks, whole_dirs = packed(params, "noisy_bn", dataset, tmp_path / "whole", dtype=torch.float32)

    class Killed(Exception):
        pass

    def kill(t):
        if t == 12:  # after the resume state of step 7, before the one of step 14
            raise Killed

    with pytest.raises(Killed):
        packed(params, "noisy_bn", dataset, tmp_path / "cut", dtype=torch.float32, before_step=kill)
    assert (tmp_path / "cut" / RESUME_FILE).exists()
    resumed, tasks, dirs = packed(params, "noisy_bn", dataset, tmp_path / "cut", dtype=torch.float32)
    for a, b in zip(resumed, whole):
        assert a.resumed_from == 7 and a.tables == b.tables  # bit-identical on CPU
    for a, b in zip(dirs, whole_dirs):
        for step in (0, 10, 20):
            ca, cb = (torch.load(d / checkpoint_name(step), weights_only=True) for d in (a, b))
            assert all(torch.equal(ca["state_dict"][k], cb["state_dict"][k]) for k in cb["state_dict"])


def test_a_damaged_resume_state_is_set_aside(params, dataset, tmp_path, caplog):
    root = tmp_path / "pk"
    root.mkdir()
    (root / RESUME_FILE).write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="bnflow.train"):
        outcomes, _, _ = packed(params, "bn", dataset, root, dtype=torch.float32)
    assert "set aside" in caplog.text and (root / (RESUME_FILE + ".bad")).exists()
    assert all(o.n_steps == 20 and o.resumed_from is None for o in outcomes)


# ------------------------------------------------------------------------------------- a packed cell's run folders
def test_packed_cell_writes_the_run_folders_a_separate_cell_writes(tmp_path, dataset):
    # float32 and the standard variant, whose trajectories do not amplify rounding (2e-7 after 30 steps, measured)
    overrides = {"seeds": {"n": 2}, "vgg": {"batch_size": 8, "steps": 20, "log_every": 5, "eval_every": 10,
                                            "checkpoint_steps": [0, 10, 20]}, "probes": {"vgg": {"every": 10}}}
    sep = tiny_params(tmp_path / "a", **overrides)
    pk = tiny_params(tmp_path / "b", **overrides, numerics={"mode": "packed"})
    cell_id = "vgg-standard-lr0.1"
    runs, ckpts = Path(sep.out_dir) / "runs" / cell_id, Path(sep.out_dir) / "checkpoints" / cell_id
    train_cell(sep, cell_id, dataset, runs, ckpts)
    scratch = Path(pk.out_dir) / ".partial" / cell_id
    cell = pk.cell(cell_id)
    results = train_cell_packed(pk, cell_id, [0, 1], dataset, scratch, torch.device("cpu"),
                                loop_config(pk.train, cell, 0))
    for r in results:
        write_run(pk, cell_id, r.seed, scratch, r.outcome, r.fingerprint, r.data_info, probed=r.probed, device="cpu")
    for seed in (0, 1):
        a, b = runs / f"s{seed}", scratch / "runs" / f"s{seed}"
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        # the same run.json but for the mode, which decides the numbers (float32: summation order) and so is
        # recorded, and the fingerprint that hashes it
        want, got = (json.loads((d / "run.json").read_text()) for d in (a, b))
        assert (want["params"]["numerics"]["mode"], got["params"]["numerics"]["mode"]) == ("separate", "packed")
        assert want["fingerprint"] != got["fingerprint"]
        for run in (want, got):
            del run["params"]["numerics"]["mode"], run["fingerprint"]
        assert got == want
        tables = sorted(a.glob("*.csv.gz"))  # the run's tables, gzip (RUN_TABLE): metrics and the dense probes
        assert {t.name for t in tables} == {RUN_TABLE.format(name) for name in TABLES}
        for table in tables:
            want, got = pd.read_csv(table), pd.read_csv(b / table.name)
            assert list(got.columns) == list(want.columns) and len(got) == len(want) > 0, table.name
            pd.testing.assert_frame_equal(got, want, rtol=1e-4, atol=1e-6, obj=table.name)
        ca, cb = ckpts / f"s{seed}", scratch / "checkpoints" / f"s{seed}"
        assert sorted(p.name for p in ca.iterdir()) == sorted(p.name for p in cb.iterdir())
        assert (ca / "manifest.json").read_text() == (cb / "manifest.json").read_text()
        prints = [json.loads((d / "run.json").read_text())["fingerprint"] for d in (a, b)]
        for path in sorted(ca.glob("step*.pt")):
            want, got = (load_checkpoint(d / path.name, cell_id=cell_id, seed=seed, fingerprint=fp)
                         for d, fp in zip((ca, cb), prints))
            assert ({k: v for k, v in got["meta"].items() if k != "fingerprint"}
                    == {k: v for k, v in want["meta"].items() if k != "fingerprint"})
            assert got["step"] == want["step"]
            assert rel_diff(got["state_dict"], want["state_dict"]) < 1e-5


# ------------------------------------------------------------------------------------------------- when to pack
def test_packed_plan_packs_vgg_cells_only(tmp_path, caplog):
    separate_mode = tiny_params(tmp_path)
    assert packed_plan(separate_mode, cell_of("bn")) == (False, "train.numerics.mode is separate")
    p = tiny_params(tmp_path, numerics={"mode": "packed"})
    for variant in VARIANTS:  # every built-in variant packs (GroupNorm, weight_norm and BN without affine included)
        assert packed_plan(p, cell_of(variant)) == (True, ""), variant
    for cell in p.train.grid.values():
        with caplog.at_level(logging.INFO, logger="bnflow.train"):
            caplog.clear()
            use, why = packed_plan(p, cell)
        assert use == (cell.model in VGG_FAMILIES), cell.id  # the paper-scale and the reduced-scale VGG
        assert use or ("packing is for VGG" in why and why in caplog.text)  # the train step's log says so


def test_cuda_graphs_and_compile_are_exclusive(params, dataset, tmp_path):
    cell = cell_of("bn")
    tasks = [make_task(params, "bn", s, dataset, torch.float32) for s in SEEDS]
    cfg = dataclasses.replace(loop_config(params.train, cell, 0), cuda_graphs=True)
    with pytest.raises(Exception, match="exclusive"):
        train_packed(tasks, cfg, tmp_path, [tmp_path] * 2, [{}] * 2, "x", compile_mode="default")


@pytest.mark.gpu
def test_packed_on_gpu_graphs_and_eager_match_separate(params, dataset, tmp_path):
    # On the GPU (TF32 allowed, as training runs) the first steps of packed eager, packed CUDA graphs and separate
    # runs agree to TF32 precision; a wrong graph capture or channels_last layout would show as O(1) differences.
    cell = cell_of("bn")
    dev = torch.device("cuda")
    cfg = dataclasses.replace(loop_config(params.train, cell, 0), steps=5, checkpoint_steps=(), eval_every=None)
    single = []
    for seed in SEEDS:
        task = VggTask(params.train, cell, seed, dataset, dev)
        single.append(train_loop(task, cfg, tmp_path, tmp_path, {}, "x").tables["metrics"])
    for graphs in (False, True):
        tasks = [VggTask(params.train, cell, seed, dataset, dev) for seed in SEEDS]
        outs = train_packed(tasks, dataclasses.replace(cfg, cuda_graphs=graphs), tmp_path, [tmp_path] * 2,
                            [{}] * 2, f"gpu{graphs}")
        for got, want in zip(outs, single):
            assert_rows_close(got.tables["metrics"], want, 1e-2)


def test_numerics_mode_key_is_validated(tmp_path):
    from bnflow.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train\.numerics\.mode"):
        tiny_params(tmp_path, numerics={"mode": "fast"})
    assert tiny_params(tmp_path, numerics={"mode": "packed"}).train.numerics.mode == "packed"
