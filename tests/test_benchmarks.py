"""benchmarks/bench_train.py: the smoke preset end to end, its arithmetic, its records and its argument errors."""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys

import pytest
import torch

from bnflow.data import make_synthetic, save_prepared
from bnflow.errors import BnflowError, ConfigError, DataError
from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "bench_train.py"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def bench_module(name: str):
    """A benchmark script imported as a module (benchmarks/ is not a package: its folder joins sys.path meanwhile)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(SCRIPT.parent))


@pytest.fixture(scope="module")
def bench():
    """The script imported as the module bench_train (benchmarks/ is not a package; spawned children import it too)."""
    sys.path.insert(0, str(SCRIPT.parent))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the 2 cores are shared: more threads than free cores stall each other
    try:
        yield importlib.import_module("bench_train")
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(SCRIPT.parent))


@pytest.mark.slow  # ~10 s idle, over a minute on a loaded 2-core machine (issue 14)
def test_smoke_preset_measures_every_kind_and_records(tmp_path):
    record = tmp_path / "RESULTS.md"
    shutil.copyfile(RESULTS, record)
    original, real_before = record.read_text(), RESULTS.read_bytes()
    out_json = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json", str(out_json), "--record", str(record)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

    result = json.loads(out_json.read_text())
    rows, meta = result["rows"], result["meta"]
    assert [(r["kind"], r["runs"], r["cuda_graphs"]) for r in rows] == [
        ("typical", 1, False), ("bnflow_single", 1, False), ("bnflow_probes", 1, False), ("bnflow_aggregate", 1, False),
        ("bnflow_aggregate", 2, False), ("packed", 2, False), ("packed", 2, False)]
    for r in rows:
        assert len(r["window_s"]) == 3 and r["steps_per_window"] == 20
        assert math.isfinite(r["steps_per_s"]) and r["steps_per_s"] > 0
        # the reported numbers follow from the raw windows: total steps over the median window
        med = statistics.median(r["window_s"])
        assert r["steps_per_s"] == pytest.approx(r["runs"] * 20 / med, rel=1e-12)
        assert r["ms_per_step"] == pytest.approx(1000 * med / 20, rel=1e-12)
        assert r["images_per_s"] == pytest.approx(16 * r["steps_per_s"], rel=1e-12)
        assert r["label"] in proc.stdout  # one table line per row
    probes = rows[2]
    eager = rows[1]
    assert probes["overhead_pct"] == pytest.approx(100 * (probes["ms_per_step"] / eager["ms_per_step"] - 1))
    assert "dense probes every 10 steps" in probes["label"]
    # packed rows: 2 seeds in one model (the total counts both seeds' steps); the probes row against packed eager
    packed_eager, packed_probes = rows[5], rows[6]
    assert "2 seeds in one model" in packed_eager["label"] and packed_probes["probe_every"] == 10
    assert packed_probes["overhead_pct"] == pytest.approx(
        100 * (packed_probes["ms_per_step"] / packed_eager["ms_per_step"] - 1))
    # what a CPU cannot run is listed with the reason, in the JSON and under the table
    skipped = {r["label"]: r["skipped"] for r in meta["skipped"]}
    assert "bnflow packed CUDA graphs" in skipped and "bnflow packed torch.compile(default)" in skipped
    assert all(f"skipped: {label}: {why}" in proc.stdout for label, why in skipped.items())
    # no grid extrapolation from smoke-size rates (a toy model's 20-step windows say nothing about the grid)
    assert "grid_estimate" not in meta and "grid" not in meta
    assert "extrapolated" not in proc.stdout and "smoke preset: no grid extrapolation" in proc.stdout

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert meta["commit"].startswith(head)
    assert meta["device"] == "cpu" and meta["device_name"].startswith("CPU ")
    assert f"({os.cpu_count()} cores)" in meta["device_name"]
    assert meta["torch"] == torch.__version__ and meta["settings"]["arch"] == "vgg11"

    recorded = record.read_text()
    assert recorded.startswith(original)  # appended, nothing before it touched
    section = recorded[len(original):]
    assert section.startswith("\n## ") and meta["date"] in section and meta["device_name"] in section
    assert f"commit `{meta['commit']}`" in section and "--smoke" in section
    assert all(r["label"] in section for r in rows)
    assert RESULTS.read_bytes() == real_before  # the committed file is never written by the test


def test_grid_estimate_hand_computed():
    packed = bench_module("bench_packed")
    grid = {"cells": ["a", "b", "c", "n"], "noisy_cells": ["n"], "seeds": 2, "steps": 100}
    rows = [{"kind": "bnflow_single", "label": "single", "steps_per_s": 1e6, "cuda_graphs": True},
            {"kind": "packed", "label": "eager", "steps_per_s": 10.0, "cuda_graphs": False, "precision": "fp32"},
            {"kind": "packed", "label": "graphs", "steps_per_s": 40.0, "cuda_graphs": True, "precision": "fp32"},
            {"kind": "packed", "label": "bf16", "steps_per_s": 1e3, "cuda_graphs": True, "precision": "bf16"},
            {"kind": "packed", "label": "probes", "steps_per_s": 8.0, "cuda_graphs": False, "precision": "fp32",
             "probe_every": 10, "overhead_pct": 25.0}]
    est = packed.grid_estimate(grid, rows)
    # 3 cells x 200 steps at 40 steps/s (graphs; bf16 and non-packed rows never count) + 1 noisy cell x 200 steps
    # at 10 steps/s (eager), times 1.25 for the probes: (15 s + 20 s) * 1.25 = 43.75 s
    assert est["minutes"] == pytest.approx(43.75 / 60)
    assert (est["best_row"], est["eager_row"], est["total_steps"]) == ("graphs", "eager", 800)
    assert packed.grid_estimate(grid, rows[:1]) is None
    gpu_rows, gpu_skipped = packed.plan_rows(torch.device("cuda"), ("default",), ("fp32", "bf16"), 100)
    assert gpu_skipped == [] and {(r.graphs, r.channels_last, r.compile_mode, r.precision, r.probe_every)
                                  for r in gpu_rows} == {
        (False, None, None, "fp32", 0), (False, None, None, "fp32", 100), (True, None, None, "fp32", 0),
        (False, False, None, "fp32", 0), (False, None, "default", "fp32", 0), (False, None, None, "bf16", 0),
        (True, None, None, "bf16", 0)}
    cpu_rows, cpu_skipped = packed.plan_rows(torch.device("cpu"), ("default",), ("fp32", "bf16"), 0)
    assert cpu_rows == [packed.PackedRow()] and len(cpu_skipped) == 5


def test_summarise_hand_computed(bench):
    row = bench.summarise("bnflow_aggregate", 2, 10, [0.3, 0.1, 0.2], 4, "x")
    # median window 0.2 s for 10 steps of each of 2 runs: 20 ms/step, 100 steps/s in total, 400 images/s
    assert row["ms_per_step"] == pytest.approx(20.0)
    assert row["steps_per_s"] == pytest.approx(100.0)
    assert row["images_per_s"] == pytest.approx(400.0)
    assert (row["ms_per_step_min"], row["ms_per_step_max"]) == pytest.approx((10.0, 30.0))


def test_table_ratio_is_over_the_typical_row(bench):
    rows = [bench.summarise("typical", 1, 5, [0.1], 8, "slow"),
            bench.summarise("bnflow_single", 1, 5, [0.025], 8, "fast")]
    lines = bench.format_table(rows).splitlines()
    assert len(lines) == 4
    assert lines[2].split("|")[6].strip() == "1.00" and lines[3].split("|")[6].strip() == "4.00"
    assert lines[3].split("|")[3].strip() == "5.00" and lines[3].split("|")[4].strip() == "200.0"


def test_arguments_preset_and_errors(bench):
    s = bench.parse_args(["--smoke", "--steps", "7"])
    assert (s.steps, s.arch, s.width_mult, s.parallel, s.device.type, s.num_workers, s.graph_modes) == (
        7, "vgg11", 0.125, (1, 2), "cpu", 0, (False,))
    bad = [(["--parallel", "1,x"], "--parallel"), (["--parallel", "0,2"], "--parallel"), (["--steps", "0"], "--steps"),
           (["--warmup", "0"], "--warmup"), (["--sync-every", "0"], "--sync-every"), (["--device", "gpu"], "--device"),
           (["--device", "cpu", "--cuda-graphs", "on"], "--cuda-graphs"), (["--pack-seeds", "-1"], "--pack-seeds"),
           (["--packed-precisions", "fp16"], "--packed-precisions")]
    for args, key in bad:
        with pytest.raises(ConfigError, match=key):
            bench.parse_args(["--smoke", *args])


def test_missing_dataset_names_the_path(bench, tmp_path):
    missing = tmp_path / "nowhere.npz"
    with pytest.raises(DataError, match="nowhere.npz"):
        bench.main(["--smoke", "--data", str(missing)])


def test_fit_probe_layers_drops_only_vgg_layers_beyond_the_arch(bench):
    raw = {"train": {"probes": {"vgg": {"every": 100, "ics_layers": [5, 10]},
                                "dln": {"ics_layers": [9, 17]}}},
           "probe": {"vgg": {"activation_layers": [2, 9, 13]}, "dln": {"activation_layers": [1, 24]}}}
    fitted = bench.fit_probe_layers(raw, 8)
    assert fitted == {"train": {"probes": {"vgg": {"every": 100, "ics_layers": [5]}, "dln": {"ics_layers": [9, 17]}}},
                      "probe": {"vgg": {"activation_layers": [2]}, "dln": {"activation_layers": [1, 24]}}}


def test_window_clock_reads_the_clock_at_boundaries_and_delegates_the_rest(bench):
    class Fake:
        device, model = torch.device("cpu"), "the model"

        def __init__(self):
            self.asked = []

        def batch(self, step):
            self.asked.append(step)
            return f"batch {step}"

    fake = Fake()
    clock = bench.WindowClock(fake, [1, 3])
    assert [clock.batch(t) for t in range(5)] == [f"batch {t}" for t in range(5)]
    assert fake.asked == [0, 1, 2, 3, 4] and clock.model == "the model"
    assert len(clock.times) == 2 and clock.times[0] < clock.times[1]


def test_timed_bnflow_loop_trains_and_writes_no_checkpoint_or_resume_state(bench, tmp_path):
    data = tmp_path / "data.npz"
    save_prepared(data, make_synthetic(0, 64, 20))
    s = bench.parse_args(["--smoke", "--data", str(data)])
    plain = bench.bench_params(s, s.device)
    task = bench.make_vgg_task(plain, data, s.device, seed=0)
    folder = tmp_path / "scratch"
    folder.mkdir()
    before = [p.detach().clone() for p in task.model.parameters()]
    times = bench.run_timed(task, plain, warmup=2, steps=3, windows=2, cuda_graphs=False, folder=folder)
    assert len(times) == 3 and times[0] < times[1] < times[2]
    assert list(folder.iterdir()) == []
    assert any(not torch.equal(a, b) for a, b in zip(before, task.model.parameters()))  # it did train
    # on a CPU the loop cannot capture a graph: asking for one must fail loudly, not time the eager loop instead
    with pytest.raises(BnflowError, match="did not capture a CUDA graph"):
        bench.run_timed(task, plain, warmup=1, steps=1, windows=1, cuda_graphs=True, folder=folder)


def test_loop_messages_captures_info_and_restores_the_logger(bench):
    logger = logging.getLogger("bnflow.train")
    level, handlers = logger.level, list(logger.handlers)
    with bench.loop_messages() as messages:
        logger.info("captured %s", "it")
        logging.getLogger("bnflow.other").info("not this one")
    assert messages == ["captured it"]
    assert logger.level == level and logger.handlers == handlers


def test_a_failing_child_is_reported_not_waited_for(bench, tmp_path):
    s = bench.parse_args(["--smoke"])
    plain = bench.bench_params(s, s.device)
    # the child cannot load its data: it must break the barrier, and the parent must raise with the child's error
    with pytest.raises(BnflowError, match="missing.npz"):
        bench.aggregate_windows(plain, tmp_path / "missing.npz", s.device, s, [(False, 1)], tmp_path)


@pytest.mark.gpu
def test_gpu_rows_name_the_gpu_and_graphs_beat_eager(tmp_path):
    out_json = tmp_path / "bench.json"
    args = ["--device", "cuda", "--arch", "vgg11", "--width-mult", "0.5", "--steps", "50", "--warmup", "10",
            "--windows", "3", "--parallel", "2", "--n-train", "4096", "--pack-seeds", "2", "--compile-modes", "",
            "--packed-precisions", "fp32", "--json", str(out_json)]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out_json.read_text())
    assert result["meta"]["device_name"] == torch.cuda.get_device_name()
    speed = {(r["kind"], r["runs"], r["cuda_graphs"]): r["steps_per_s"] for r in result["rows"]
             if r["kind"] != "packed"}
    assert set(speed) == {("typical", 1, False), ("bnflow_single", 1, False), ("bnflow_single", 1, True),
                          ("bnflow_aggregate", 2, False), ("bnflow_aggregate", 2, True)}
    packed = {r["label"].split(":")[0]: r["steps_per_s"] for r in result["rows"] if r["kind"] == "packed"}
    assert set(packed) == {"bnflow packed eager", "bnflow packed eager, dense probes every 100 steps",
                           "bnflow packed CUDA graphs", "bnflow packed eager, NCHW"} and result["meta"]["skipped"] == []
    # two seeds in one launch stream beat one launch-bound run (issue 16's premise)
    assert packed["bnflow packed eager"] > speed[("bnflow_single", 1, False)]
    # PERFORMANCE.md: device-resident data beats PIL + DataLoader + .item(); at this size the GPU is launch-bound,
    # so replaying one graph per step beats launching its kernels one by one
    assert speed[("bnflow_single", 1, False)] > speed[("typical", 1, False)]
    assert speed[("bnflow_single", 1, True)] > speed[("bnflow_single", 1, False)]


# ------------------------------------------------------------------------- bf16 check (benchmarks/bf16_check.py)
@pytest.fixture(scope="module")
def bf16():
    yield bench_module("bf16_check")


def _claims():
    """Four hand-made claims, built from the registry's first one so every other field stays valid."""
    from bnflow.config import Cell, parse_claims, read_yaml

    base = parse_claims(read_yaml(ROOT / "params.yaml")["claims"])[0]
    mk = dataclasses.replace
    claims = [mk(base, id="A", arm_a="bn", arm_b="standard", lr=0.1),       # both arms trained
              mk(base, id="B", arm_a="noisy_bn", arm_b="bn", lr=0.1),       # noisy_bn not trained
              mk(base, id="C", arm_a="bn", arm_b="standard", lr=0.5),       # other lr
              mk(base, id="D", arm_a="standard", arm_b="bn", lr=0.1)]
    cells = [Cell(model="vgg", variant="bn", lr=0.1), Cell(model="vgg", variant="standard", lr=0.1)]
    return claims, cells


def test_bf16_affected_claims_are_those_the_cells_decide(bf16):
    claims, cells = _claims()
    assert [c.id for c in bf16.affected_claims(claims, cells)] == ["A", "D"]


def test_bf16_verdict_comparison_on_hand_made_tables(bf16):
    import pandas as pd

    claims, _ = _claims()
    a, d = claims[0], claims[3]
    fp32 = pd.DataFrame({"claim_id": ["A", "D"], "verdict": ["supported", "inconclusive"], "estimate": [0.8, 1.1]})
    bf = pd.DataFrame({"claim_id": ["A", "D"], "verdict": ["supported", "contradicted"], "estimate": [0.81, 1.3]})
    both = {"fp32": {"A", "D"}, "bf16": {"A", "D"}}
    table = bf16.compare_verdicts(fp32, bf, [a, d], both)
    assert table.status.tolist() == ["agree", "differ"] and not bf16.check_passes(table)
    assert table.loc[1, "verdict_bf16"] == "contradicted" and table.loc[0, "estimate_bf16"] == 0.81
    # the differing claim unmeasured at one precision: it is neither agreement nor disagreement
    table = bf16.compare_verdicts(fp32, bf, [a, d], {"fp32": {"A", "D"}, "bf16": {"A"}})
    assert table.status.tolist() == ["agree", "not_measured"] and bf16.check_passes(table)
    assert "bf16 may become the default" in bf16.format_report(table)
    # nothing compared, or a claim missing from a table: the check fails
    assert not bf16.check_passes(bf16.compare_verdicts(fp32, bf, [a], {"fp32": set(), "bf16": set()}))
    table = bf16.compare_verdicts(fp32.iloc[1:], bf, [a], both)
    assert table.verdict_fp32.tolist() == ["missing"] and table.status.tolist() == ["differ"]
    assert "fp32 stays the default" in bf16.format_report(table)


def test_bf16_measured_needs_a_finite_value_in_every_arm(bf16):
    import pandas as pd

    claims, _ = _claims()
    runs = pd.DataFrame({"model": ["vgg"] * 4, "variant": ["bn", "bn", "standard", "standard"], "lr": [0.1] * 4,
                         claims[0].metric: [1.0, float("nan"), float("nan"), float("nan")]})
    assert not bf16.measured(runs, claims[0])  # standard has no finite value
    runs.loc[3, claims[0].metric] = 2.0
    assert bf16.measured(runs, claims[0])
    assert not bf16.measured(runs.drop(columns=[claims[0].metric]), claims[0])


@pytest.mark.slow
def test_bf16_check_runs_end_to_end_on_a_tiny_cpu_grid(tmp_path):
    # the GPU-only script's plumbing (params, train_cell, summarize_runs, evaluate_claims) on the quick overlay;
    # its verdicts at 20 steps mean nothing, so only their form is checked
    data = tmp_path / "data.npz"
    save_prepared(data, make_synthetic(0, 512, 128))
    report = tmp_path / "report.json"
    args = ["--data", str(data), "--device", "cpu", "--steps", "20", "--params", str(ROOT / "params.yaml"),
            str(ROOT / "workflow" / "quick.yaml"), "--out", str(tmp_path / "out"), "--json", str(report)]
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "bf16_check.py"), *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stderr  # 1: verdicts differ, a legitimate outcome
    result = json.loads(report.read_text())
    claims = {c["claim_id"]: c for c in result["claims"]}
    assert claims and all(c["arm_a"] in ("bn", "standard") and c["lr"] == 0.1 for c in claims.values())
    assert {c["status"] for c in claims.values()} <= {"agree", "differ", "not_measured"}
    # edge_ratio needs the checkpoint-wise probe step, which the check does not run
    assert all(c["status"] == "not_measured" for c in claims.values() if c["metric"] == "edge_ratio")
    assert result["passes"] == (proc.returncode == 0) and result["params"]["precision"] == "bf16"
    for precision in ("fp32", "bf16"):
        assert sorted(p.name for p in (tmp_path / "out" / precision / "runs").iterdir()) == [
            "vgg-bn-lr0.1", "vgg-standard-lr0.1"]


def test_cpu_projections_hand_computed():
    cpu = bench_module("bench_cpu")
    # every variant 0.1 s/step with probes and a 2 s evaluation; 2 seeds x 100 steps, evaluations at 0, 50, 100
    rates = {v: 0.1 for v, _ in cpu.CORE_GRID}
    evals = {v: 2.0 for v, _ in cpu.CORE_GRID}
    got = cpu.project_grid(rates, evals, 3.0, seeds=2, steps=100, eval_every=50, checkpoints=5, parallel=2)
    # training: 6 cells x 2 seeds x (100 x 0.1 + 3 x 2) s = 192 s, over 2 at once: 96 s; probe step: 6 x 2 x 5 x 3 s
    # = 180 s over 2: 90 s
    assert got["train_h"] == pytest.approx(96 / 3600) and got["probe_step_h"] == pytest.approx(90 / 3600)
    assert got["total_h"] == pytest.approx(186 / 3600)
    # a probe call of 0.5 s every 50 steps adds 0.01 s to a 0.02 s step
    assert cpu.per_step_with_probes({"s_per_step": 0.02, "dense_probe_s": 0.5}, 50) == pytest.approx(0.03)
    dln = cpu.project_dln({"s_per_step": 0.02, "dense_probe_s": 0.5}, 1.0, cells=7, seeds=20, steps=1000, every=50,
                          checkpoints=5, parallel=2)
    # 140 runs x 1000 steps x 0.03 s / 2 = 2100 s = 35 min; probe step 140 x 5 x 1 s / 2 = 350 s
    assert dln["runs"] == 140 and dln["train_min"] == pytest.approx(35.0)
    assert dln["probe_step_min"] == pytest.approx(350 / 60)


def test_grid_extrapolation_reads_the_paper_scale_grid():
    packed = bench_module("bench_packed")
    grid = packed.grid_cells(ROOT / "params.yaml")  # params.yaml's grid holds no paper-scale VGG cell
    assert len(grid["cells"]) == 11 and all(c.startswith("vgg-") for c in grid["cells"])
    assert grid["seeds"] == 5 and grid["steps"] == 15000
