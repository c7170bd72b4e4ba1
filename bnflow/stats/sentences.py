"""claims.md's sentences: one paragraph per claim, generated from its claims.csv row and claims.json extras.

Written so that a reader cannot misread them: every number says what it is (a ratio A/B or a difference, paired or
not, against what threshold), every verdict says why, and in particular an unadjusted CI that clears no effect next
to an inconclusive verdict says that the family's multiplicity adjustment is what stopped it; a claim that is not
run yet lists the cells it waits for; a reference arm is named by what it is (chance accuracy, the edge of stability
2/lr), never by a generic word.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bnflow.stats.registry import METRIC_TEXT

_TESTS = {
    "paired_t": "paired t test on the per-seed differences",
    "paired_t_log": "paired t test on the per-seed log ratios",
    "one_sample_t": "one-sample t test against the reference",
    "welch_t": "Welch t test",
    "welch_t_log": "Welch t test on the log scale",
    "welch_t_log_rmst": "Welch t test on the log restricted-mean ratio",
    "fisher_exact": "one-sided Fisher exact test",
    "wilcoxon_signed_rank": "exact Wilcoxon signed-rank test (rank-based, since an arm holds an infinite value)",
    "mann_whitney": "Mann-Whitney rank test (rank-based, since an arm holds an infinite value)",
}
_ADJUSTED = {"holm": "Holm", "bh": "Benjamini-Hochberg"}


def is_na(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and math.isnan(value))


def format_number(value: object, digits: int = 4) -> str:
    """The one number formatter: `digits` significant digits (%g), integers as integers, "" for NA."""
    if is_na(value):
        return ""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    x = float(value)
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return "0" if x == 0 else f"{x:.{digits}g}"  # no "-0"


def _null(row: pd.Series) -> str:
    return "1" if row["scale"] == "ratio" else "0"


def _effect(row: pd.Series, extra: dict) -> str:
    """What the estimate is: a ratio A/B or a difference, how it was averaged, of which summary."""
    a, b, what = row["arm_a"], row["arm_b"], METRIC_TEXT.get(row["metric"], row["metric"])
    test = row["test"]
    if "reference" in extra:
        own = what[4:] if what.startswith("the ") else what
        return (f"The difference between {a}'s {own} and its reference value {format_number(extra['reference'])} "
                f"({extra['reference_label']})")
    if test == "fisher_exact":
        return f"The difference {a} − {b} in {what}"
    how = {"paired_t_log": "geometric mean of the per-seed ratios", "paired_t": "mean of the per-seed differences",
           "welch_t_log": "ratio of the geometric means", "welch_t_log_rmst": "ratio of the restricted means",
           "wilcoxon_signed_rank": "Hodges-Lehmann estimate over seed pairs",
           "mann_whitney": "Hodges-Lehmann estimate"}.get(test, "difference of the means")
    if "restriction_steps" in extra:
        how += (f", steps capped at {int(extra['restriction_steps'])}: {extra['n_censored_a']} {a} and "
                f"{extra['n_censored_b']} {b} runs censored; restricted-mean ratio "
                f"{format_number(extra['restricted_mean_ratio'])}")
    if row["scale"] == "ratio":
        return f"The ratio {a}/{b} of {what} ({how})"
    return f"The difference {a} − {b} in {what} ({how})"


def _threshold(row: pd.Series, extra: dict) -> str:
    kind = row["alternative"]
    rationale = f": {extra['rationale']}" if extra.get("rationale") else ""
    if kind == "tost":
        m = float(row["margin"])
        band = f"{format_number(1 / m)} to {format_number(m)}" if row["scale"] == "ratio" else f"±{format_number(m)}"
        return f"equivalence band {band}{rationale}"
    if not is_na(row["margin"]):
        return f"non-inferiority margin {format_number(row['margin'])}{rationale}"
    s = extra.get("sesoi")
    if s is None:
        return "no smallest effect of interest declared"
    band = (f"{format_number(min(s, 1 / s))} to {format_number(max(s, 1 / s))}" if row["scale"] == "ratio"
            else f"−{format_number(s)} to {format_number(s)}")
    return f"smallest effect of interest {format_number(s)} (no-effect band {band}){rationale}"


def _claimed_side(row: pd.Series, extra: dict) -> str:
    null, better = _null(row), "below" if extra.get("direction") == "lower" else "above"
    if row["alternative"] == "tost":
        return "inside the equivalence band"
    if not is_na(row["margin"]):
        return f"on the better side ({better}) of the margin {format_number(row['margin'])}"
    return f"{better} {null}"


def _why(row: pd.Series, extra: dict) -> str:
    verdict, level = row["verdict"], format_number(100 * float(row["ci_level"]))
    which = "adjusted p" if row["adj_method"] in _ADJUSTED else "p (exploratory: unadjusted)"
    if verdict == "supported":
        text = (f"Supported: the {which} is below alpha {format_number(row['alpha'])} and the whole {level}% CI "
                f"lies {_claimed_side(row, extra)}.")
        if "below_sesoi" in str(row["flags"]):
            text += " The whole CI is also inside the no-effect band: a real effect, smaller than the claim's."
        if "zero_variance" in str(row["flags"]):
            text += " Every run has the same value (zero variance), so the CI is a point: the t test's limit."
        return text
    if verdict == "contradicted":
        if row["alternative"] == "tost":
            return f"Contradicted: the whole {level}% CI lies outside the equivalence band."
        if not is_na(row["margin"]):
            return f"Contradicted: the whole {level}% CI lies beyond the margin {format_number(row['margin'])}."
        other = "above" if extra.get("direction") == "lower" else "below"
        return f"Contradicted: the whole {level}% CI lies {other} {_null(row)} ({row['arm_b']} better)."
    if verdict == "not_reproduced":
        return (f"Not reproduced: the whole {level}% CI lies inside the no-effect band, so any effect is smaller than "
                "the smallest effect of interest.")
    reason, flags = extra.get("reason", "untestable"), str(row["flags"])
    if reason == "adjusted_p":
        return (f"Inconclusive: the unadjusted {level}% CI lies {_claimed_side(row, extra)}, but the "
                f"{_ADJUSTED.get(row['adj_method'], '')}-adjusted p ({format_number(row['p_adj'], 3)}) is not below "
                f"alpha {format_number(row['alpha'])} once all {extra.get('family_size', '')} claims of the "
                f"{row['family']} family are counted, so the claim is not supported.")
    if reason == "unbounded_ci":
        return (f"Inconclusive: an arm holds an infinite value (a blown-up probe or a diverged run), so the rank test "
                f"is primary, and at this n its exact {level}% CI is unbounded: no other verdict is possible.")
    if reason == "ci_crosses":
        if row["alternative"] == "tost":
            return f"Inconclusive: the {level}% CI reaches outside the equivalence band."
        if not is_na(row["margin"]):
            return f"Inconclusive: the {level}% CI reaches beyond the margin {format_number(row['margin'])}."
        return f"Inconclusive: the {level}% CI holds both {_null(row)} (no effect) and effects beyond the sesoi."
    if "no_values" in flags:
        return "Not testable: an arm has runs but no values for this summary (not measured)."
    if "n<2" in flags:
        return "Not testable: an arm has fewer than 2 runs."
    if "zero_variance" in flags:
        return "Not testable: every run has the same value (no variance)."
    return "Not testable."


def _counts(row: pd.Series, extra: dict) -> str:
    n_a = int(row["n_a"])
    if "reference" in extra:
        text = f"n = {n_a} runs"
    elif row["test"] == "fisher_exact":
        text = f"n = {n_a} vs {int(row['n_b'])} runs"
    elif extra.get("paired"):
        text = f"n = {n_a} seed pairs"
    else:
        text = f"n = {n_a} vs {int(row['n_b'])} runs (unpaired)"
    if int(row["n_excluded"]):
        text += f", {int(row['n_excluded'])} run(s) without a value left out"
    diverged = [f"{extra[k]} {row[arm]}" for k, arm in (("n_diverged_a", "arm_a"), ("n_diverged_b", "arm_b"))
                if extra.get(k)]
    if diverged:
        text += f"; diverged runs kept, never dropped ({', '.join(diverged)})"
    return text


def claim_sentence(row: pd.Series, extra: dict) -> str:
    """One Markdown bullet stating a claim's verdict, the numbers behind it and why, generated from its row."""
    figure = f", {extra['figure']}" if extra.get("figure") else ""
    lead = f"- **{row['claim_id']}** ({row['family']}{figure}): {row['hypothesis']}. **{row['verdict']}**."
    flags = str(row["flags"]).replace(";", ", ") if not is_na(row["flags"]) and row["flags"] else "none"
    if row["verdict"] == "not_run_yet":
        cells = extra.get("missing_cells", [])
        where = " (not in train.grid: add it there first)" if "not_in_grid" in flags else ""
        hint = f"`dvc repro train@{cells[0]}`" if cells else "the train step"
        return (f"{lead} Not run yet: no runs of {', '.join(cells)} in runs.csv{where}. Train them ({hint}, ...), "
                f"then re-run summarize and stats.")
    if is_na(row["estimate"]):
        return f"{lead} {_why(row, extra)} {_counts(row, extra) if int(row['n_a']) else ''} Flags: {flags}."
    level = format_number(100 * float(row["ci_level"]))
    ci = "" if is_na(row["ci_low"]) else f" ({level}% CI {format_number(row['ci_low'])} to " \
                                         f"{format_number(row['ci_high'])})"
    side = {"two-sided": "two-sided p", "tost": "TOST p", "less": "one-sided p", "greater": "one-sided p"}
    m = extra.get("family_size", 0)
    adjusted = (f"{_ADJUSTED[row['adj_method']]}-adjusted over the {m} {row['family']} claim{'s' if m != 1 else ''} "
                f"p = {format_number(row['p_adj'], 3)}" if row["adj_method"] in _ADJUSTED
                else "not adjusted (exploratory)")
    better = f"{row['arm_a']} better than {'the reference' if 'reference' in extra else row['arm_b']}"
    return (f"{lead} {_effect(row, extra)} at lr {format_number(row['lr'])} is {format_number(row['estimate'])}{ci}; "
            f"{_threshold(row, extra)}. {_TESTS.get(row['test'], row['test'])}: "
            f"{side.get(row['alternative'], 'p')} = {format_number(row['p_raw'], 3)}, {adjusted} "
            f"(alpha {format_number(row['alpha'])}); {_counts(row, extra)}; P({better}) = "
            f"{format_number(row['prob_a_better'])}. {_why(row, extra)} Flags: {flags}.")
