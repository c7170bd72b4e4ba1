"""A new user's fresh clone without a GPU (issue 24, parts 5-7): the figures read the probe params the probe step
recorded, `snakemake --report` says what the run is without a warning per output, the quick run says where its
report is, and the DVC review commands read well (plots offline, dvc_plots/ ignored, a short `dvc exp show`)."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bnflow.config import load_params
from bnflow.describe import run_description
from bnflow.figures.data import _probe_params
from conftest import ROOT

PARAMS = ROOT / "params.yaml"
QUICK = ROOT / "workflow" / "quick.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


# ------------------------------------------------------------------------------------------------ probe params (6)
def test_captions_read_the_probe_params_that_probe_json_records(tmp_path, caplog):
    p = load_params(PARAMS, check_files=False)
    recorded = {"params": "weights", "curvature": {"eig_method": "power", "eig_iters": 7, "eig_tol": 0.5}}
    (tmp_path / "probe.json").write_text(json.dumps({"cell": {}, "params": {"probe": recorded, "cell": {}}}))
    with caplog.at_level(logging.INFO, logger="bnflow.figures"):
        assert _probe_params(tmp_path, p) == recorded
    assert "no probe params recorded" not in caplog.text
    # the layout before 212fc30 (inside `provenance`) still reads; none at all falls back to params.yaml's, and says so
    (tmp_path / "probe.json").write_text(json.dumps({"provenance": {"params": {"probe": recorded}}}))
    assert _probe_params(tmp_path, p) == recorded
    (tmp_path / "probe.json").write_text(json.dumps({"cell": {}}))
    with caplog.at_level(logging.INFO, logger="bnflow.figures"):
        assert _probe_params(tmp_path, p)["curvature"]["eig_iters"] == p.probe.curvature.eig_iters
    assert "no probe params recorded" in caplog.text


def test_every_committed_probe_json_gives_its_params_to_the_captions(caplog):
    runs = sorted(path.parent for path in (ROOT / "results" / "probes").glob("*/s*/probe.json"))
    assert runs, "no committed probe.json"
    p = load_params(PARAMS, check_files=False)
    with caplog.at_level(logging.INFO, logger="bnflow.figures"):
        for run in runs:
            assert "curvature" in _probe_params(run, p)
    assert "no probe params recorded" not in caplog.text


# ------------------------------------------------------------------------------------- the report's front page (6)
def test_the_report_says_synthetic_for_the_quick_run_and_cifar_for_the_committed_grid():
    quick = run_description(load_params(PARAMS, QUICK, check_files=False), ["params.yaml", "workflow/quick.yaml"])
    assert "**Synthetic images, not CIFAR-10**" in quick and "``results/quick/REPORT.md``" in quick
    paper = run_description(load_params(PARAMS, check_files=False), ["params.yaml"])
    assert "Synthetic" not in paper and "CIFAR-10 (local archive)" in paper
    assert re.search(r"\*\*dln\*\* \(\d+ cells\): 25-layer linear network", paper)


# ------------------------------------------------------------------------------------------------ on a clone (5-7)
@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A fresh clone of the committed HEAD, as a new user gets it (no .snakemake/, no DVC cache), beside the offline
    dataset folder params.yaml names (../shared), as on the project's machines."""
    path = tmp_path_factory.mktemp("fresh") / "main"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(path)], check=True)
    if (ROOT.parent / "shared").is_dir():
        (path.parent / "shared").symlink_to(ROOT.parent / "shared")
    return path


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`cmd` in the clone, with the clone's own bnflow (Python puts the working folder first on its path)."""
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


@pytest.mark.slow
def test_snakemake_report_on_a_clone_has_one_note_not_a_warning_per_output(clone):
    proc = _run([*SNAKEMAKE, "--report", "results/report.html"], clone)  # the README's command (git-ignored)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Missing metadata" not in proc.stderr
    assert proc.stderr.count("Snakemake has no record of") == 1
    page = (clone / "results" / "report.html").read_text()
    assert "bnflow: the figures of <tt class=\\\"docutils literal\\\">results/</tt>" in page


@pytest.mark.slow
def test_dvc_review_commands_on_a_clone(clone):
    plots = _run(["dvc", "plots", "diff", "HEAD"], clone)
    assert plots.returncode == 0, plots.stderr[-3000:]
    pngs = {p.name for p in (clone / "results" / "figures").glob("*.png")}
    shown = {re.sub(r"^workspace_results_figures_", "", p.name) for p in (clone / "dvc_plots" / "static").iterdir()}
    assert pngs and pngs <= shown  # the committed figures, as images: they read offline
    assert _run(["git", "status", "--porcelain"], clone).stdout == ""  # dvc_plots/ is ignored
    # a params edit: `dvc exp show --only-changed` shows the edited key, not every param and metric (hundreds)
    params = clone / "params.yaml"
    text = params.read_text()
    params.write_text(text.replace("  ci_level: 0.95", "  ci_level: 0.9", 1))
    try:
        table = _run(["dvc", "exp", "show", "--csv", "--only-changed"], clone)
    finally:
        params.write_text(text)
    header = table.stdout.splitlines()[0].split(",")
    assert "stats.ci_level" in header and len(header) < 30, header


@pytest.mark.slow
def test_the_quick_run_ends_saying_where_its_report_is(clone):
    proc = _run([*SNAKEMAKE, "--cores", "all", "--config", "overlay=workflow/quick.yaml"], clone)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [line for line in proc.stderr.splitlines() if line.startswith("bnflow: the report is")]
    assert said == ["bnflow: the report is results/quick/REPORT.md (every figure and claim); as one HTML page: "
                    "snakemake --report results/quick/report.html --config overlay=workflow/quick.yaml"]
    assert (clone / "results" / "quick" / "REPORT.md").exists()
    report = _run([*SNAKEMAKE, "--report", "results/quick/report.html", "--config", "overlay=workflow/quick.yaml"],
                  clone)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "Synthetic images, not CIFAR-10" in (clone / "results" / "quick" / "report.html").read_text()


@pytest.mark.slow
def test_dvc_reads_every_metrics_and_plots_file_it_declares_on_a_clone(clone):
    """No "failed to load" for outputs of cells or stages not run: dvc.yaml declares metrics and plots only for what
    the committed grid holds (lrscan.models, the grid's cells), and the committed results hold them all."""
    for cmd in (["dvc", "metrics", "show"], ["dvc", "plots", "show", "-o", "dvc_plots"]):
        proc = _run(cmd, clone)
        assert proc.returncode == 0 and "failed to load" not in proc.stderr, (cmd, proc.stderr[-2000:])


@pytest.mark.slow
def test_plain_dvc_repro_on_a_clone_plans_nothing_and_a_stats_edit_only_the_claims(clone):
    """Issue 24, part 1: no stage declares a file a clone lacks (bnflow.dag.artefacts), so plain `dvc repro --dry`
    runs, plans nothing, and plans `stats` alone after a claims-params edit; every committed cell and model family
    has its large files recorded by .dvc files git keeps, and each data family its manifest."""
    dry = _run(["dvc", "repro", "--dry"], clone)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "Running stage" not in dry.stdout and "Data and pipelines are up to date." in dry.stdout
    assert _run(["dvc", "status", "--json"], clone).stdout.strip() == "{}"
    params = load_params(clone / "params.yaml", check_files=False)
    tracked = set(_run(["git", "ls-files", "results/data", "results/checkpoints", "results/probes_full"],
                       clone).stdout.split())
    models = {params.cell(c).model for c in params.train.grid}
    assert tracked == {*(f"results/{d}/{c}.dvc" for d in ("checkpoints", "probes_full") for c in params.train.grid),
                       *(f"results/data/{m}.{e}" for m in models for e in ("json", "npz.dvc"))}
    text = (clone / "params.yaml").read_text()
    (clone / "params.yaml").write_text(text.replace("  ci_level: 0.95", "  ci_level: 0.9", 1))
    try:
        dry = _run(["dvc", "repro", "--dry"], clone)
    finally:
        (clone / "params.yaml").write_text(text)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert re.findall(r"Running stage '([^']+)'", dry.stdout) == ["stats"]  # figures follow if claims.md changes
