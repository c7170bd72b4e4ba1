"""bnflow.dag: the params stamps that let Snakemake re-run exactly what a params edit touches, also on a fresh clone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from bnflow.dag import (Job, StampReport, check_config, lookup, param_keys, read_ledger, redate_dvc_checked,
                        select_cells, stamp_path, sync_stamps, vouched)
from bnflow.errors import ConfigError

RAW = {"prepare": {"source": "archive", "archive": "a.tgz", "synthetic": {"seed": 0}},
       "stats": {"seed": 0, "ci_level": 0.95}, "claims": [{"id": "C1"}],
       "train": {"seeds": {"base": 0, "n": 2}}}
PREP = Job("prepare", "vgg", ("out/data/vgg.npz",), ("prepare.source", "prepare.archive", "prepare.synthetic"))
TRAIN = Job("train", "vgg-bn-lr0.1", ("out/runs/vgg-bn-lr0.1",), ("train.seeds",), (PREP,))
STATS = Job("stats", "", ("out/stats/claims.csv",), ("stats", "claims"))


def make_outputs(root: Path, *jobs: Job) -> None:
    for job in jobs:
        for o in job.outputs:
            p = root / o
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("x")


def ledger_for(*jobs: Job, raw=RAW, **overrides) -> dict:
    out = {j.stage: {k: lookup(raw, k) for k in j.keys} for j in jobs}
    for stage, values in overrides.items():
        out[stage.replace("__", "@")].update(values)
    return out


def test_first_run_writes_stamps_and_an_edit_makes_only_that_stamp_newer(tmp_path):
    jobs = [PREP, TRAIN, STATS]
    r = sync_stamps(jobs, RAW, "out", ledger={}, root=tmp_path, now=1000.0)
    assert r.changed == r.adopted == r.unvouched == []  # nothing existed: the jobs run for missing outputs
    before = {j: stamp_path("out", j, tmp_path).stat().st_mtime_ns for j in jobs}
    for j in jobs:  # an old stamp, as after a completed run
        os.utime(stamp_path("out", j, tmp_path), (5, 5))
    edited = yaml.safe_load(yaml.safe_dump(RAW))
    edited["stats"]["ci_level"] = 0.9
    r = sync_stamps(jobs, edited, "out", ledger={}, root=tmp_path)
    assert r.changed == [STATS]
    assert stamp_path("out", STATS, tmp_path).stat().st_mtime > 5
    assert stamp_path("out", TRAIN, tmp_path).stat().st_mtime == 5  # untouched: no re-run
    assert before  # stamps existed after the first sync


def test_a_prepare_edit_reaches_training_through_the_chain(tmp_path):
    sync_stamps([PREP, TRAIN], RAW, "out", ledger={}, root=tmp_path)
    edited = yaml.safe_load(yaml.safe_dump(RAW))
    edited["prepare"]["archive"] = "other.tgz"
    r = sync_stamps([PREP, TRAIN], edited, "out", ledger={}, root=tmp_path)
    assert set(r.changed) == {PREP, TRAIN}


def test_fresh_clone_adopts_outputs_that_dvc_lock_vouches_for_and_dates_them_in_dag_order(tmp_path):
    make_outputs(tmp_path, TRAIN, STATS)
    os.utime(tmp_path / "out/runs/vgg-bn-lr0.1", (9e8, 9e8))  # checkout order: the input looks newer
    os.utime(tmp_path / "out/stats/claims.csv", (8e8, 8e8))
    r = sync_stamps([PREP, TRAIN, STATS], RAW, "out", ledger=ledger_for(PREP, TRAIN, STATS), root=tmp_path,
                    now=2e9)
    assert r.adopted == [TRAIN, STATS] and r.changed == r.unvouched == []
    assert stamp_path("out", TRAIN, tmp_path).stat().st_mtime == 0
    t_train = (tmp_path / "out/runs/vgg-bn-lr0.1").stat().st_mtime
    t_stats = (tmp_path / "out/stats/claims.csv").stat().st_mtime
    assert t_train < t_stats < 2e9


def test_fresh_clone_reruns_what_the_ledger_does_not_vouch_for(tmp_path):
    make_outputs(tmp_path, TRAIN, STATS)
    ledger = ledger_for(PREP, TRAIN, STATS, stats={"stats": {"seed": 1, "ci_level": 0.95}})
    r = sync_stamps([PREP, TRAIN, STATS], RAW, "out", ledger=ledger, root=tmp_path, now=2e9)
    assert r.unvouched == [STATS] and r.adopted == [TRAIN]
    assert stamp_path("out", STATS, tmp_path).stat().st_mtime > (tmp_path / "out/stats/claims.csv").stat().st_mtime


def test_training_is_not_vouched_for_when_its_prepare_params_changed():
    ledger = ledger_for(PREP, TRAIN, prepare__vgg={"prepare.archive": "old.tgz"})
    assert not vouched(TRAIN, RAW, ledger)
    assert vouched(TRAIN, RAW, ledger_for(PREP, TRAIN))
    assert not vouched(TRAIN, RAW, ledger_for(TRAIN))  # no record of its prepare step


def test_read_ledger_takes_dvc_lock_params(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {
        "stats": {"cmd": "x", "params": {"params.yaml": {"stats": {"seed": 0}, "claims": []}}},
        "prepare@vgg": {"cmd": "y"}}}))
    assert read_ledger(lock) == {"stats": {"stats": {"seed": 0}, "claims": []}, "prepare@vgg": {}}
    assert read_ledger(tmp_path / "absent.lock") == {}
    # DVC writes YAML 1.2: 1e-06 there is a float (PyYAML's YAML 1.1 would read text and never match params.yaml)
    lock.write_text("stages:\n  t:\n    params:\n      params.yaml:\n        train.norm: {eps: 1e-05, momentum: 0.1}\n")
    assert read_ledger(lock) == {"t": {"train.norm": {"eps": 1e-05, "momentum": 0.1}}}
    lock.write_text("stages: [unclosed")
    with pytest.raises(ConfigError, match="dvc.lock"):
        read_ledger(lock)


SUMMARIZE = Job("summarize", "", ("out/stats/runs.csv",), ("summarize",), inputs=("out/runs/vgg-bn-lr0.1",))
STATS_IN = Job("stats", "", ("out/stats/claims.csv",), ("stats",), inputs=("out/stats/runs.csv",))
FIGURES = Job("figures", "", ("out/figures",), ("figures",), inputs=("out/runs/vgg-bn-lr0.1", "out/stats/claims.csv"))


def dvc_skipped_stats(root: Path) -> None:
    """The file times `dvc repro` leaves when summarize re-ran with the same result and stats was skipped."""
    make_outputs(root, TRAIN, SUMMARIZE, STATS_IN)
    (root / "out/figures").mkdir()
    for path, t in [("out/runs/vgg-bn-lr0.1", 100), ("out/stats/claims.csv", 200), ("out/figures", 250),
                    ("out/stats/runs.csv", 300)]:
        os.utime(root / path, (t, t))


def test_outputs_dvc_found_current_are_dated_after_a_rewritten_input_and_so_are_their_consumers(tmp_path):
    dvc_skipped_stats(tmp_path)
    asked = []
    done = redate_dvc_checked([TRAIN, SUMMARIZE, STATS_IN, FIGURES], StampReport(), tmp_path,
                              dvc_status=lambda stages: asked.append(stages) or set())
    assert asked == [["stats", "figures"]]  # figures reads claims, which is re-dated: DVC is asked for both at once
    assert done == [STATS_IN, FIGURES]
    t = {p: (tmp_path / p).stat().st_mtime for p in ("out/stats/runs.csv", "out/stats/claims.csv", "out/figures")}
    assert 300 < t["out/stats/claims.csv"] < t["out/figures"]
    assert (tmp_path / "out/runs/vgg-bn-lr0.1").stat().st_mtime == 100  # nothing upstream moves


def test_outputs_dvc_finds_changed_keep_their_times_and_run(tmp_path):
    dvc_skipped_stats(tmp_path)
    done = redate_dvc_checked([TRAIN, SUMMARIZE, STATS_IN, FIGURES], StampReport(), tmp_path,
                              dvc_status=lambda stages: {"stats"})
    assert done == []  # and figures, already newer than what it read, runs after stats does
    assert (tmp_path / "out/stats/claims.csv").stat().st_mtime == 200


def test_nothing_stale_asks_dvc_nothing_and_a_changed_stamp_is_never_redated(tmp_path):
    dvc_skipped_stats(tmp_path)
    os.utime(tmp_path / "out/stats/runs.csv", (150, 150))
    never = lambda stages: pytest.fail(f"asked DVC about {stages}")  # noqa: E731
    assert redate_dvc_checked([TRAIN, SUMMARIZE, STATS_IN, FIGURES], StampReport(), tmp_path, never) == []
    os.utime(tmp_path / "out/stats/runs.csv", (300, 300))
    report = StampReport(changed=[STATS_IN])  # its params changed: it must run, whatever DVC says
    assert redate_dvc_checked([STATS_IN], report, tmp_path, never) == []
    assert (tmp_path / "out/stats/claims.csv").stat().st_mtime == 200


@pytest.mark.parametrize("key", ["out_dir", "train", "typo", "configfile_key"])
def test_unknown_config_keys_are_refused_by_name(key):
    with pytest.raises(ConfigError, match=f"--config {key}"):
        check_config({key: 1})
    check_config({"overlay": "workflow/quick.yaml", "cells": "dln-*"})


def test_cell_selection_by_ids_and_patterns():
    grid = ["vgg-bn-lr0.1", "vgg-standard-lr0.1", "dln-bn-lr1e-06"]
    assert select_cells(grid, None) == grid
    assert select_cells(grid, "dln-*") == ["dln-bn-lr1e-06"]
    assert select_cells(grid, "dln-bn-lr1e-06, vgg-bn-*") == ["vgg-bn-lr0.1", "dln-bn-lr1e-06"]
    with pytest.raises(ConfigError, match="matches no cell"):
        select_cells(grid, "resnet-*")


def test_param_keys_name_keys_that_exist_in_params_yaml(raw_params):
    for step, kw in [("prepare", {"model": "vgg"}), ("prepare", {"model": "dln"}), ("train", {"model": "vgg"}),
                     ("train", {"model": "dln"}), ("probe", {"model": "dln"}), ("lrscan", {"model": "vgg"}),
                     ("lrscan", {"model": "dln"}), ("summarize", {}), ("stats", {}), ("figures", {})]:
        for key in param_keys(step, **kw):
            lookup(raw_params, key)
    with pytest.raises(ConfigError, match="train.nothing"):
        lookup(raw_params, "train.nothing")


def test_a_stale_stamp_adopts_outputs_dvc_made_after_it_but_not_outputs_made_since(tmp_path):
    """dvc repro after a Snakemake run: the stamp holds older params, dvc.lock (written after the outputs) vouches
    for the current ones. Outputs newer than dvc.lock were made by someone else: re-run them."""
    make_outputs(tmp_path, STATS)
    old = yaml.safe_load(yaml.safe_dump(RAW))
    old["stats"]["ci_level"] = 0.5
    sync_stamps([STATS], old, "out", ledger={}, root=tmp_path)
    out_time = (tmp_path / "out/stats/claims.csv").stat().st_mtime
    r = sync_stamps([STATS], RAW, "out", ledger=ledger_for(STATS), root=tmp_path, ledger_time=out_time + 5)
    assert r.adopted == [STATS] and r.changed == []
    assert stamp_path("out", STATS, tmp_path).stat().st_mtime == 0
    sync_stamps([STATS], old, "out", ledger={}, root=tmp_path)  # Snakemake edits back and forth
    r = sync_stamps([STATS], RAW, "out", ledger=ledger_for(STATS), root=tmp_path, ledger_time=out_time - 5)
    assert r.changed == [STATS] and r.adopted == []


# -------------------------------------------------------- issue 26: adoption checks the outputs' content, not params
def test_outputs_whose_content_differs_from_dvc_lock_are_not_adopted(tmp_path):
    make_outputs(tmp_path, TRAIN, STATS)
    asked = []

    def verify(jobs):
        asked.append([j.stage for j in jobs])
        return {"stats"}  # claims.csv edited by hand

    r = sync_stamps([PREP, TRAIN, STATS], RAW, "out", ledger=ledger_for(PREP, TRAIN, STATS), root=tmp_path, now=2e9,
                    verify=verify)
    assert asked == [["train@vgg-bn-lr0.1", "stats"]]  # only the jobs dvc.lock vouches for, in one call
    assert r.adopted == [TRAIN] and r.unvouched == r.altered == [STATS]
    assert stamp_path("out", STATS, tmp_path).stat().st_mtime > (tmp_path / "out/stats/claims.csv").stat().st_mtime


@pytest.mark.slow
def test_a_hand_edited_claim_or_a_deleted_seed_folder_is_found_by_dvc_hashes(tmp_path, monkeypatch):
    """A fresh clone adopted both as current: `snakemake -n` said "Nothing to be done" (issue 26)."""
    import shutil
    import subprocess
    import sys

    from bnflow.dag import dvc_altered_outputs
    from conftest import ROOT
    from test_pipeline import workspace

    ws = workspace(tmp_path / "ws")
    cell = next(c for c in sorted((ROOT / "results" / "runs").iterdir()) if c.name.startswith("dln-")).name
    shutil.copytree(ROOT / "results" / "stats", ws / "results" / "stats")
    for name in ("claims_metrics.json",):  # an output of the stats stage the committed results may predate
        if not (ws / "results" / "stats" / name).exists():
            (ws / "results" / "stats" / name).write_text("{}\n")
    shutil.copytree(ROOT / "results" / "runs" / cell, ws / "results" / "runs" / cell)
    (ws / "results" / "data").mkdir()
    (ws / "results" / "data" / "dln.json").write_text("{}\n")  # the train stage's data input: the manifest
    py = [sys.executable, "-m", "dvc"]
    subprocess.run([*py, "init", "--no-scm", "-q"], cwd=ws, check=True)
    subprocess.run([*py, "commit", "-f", "-q", "stats", f"train@{cell}"], cwd=ws, check=True, capture_output=True)
    stats = Job("stats", "", tuple(f"results/stats/claims.{e}" for e in ("csv", "json", "md")), ())
    train = Job("train", cell, (f"results/runs/{cell}",), ())
    monkeypatch.chdir(ws)  # as in the Snakefile: the project root is the working folder
    ws = Path(".")
    assert dvc_altered_outputs(ws, [stats, train]) == set()
    claims = ws / "results" / "stats" / "claims.csv"
    claims.write_text(claims.read_text().replace("supported", "refuted", 1))
    assert dvc_altered_outputs(ws, [stats, train]) == {"stats"}
    shutil.rmtree(ws / "results" / "runs" / cell / "s1")
    assert dvc_altered_outputs(ws, [stats, train]) == {"stats", f"train@{cell}"}
