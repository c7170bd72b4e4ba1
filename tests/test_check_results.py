"""The pull-request check "committed results match dvc.lock" (bnflow/check_results.py, called by pr.yml): green on
an untouched clone, red on a hand-edited result and on a params edit without a re-run (issue 24, part 4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bnflow.check_results import judge, markdown, summary
from conftest import ROOT

CACHED = {"results/data/dln.npz", "results/data/vgg.npz", "results/checkpoints/dln-bn-lr1e-06"}


def test_stages_never_run_and_absent_cached_files_are_expected():
    status = {  # a fresh clone: VGG never run (no dvc.lock entry), the DLN's cached files not pulled
        "train@vgg-bn-lr0.1": [{"changed deps": {"params.yaml": "new", "results/data/vgg.npz": "deleted"}},
                               {"changed outs": {"results/runs/vgg-bn-lr0.1": "deleted"}}],
        "train@dln-bn-lr1e-06": [{"changed deps": {"results/data/dln.npz": "deleted"}},
                                 {"changed outs": {"results/checkpoints/dln-bn-lr1e-06": "not in cache"}}],
    }
    v = judge(status, ["train@dln-bn-lr1e-06", "stats"], CACHED.__contains__)
    assert v.ok and v.not_run == ["train@vgg-bn-lr0.1"] and v.checked == ["stats", "train@dln-bn-lr1e-06"]
    assert sorted(v.absent) == ["results/checkpoints/dln-bn-lr1e-06", "results/data/dln.npz"]
    assert summary(v).startswith("committed results match dvc.lock: 2 stages of dvc.lock checked; 1 not run yet")


def test_a_committed_stage_that_differs_or_is_stale_fails():
    status = {
        "stats": [{"changed deps": {"params.yaml": {"stats.ci_level": "modified"}}},
                  {"changed outs": {"results/stats/claims.csv": "modified"}}],
        "summarize": [{"changed outs": {"results/stats/runs.csv": "deleted"}}],  # committed (not ignored): missing
        "figures": ["changed command"],
        "train@dln-bn-lr1e-06": [{"changed outs": {"results/checkpoints/dln-bn-lr1e-06": "not in cache"}}],
    }
    v = judge(status, ["stats", "summarize", "figures", "train@dln-bn-lr1e-06"], CACHED.__contains__)
    assert v.stale == {"stats": ["changed deps: params.yaml stats.ci_level modified",
                                 "changed outs: results/stats/claims.csv modified"],
                       "summarize": ["changed outs: results/stats/runs.csv deleted"],
                       "figures": ["changed command"]}
    assert markdown(v).count("\n- `") == 3 and "- `stats`: changed deps: params.yaml stats.ci_level" in markdown(v)


def _check(clone: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnflow.check_results", "--root", str(clone),
                           "--markdown", str(clone / "dvc-status.md")], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.slow
def test_on_a_clone_head_passes_a_hand_edit_and_a_params_edit_fail(tmp_path):
    clone = tmp_path / "main"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    ok = _check(clone)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("committed results match dvc.lock") and not (clone / "dvc-status.md").exists()

    claims = clone / "results" / "stats" / "claims.csv"
    claims.write_text(claims.read_text().replace("supported", "contradicted", 1).replace("inconclusive", "x", 1))
    edited = _check(clone)
    assert edited.returncode == 1 and "- stats: changed outs: results/stats/claims.csv modified" in edited.stdout
    subprocess.run(["git", "checkout", "-q", "--", "results/stats/claims.csv"], cwd=clone, check=True)

    params = yaml.safe_load((clone / "params.yaml").read_text())
    level = params["stats"]["ci_level"]
    text = (clone / "params.yaml").read_text()
    (clone / "params.yaml").write_text(text.replace(f"ci_level: {level}", f"ci_level: {0.9 if level != 0.9 else 0.8}",
                                                    1))
    stale = _check(clone)
    assert stale.returncode == 1 and "- stats: changed deps: params.yaml stats modified" in stale.stdout
    assert "`stats`" in (clone / "dvc-status.md").read_text()
