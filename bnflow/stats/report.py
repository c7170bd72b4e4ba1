"""Write evaluated claims as claims.csv, claims.json (for `dvc metrics diff`) and claims.md (STATS.md).

Outputs diff well: fixed column order, rows sorted by claim_id, one number formatter (4 significant digits,
p-values 3), empty cells for NA, no timestamps or paths; the same table always gives byte-identical files.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bnflow.io import atomic_path
from bnflow.stats.claims import COLUMNS

P_COLUMNS = ("p_raw", "p_adj")
INT_COLUMNS = ("n_a", "n_b", "n_excluded")
TEXT_COLUMNS = ("claim_id", "family", "hypothesis", "metric", "scale", "arm_a", "arm_b", "test", "alternative",
                "adj_method", "verdict", "flags")
_TEST_NAMES = {"welch_t": "Welch t", "welch_t_log": "Welch t on the log scale",
               "welch_t_log_rmst": "Welch t on the log restricted-mean ratio", "one_sample_t": "one-sample t",
               "fisher_exact": "Fisher exact test"}
_ADJUSTED = {"holm": "Holm-adjusted", "bh": "BH-adjusted"}


def _is_na(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and math.isnan(value))


def format_number(value: object, digits: int = 4) -> str:
    """The one number formatter: `digits` significant digits (%g), integers as integers, "" for NA."""
    if _is_na(value):
        return ""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    x = float(value)
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return "0" if x == 0 else f"{x:.{digits}g}"  # no "-0"


def format_cell(column: str, value: object) -> str:
    """A CSV cell: text as is, counts as integers, p-values to 3 significant digits, other numbers to 4."""
    if column in TEXT_COLUMNS:
        return "" if _is_na(value) else str(value)
    if column in INT_COLUMNS:
        return "" if _is_na(value) else str(int(value))
    return format_number(value, 3 if column in P_COLUMNS else 4)


def _json_value(column: str, value: object) -> object:
    """A JSON value rounded exactly as the CSV shows it (so the two never disagree); null for NA or ±inf."""
    if isinstance(value, str) or _is_na(value):
        return None if _is_na(value) else value
    if column in INT_COLUMNS or (isinstance(value, (int, np.integer)) and not isinstance(value, bool)):
        return int(value)
    x = float(value)
    return float(format_number(x, 3 if column.endswith("_p") or column in P_COLUMNS else 4)) if math.isfinite(x) \
        else None


def _sorted_rows(df: pd.DataFrame) -> pd.DataFrame:
    if tuple(df.columns) != COLUMNS:
        raise ValueError(f"claims table: columns must be exactly {', '.join(COLUMNS)}; got {', '.join(df.columns)}")
    return df.sort_values("claim_id", kind="stable").reset_index(drop=True)


def _write(path: str | Path, text: str) -> None:
    """Write UTF-8 text with '\\n' line ends atomically (temp file beside `path`, then os.replace)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(text.encode("utf-8"))


def claims_csv_text(df: pd.DataFrame) -> str:
    """claims.csv as a string: header COLUMNS, one formatted row per claim, sorted by claim_id."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for _, row in _sorted_rows(df).iterrows():
        writer.writerow([format_cell(c, row[c]) for c in COLUMNS])
    return buf.getvalue()


def claims_json_obj(df: pd.DataFrame) -> dict:
    """claims.json's content: {claim_id: {column: value, ..., flags: [...], extras...}} without the hypothesis text.

    Extras (robust_test, robust_p, Welch df, arm means, bootstrap CI of prob_a_better, censoring counts) come from
    df.attrs["extras"] when evaluate_claims produced the table.
    """
    extras = df.attrs.get("extras", {})
    out: dict[str, dict] = {}
    for _, row in _sorted_rows(df).iterrows():
        entry = {c: _json_value(c, row[c]) for c in COLUMNS if c not in ("claim_id", "hypothesis")}
        entry["flags"] = [f for f in str(row["flags"]).split(";") if f] if not _is_na(row["flags"]) else []
        for key, value in extras.get(row["claim_id"], {}).items():
            entry[key] = _json_value(key, value)
        out[row["claim_id"]] = entry
    return out


def _effect_phrase(row: pd.Series, reference: object) -> str:
    a, b, metric = row["arm_a"], row["arm_b"], row["metric"]
    test = row["test"]
    if test == "welch_t_log_rmst":
        return f"restricted-mean ratio {a}/{b} of {metric}"
    if test == "welch_t_log":
        return f"ratio {a}/{b} (exp of the difference in {metric})"
    if test == "one_sample_t":
        return f"difference {a} − chance ({format_number(reference)}) in {metric}"
    if test == "fisher_exact":
        return f"difference {a} − {b} in the fraction of runs with {metric}"
    return f"difference {a} − {b} in {metric}"


def claim_sentence(row: pd.Series, extra: dict) -> str:
    """One Markdown bullet stating a claim's verdict and the numbers behind it, generated from its row."""
    lead = f"- **{row['claim_id']}** ({row['family']}): {row['hypothesis']} — **{row['verdict']}**."
    flags = str(row["flags"]).replace(";", ", ") if not _is_na(row["flags"]) and row["flags"] else "none"
    level = format_number(100 * float(row["ci_level"]))
    if _is_na(row["estimate"]):
        n_b = "chance" if _is_na(row["n_b"]) else format_cell("n_b", row["n_b"])
        return f"{lead} Not evaluated: n = {format_cell('n_a', row['n_a'])} vs {n_b} " \
               f"usable runs ({format_cell('n_excluded', row['n_excluded'])} excluded). Flags: {flags}."
    ci = "" if _is_na(row["ci_low"]) else f" ({level}% CI {format_number(row['ci_low'])} to " \
                                           f"{format_number(row['ci_high'])})"
    if row["alternative"] == "two-sided":
        kind = "two-sided p"
    elif row["alternative"] == "tost":
        kind = f"equivalence (TOST) p for margin {format_number(row['margin'])}"
    else:
        kind = f"one-sided p against the margin {format_number(row['margin'])}"
    adjusted = f"{_ADJUSTED[row['adj_method']]} p = {format_cell('p_adj', row['p_adj'])}" \
        if row["adj_method"] in _ADJUSTED else "not adjusted (exploratory)"
    n_b = "" if _is_na(row["n_b"]) else f" vs {format_cell('n_b', row['n_b'])}"
    better = f"{row['arm_a']} better than {'chance' if row['arm_b'] == 'chance' else row['arm_b']}"
    return (f"{lead} The {_effect_phrase(row, extra.get('reference'))} at lr {format_number(row['lr'])} is "
            f"{format_number(row['estimate'])}{ci}; {_TEST_NAMES.get(row['test'], row['test'])}, {kind} = "
            f"{format_cell('p_raw', row['p_raw'])}, {adjusted} (alpha {format_number(row['alpha'])}); "
            f"n = {format_cell('n_a', row['n_a'])}{n_b}, {format_cell('n_excluded', row['n_excluded'])} excluded; "
            f"P({better}) = {format_number(row['prob_a_better'])}. Flags: {flags}.")


def claims_md_text(df: pd.DataFrame) -> str:
    """claims.md as a string: a title and one generated sentence per claim, sorted by claim_id."""
    extras = df.attrs.get("extras", {})
    lines = ["# Claims", "", "Generated from claims.csv by `bnflow stats`; verdict rules in bnflow/stats/claims.py.",
             ""]
    lines += [claim_sentence(row, extras.get(row["claim_id"], {})) for _, row in _sorted_rows(df).iterrows()]
    return "\n".join(lines) + "\n"


def write_claims_csv(df: pd.DataFrame, path: str | Path) -> None:
    """Write claims.csv atomically (see claims_csv_text)."""
    _write(path, claims_csv_text(df))


def write_claims_json(df: pd.DataFrame, path: str | Path) -> None:
    """Write claims.json atomically: indented, keys in column order, claims sorted by id, NaN as null."""
    _write(path, json.dumps(claims_json_obj(df), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def write_claims_md(df: pd.DataFrame, path: str | Path) -> None:
    """Write claims.md atomically (see claims_md_text)."""
    _write(path, claims_md_text(df))
