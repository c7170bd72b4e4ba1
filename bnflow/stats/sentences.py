"""claims.md's blocks: per claim a few short lines (verdict, estimate and CI, test, counts, flags) and a paragraph
saying what the numbers are and why the verdict follows, generated from its claims.csv row and claims.json extras.

Written so that a reader cannot misread them: every number says what it is (a ratio A/B or a difference, paired or
not, against what threshold), every verdict says why, and in particular an unadjusted CI that clears no effect next
to an inconclusive verdict says that the family's multiplicity adjustment is what stopped it; every adjusted p names
the family it was adjusted over; a claim that is not run yet lists the cells or seeds it waits for; a post hoc claim
says which look produced it; a reference arm is named by what it is (chance accuracy, the edge of stability 2/lr).
Numbers that change with the data sit on their own short lines, never inside the wrapped paragraph, so that one
changed number changes one line of claims.md's diff.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd

from bnflow.stats.registry import METRIC_TEXT, seed_text
from bnflow.vocab import POST_HOC

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
_ROBUST = {"sign_flip": "exact sign-flip test", "permutation_u": "exact rank permutation test",
           "mcnemar_exact": "exact McNemar test"}
WIDTH = 100  # claims.md's paragraphs are wrapped here


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
        how += ", with steps capped at the budget common to both arms"
    if row["metric"] == "train_loss_auc_log":  # a mean of log losses: its exp is a geometric mean, not an area
        what = "the geometric-mean train loss over the run (exp of the mean log-loss difference)"
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
        text = (f"Not reproduced: the whole {level}% CI lies inside the no-effect band, so any effect is smaller "
                "than the smallest effect of interest.")
        if "opposite_side" in str(row["flags"]):
            text += (f" The CI also lies wholly on the other side of {_null(row)} ({row['arm_b']} better), but inside "
                     "the band: a negligible effect the wrong way, which the rules read as not reproduced rather "
                     "than contradicted.")
        return text
    if verdict == POST_HOC:
        twin = row["claim_id"].removesuffix("_posthoc")
        confirm = f" Its confirmatory twin {twin} tests it on fresh seeds." if twin != row["claim_id"] else ""
        return (f"Post hoc: this claim was generated by the look at {_seeds(extra)} (STATS.md, \"Registry v3 "
                "additions\"). Data that generated a hypothesis cannot confirm it, so its p is never adjusted and "
                f"the claim is never supported; the numbers above only describe that look.{confirm}")
    reason, flags = extra.get("reason", "untestable"), str(row["flags"])
    if reason == "adjusted_p":
        return (f"Inconclusive: the unadjusted {level}% CI lies {_claimed_side(row, extra)}, but the "
                f"{_ADJUSTED.get(row['adj_method'], '')}-adjusted p is not below "
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


def _seeds(extra: dict) -> str:
    """The claim's seed range as words: "seeds 5–19", or "every seed of its cells" when it names none."""
    seeds = extra.get("seeds")
    return "every seed of its cells" if not seeds else f"seeds {seed_text(range(seeds[0], seeds[1] + 1))}"


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
    text += f" ({_seeds(extra)})"
    if int(row["n_excluded"]):
        text += f", {int(row['n_excluded'])} run(s) without a value left out"
    diverged = [f"{extra[k]} {row[arm]}" for k, arm in (("n_diverged_a", "arm_a"), ("n_diverged_b", "arm_b"))
                if extra.get(k)]
    if diverged:
        text += f"; diverged runs kept, never dropped ({', '.join(diverged)})"
    return text


def adjusted_p_text(row: pd.Series, extra: dict) -> str:
    """The adjusted p and the family it comes from: "p_adj 0.012 (Holm over dln_early, 3 claims)"."""
    if row["adj_method"] not in _ADJUSTED:
        why = "post hoc" if row["family"] == POST_HOC else "exploratory"
        return f"p_adj {format_number(row['p_adj'], 3)} (not adjusted: {why})"
    m = extra.get("family_size", 0)
    return (f"p_adj {format_number(row['p_adj'], 3)} ({_ADJUSTED[row['adj_method']]} over {row['family']}, "
            f"{m} claim{'s' if m != 1 else ''})")


def _robustness(row: pd.Series, extra: dict) -> str:
    """What the exact robustness test can say at this n (flag robustness_floor: nothing, whatever its p)."""
    if "robustness_floor" not in str(row["flags"]):
        return ""
    name = _ROBUST.get(extra.get("robust_test"), "exact robustness test")
    return (f"The {name} cannot reach alpha {format_number(row['alpha'])} at this n (its smallest possible p is "
            f"{format_number(extra.get('robust_min_p'), 3)}), so its p neither confirms nor contradicts the primary "
            "test (flag robustness_floor).")


def _waiting(row: pd.Series, extra: dict) -> str:
    """Why a not_run_yet claim waits, and what to run."""
    cells = extra.get("missing_cells", [])
    partial = extra.get("missing_seeds", {})
    parts = []
    if cells:
        where = " (not in train.grid: add it there first)" if "not_in_grid" in str(row["flags"]) else ""
        parts.append(f"no runs of {', '.join(cells)} in runs.csv{where}")
    if partial:
        parts.append("; ".join(f"{cell} lacks seed(s) {seed_text(seeds)}" for cell, seeds in partial.items()))
        parts.append(f"the claim tests {_seeds(extra)} and is decided only when every arm holds all of them (a "
                     "partial seed set never silently shrinks n)")
    first = (cells or list(partial))[:1]
    hint = f"`dvc repro train@{first[0]}`" if first else "the train step"
    return f"Not run yet: {'; '.join(parts)}. Train them ({hint}, ...), then re-run summarize and stats."


def claim_sentence(row: pd.Series, extra: dict) -> str:
    """The paragraph of a claim's block: what the estimate is, against what threshold, and why the verdict follows.

    Only numbers fixed by the registry (alpha, sesoi, margin, family size) or by n appear here; the data's numbers
    are on the block's own lines (claim_lines).
    """
    if row["verdict"] == "not_run_yet":
        return _waiting(row, extra)
    if is_na(row["estimate"]):
        return _why(row, extra)
    parts = [f"{_effect(row, extra)} at lr {format_number(row['lr'])}; {_threshold(row, extra)}.",
             f"Primary test: {_TESTS.get(row['test'], row['test'])}.", _why(row, extra), _all_censored(row, extra),
             _robustness(row, extra)]
    return " ".join(p for p in parts if p)


def _all_censored(row: pd.Series, extra: dict) -> str:
    """A time-to-threshold claim whose every run, in both arms, is censored, or a reach-the-threshold fraction that
    is 0 in both arms (Fisher's test): the rule's verdict, and what it is not."""
    if is_na(row["n_a"]) or is_na(row["n_b"]):
        return ""
    if row["test"] == "fisher_exact" and extra.get("mean_a") == 0 and extra.get("mean_b") == 0:
        return (f"No run of either arm reached the threshold (0 of {int(row['n_a'])}, 0 of {int(row['n_b'])}), so the "
                "difference is 0 by construction and measures the step budget, not the arms. The verdict is what the "
                "registered rule gives; it is no evidence that the effect is absent.")
    if "restriction_steps" not in extra:
        return ""
    if extra["n_censored_a"] < int(row["n_a"]) or extra["n_censored_b"] < int(row["n_b"]):
        return ""
    return (f"Every run of both arms is censored: none reached the threshold within "
            f"{int(extra['restriction_steps'])} steps, so the ratio is 1 by construction and measures the step "
            "budget, not the arms. The verdict is what the registered rule gives; it is no evidence that the "
            "effect is absent (flag censoring>50%).")


def claim_lines(row: pd.Series, extra: dict) -> list[str]:
    """A claim's block in claims.md: heading, one short line per fact (so a changed number changes one line), and
    the paragraph wrapped at WIDTH characters."""
    figure = f", {extra['figure']}" if extra.get("figure") else ""
    method = {"holm": "Holm", "bh": "Benjamini-Hochberg"}.get(row["adj_method"], "not adjusted")
    flags = str(row["flags"]).replace(";", ", ") if not is_na(row["flags"]) and row["flags"] else "none"
    label = {"exploratory": " (exploratory)", "exploratory_cpu": " (exploratory)", POST_HOC: " (post hoc)"}
    lines = [f"### {row['claim_id']}{label.get(row['family'], '')}", "", f"- hypothesis: {row['hypothesis']}",
             f"- family: {row['family']} ({method}){figure}; {_seeds(extra)}", f"- verdict: **{row['verdict']}**"]
    if not is_na(row["estimate"]):
        level = format_number(100 * float(row["ci_level"]))
        ci = "" if is_na(row["ci_low"]) else \
            f", {level}% CI {format_number(row['ci_low'])} to {format_number(row['ci_high'])}"
        kind = f"ratio {row['arm_a']}/{row['arm_b']}" if row["scale"] == "ratio" and "reference" not in extra else \
            "difference"
        side = {"two-sided": "two-sided p", "tost": "TOST p", "less": "one-sided p", "greater": "one-sided p"}
        better = f"{row['arm_a']} better than {'the reference' if 'reference' in extra else row['arm_b']}"
        lines += [f"- estimate: {format_number(row['estimate'])}{ci} ({kind})",
                  f"- test: {row['test']}, {side.get(row['alternative'], 'p')} {format_number(row['p_raw'], 3)}; "
                  f"{adjusted_p_text(row, extra)}"]
        if not is_na(extra.get("robust_p")):
            lines.append(f"- robustness: {extra['robust_test']} p {format_number(extra['robust_p'], 3)}")
        if "restriction_steps" in extra:
            lines.append(f"- censoring: steps capped at {int(extra['restriction_steps'])}; {extra['n_censored_a']} "
                         f"{row['arm_a']} and {extra['n_censored_b']} {row['arm_b']} runs censored; restricted-mean "
                         f"ratio {format_number(extra['restricted_mean_ratio'])}")
        lines.append(f"- P({better}): {format_number(row['prob_a_better'])}")
    if row["verdict"] != "not_run_yet" and (int(row["n_a"]) or not is_na(row["estimate"])):
        lines.append(f"- runs: {_counts(row, extra)}")
    lines += [f"- flags: {flags}", "", textwrap.fill(claim_sentence(row, extra), WIDTH, break_long_words=False,
                                                       break_on_hyphens=False), ""]
    return lines
