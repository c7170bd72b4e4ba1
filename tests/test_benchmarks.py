"""benchmarks/bench_train.py: the smoke preset end to end, its arithmetic, its records and its argument errors."""

from __future__ import annotations

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


def test_smoke_preset_measures_three_kinds_and_records(tmp_path):
    record = tmp_path / "RESULTS.md"
    shutil.copyfile(RESULTS, record)
    original, real_before = record.read_text(), RESULTS.read_bytes()
    out_json = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--json", str(out_json), "--record", str(record)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr

    result = json.loads(out_json.read_text())
    rows, meta = result["rows"], result["meta"]
    assert [(r["kind"], r["runs"], r["cuda_graphs"]) for r in rows] == [
        ("typical", 1, False), ("bnflow_single", 1, False), ("bnflow_probes", 1, False), ("bnflow_aggregate", 1, False),
        ("bnflow_aggregate", 2, False)]
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
           (["--device", "cpu", "--cuda-graphs", "on"], "--cuda-graphs")]
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
            "--windows", "3", "--parallel", "2", "--n-train", "4096", "--json", str(out_json)]
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out_json.read_text())
    assert result["meta"]["device_name"] == torch.cuda.get_device_name()
    speed = {(r["kind"], r["runs"], r["cuda_graphs"]): r["steps_per_s"] for r in result["rows"]}
    assert set(speed) == {("typical", 1, False), ("bnflow_single", 1, False), ("bnflow_single", 1, True),
                          ("bnflow_aggregate", 2, False), ("bnflow_aggregate", 2, True)}
    # PERFORMANCE.md: device-resident data beats PIL + DataLoader + .item(); at this size the GPU is launch-bound,
    # so replaying one graph per step beats launching its kernels one by one
    assert speed[("bnflow_single", 1, False)] > speed[("typical", 1, False)]
    assert speed[("bnflow_single", 1, True)] > speed[("bnflow_single", 1, False)]
