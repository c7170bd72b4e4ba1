"""REPORT.md's opening verdict table (issue 22 part 4): built from claims.csv, paper and reduced scale side by side,
exploratory and post hoc claims labelled, before the figures."""

from __future__ import annotations

import math

import pandas as pd

from bnflow.figures.report import report_markdown, verdict_table

CLAIMS = pd.DataFrame([
    # claims.csv's columns that the table reads, in claims.csv's (natural) order: C1_cpu after C1
    dict(claim_id="C10", family="exploratory", verdict="supported", estimate=0.05, ci_low=0.002111, ci_high=0.09789),
    dict(claim_id="C1_cpu", family="primary_cpu", verdict="not_run_yet", estimate=math.nan, ci_low=math.nan,
         ci_high=math.nan),
    dict(claim_id="C1", family="primary", verdict="supported", estimate=0.3411, ci_low=0.2703, ci_high=0.4305),
    dict(claim_id="C3e_dln_posthoc", family="post_hoc", verdict="post_hoc", estimate=0.1353, ci_low=0.0873,
         ci_high=0.2098),
    dict(claim_id="C3", family="primary", verdict="inconclusive", estimate=0.3345, ci_low=0.0, ci_high=math.inf),
])
MODELS = {"C1": "vgg", "C1_cpu": "vgg_cpu", "C10": "vgg", "C3": "vgg", "C3e_dln_posthoc": "dln"}


def test_the_verdict_table_by_hand():
    table = verdict_table(CLAIMS, MODELS)
    assert list(table.columns) == ["claim", "scale", "verdict", "estimate", "CI", "family"]
    assert table.values.tolist() == [
        ["C1", "paper", "supported", "0.3411", "0.2703 to 0.4305", "primary"],
        ["C1_cpu", "reduced (vgg_cpu)", "not_run_yet", "—", "—", "primary_cpu"],  # side by side with C1
        ["C3", "paper", "inconclusive", "0.3345", "0 to inf", "primary"],
        ["C10 (exploratory)", "paper", "supported", "0.05", "0.002111 to 0.09789", "exploratory"],
        ["C3e_dln_posthoc (post hoc)", "DLN", "post_hoc", "0.1353", "0.0873 to 0.2098", "post_hoc"],
    ]


def test_report_opens_with_the_verdicts_before_the_figures():
    md = report_markdown([], header="h", claims_md="# Claims\n\n### C1\n", verdicts=verdict_table(CLAIMS, MODELS))
    assert md.index("## Verdicts") < md.index("## Contents") < md.index("## Figures") < md.index("## Claims")
    assert "| C1_cpu | reduced (vgg_cpu) | not_run_yet |" in md
    assert "ratio of geometric-mean losses (exp of the mean log-loss difference), not a ratio of areas" in md
    assert "[Claims: why each verdict](#claims)" in md and '<a id="claims"></a>' in md
    assert "## Verdicts" not in report_markdown([], header="h", claims_md=None)  # no claims.csv: no table


def test_the_figures_step_reads_claims_csv_beside_claims_md(tmp_path):
    """render's table comes from the claims.csv the stats step wrote next to claims.md; without it, no table."""
    from bnflow.config import load_params
    from bnflow.figures.render import _verdicts
    from bnflow.stats import evaluate_claims, write_claims_csv
    from conftest import ROOT

    params = load_params(ROOT / "params.yaml")
    claims = [c for c in params.claims if c.id in ("C12_dln", "C3e", "C3e_cpu")]
    runs = pd.DataFrame([dict(model="dln", variant=v, lr=1e-6, seed=s, diverged=False, step_budget=100,
                              train_loss_auc_log=2.0 + 0.1 * s + (0.3 if v == "standard" else 0.0), **{
                                  "band_peak_early_log": 1.0}) for v in ("bn", "standard") for s in range(5)])
    write_claims_csv(evaluate_claims(runs, claims, seed=0), tmp_path / "claims.csv")
    table = _verdicts(params, tmp_path / "claims.csv")
    assert table[["claim", "scale", "verdict"]].values.tolist() == [
        ["C3e", "paper", "not_run_yet"], ["C3e_cpu", "reduced (vgg_cpu)", "not_run_yet"],
        ["C12_dln", "DLN", "supported"]]
    assert _verdicts(params, tmp_path / "absent.csv") is None


def test_the_grid_section_lists_the_claimed_cells_the_grid_does_not_hold():
    """Issue 23: cells not run at the reduced scale (and the GPU's paper-scale cells) are listed in REPORT.md."""
    from bnflow.config import from_dict, read_yaml
    from bnflow.figures.render import _claim_cells
    from bnflow.figures.report import unlisted_cells
    from conftest import ROOT

    claimed = [("vgg_cpu", "vgg_cpu-bn-lr0.1"), ("vgg_cpu", "vgg_cpu-l1-lr0.1"), ("vgg", "vgg-bn-lr0.5"),
               ("vgg_cpu", "vgg_cpu-l1-lr0.1"), ("vgg_cpu", "vgg_cpu-bn-lr0.01"), ("dln", "dln-bn-lr1e-06")]
    unlisted = unlisted_cells(claimed, ["vgg_cpu-bn-lr0.1", "dln-bn-lr1e-06"])
    assert unlisted == {"vgg": ["vgg-bn-lr0.5"], "vgg_cpu": ["vgg_cpu-bn-lr0.01", "vgg_cpu-l1-lr0.1"]}
    grid = pd.DataFrame({"cell": ["vgg_cpu-bn-lr0.1"], "model": ["vgg_cpu"], "variant": ["bn"], "lr": [0.1],
                         "present": [True], "seeds": ["0 1"]})
    md = report_markdown([], header="h", claims_md=None, grid=grid, unlisted=unlisted)
    assert ("- reduced-scale VGG, not run here yet (results/README.md says which run next and which are beyond this "
            "machine's budget; add a cell to train.grid to run it): vgg_cpu-bn-lr0.01, vgg_cpu-l1-lr0.1.") in md
    assert "- paper-scale VGG, which needs a GPU (workflow/paper-vgg.yaml lists its cells): vgg-bn-lr0.5." in md
    assert md.index("| vgg_cpu-bn-lr0.1 |") < md.index("- reduced-scale VGG") < md.index("## Figures")
    assert "does not hold" not in report_markdown([], header="h", claims_md=None, grid=grid, unlisted={})
    # the committed registry: each arm's cell named as the grid names it (a reference such as "chance" is no cell)
    p = from_dict(read_yaml(ROOT / "params.yaml"), check_files=False)
    cells = {cell for _, cell in _claim_cells(p)}
    assert {"vgg_cpu-bn-lr0.1", "dln-bn-lr1e-06", "dln-bn-lr1e-07", "vgg_cpu-noisy_standard-lr0.1"} <= cells
    assert not any(c.endswith(("-chance-lr0.1", "-2/lr-lr0.1")) for c in cells)
