"""Write evaluated claims as claims.csv, claims.json, claims.md (STATS.md) and claims_metrics.json (DVC's metrics).

claims_metrics.json is what `dvc metrics diff` and `dvc exp show` read: per claim only numbers, the estimate, its CI,
p_adj and the verdict as a code (VERDICT_CODES: 0 not_run_yet, 1 supported, 2 inconclusive, 3 not_reproduced,
4 contradicted, 5 post_hoc; the legend is in README.md too). A number that is NA or ±inf (an unbounded rank CI) is
left out rather than written as null or text, so a not-run-yet claim is only its verdict code and no row churns from
null to null. claims.json keeps every column and extra (cache: false, not a DVC metric).

Outputs diff well: fixed column order, rows in natural claim order (C1, C2a, …, C9, C10, …, then the DLN's), one
number formatter (4 significant digits, p-values 3), empty cells for NA, no timestamps or paths; the same table
always gives byte-identical files. In claims.json NaN is null and ±inf (a rank CI at small n, a blown-up arm) is
the string "inf" / "-inf", since JSON has no infinity.
"""

from __future__ import annotations

import csv
import io
import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from bnflow.io import atomic_path
from bnflow.stats.evaluate import COLUMNS
from bnflow.stats.registry import natural_key
from bnflow.stats.sentences import WIDTH, claim_lines, format_number, is_na

P_COLUMNS = ("p_raw", "p_adj")
VERDICT_CODES = {"not_run_yet": 0, "supported": 1, "inconclusive": 2, "not_reproduced": 3, "contradicted": 4,
                 "post_hoc": 5}
"""claims_metrics.json's verdict numbers (README.md "stats" repeats the legend); a test checks every verdict has one."""
METRIC_COLUMNS = ("estimate", "ci_low", "ci_high", "p_adj")
INT_COLUMNS = ("n_a", "n_b", "n_excluded")
TEXT_COLUMNS = ("claim_id", "family", "hypothesis", "metric", "scale", "arm_a", "arm_b", "test", "alternative",
                "adj_method", "verdict", "flags")


def format_cell(column: str, value: object) -> str:
    """A CSV cell: text as is, counts as integers, p-values to 3 significant digits, other numbers to 4."""
    if column in TEXT_COLUMNS:
        return "" if is_na(value) else str(value)
    if column in INT_COLUMNS:
        return "" if is_na(value) else str(int(value))
    return format_number(value, 3 if column in P_COLUMNS else 4)


def _json_value(column: str, value: object) -> object:
    """A JSON value rounded exactly as the CSV shows it (so the two never disagree); null for NA, "inf" for ±inf."""
    if isinstance(value, (list, tuple)):
        return [_json_value(column, v) for v in value]
    if isinstance(value, dict):  # e.g. missing_seeds: {cell: [seeds]}
        return {str(k): _json_value(column, v) for k, v in value.items()}
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) or is_na(value):
        return None if is_na(value) else value
    if column in INT_COLUMNS or (isinstance(value, (int, np.integer))):
        return int(value)
    x = float(value)
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return float(format_number(x, 3 if column.endswith("_p") or column in P_COLUMNS else 4))


def sorted_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The claims table in natural claim order; ValueError unless its columns are exactly COLUMNS."""
    if tuple(df.columns) != COLUMNS:
        raise ValueError(f"claims table: columns must be exactly {', '.join(COLUMNS)}; got {', '.join(df.columns)}")
    order = sorted(range(len(df)), key=lambda i: natural_key(str(df["claim_id"].iloc[i])))
    return df.iloc[order].reset_index(drop=True)


def _write(path: str | Path, text: str) -> None:
    """Write UTF-8 text with '\\n' line ends atomically (temp file beside `path`, then os.replace)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(text.encode("utf-8"))


def claims_csv_text(df: pd.DataFrame) -> str:
    """claims.csv as a string: header COLUMNS, one formatted row per claim, in natural claim order."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for _, row in sorted_rows(df).iterrows():
        writer.writerow([format_cell(c, row[c]) for c in COLUMNS])
    return buf.getvalue()


def claims_json_obj(df: pd.DataFrame) -> dict:
    """claims.json's content: {claim_id: {column: value, ..., flags: [...], extras...}} without the hypothesis text.

    Extras (figure, sesoi, rationale, robustness tests, the Welch row of paired claims, arm means, bootstrap CI of
    prob_a_better, censoring counts, missing cells, the reason of an inconclusive row) come from df.attrs["extras"].
    """
    extras = df.attrs.get("extras", {})
    out: dict[str, dict] = {}
    for _, row in sorted_rows(df).iterrows():
        entry = {c: _json_value(c, row[c]) for c in COLUMNS if c not in ("claim_id", "hypothesis")}
        entry["flags"] = [f for f in str(row["flags"]).split(";") if f] if not is_na(row["flags"]) else []
        for key, value in extras.get(row["claim_id"], {}).items():
            entry[key] = _json_value(key, value)
        out[row["claim_id"]] = entry
    return out


def claims_metrics_obj(df: pd.DataFrame) -> dict:
    """claims_metrics.json's content: {claim_id: {verdict: code, estimate, ci_low, ci_high, p_adj}}, numbers only,
    rounded as claims.csv shows them; NA and ±inf left out (see the module docstring)."""
    out: dict[str, dict] = {}
    for _, row in sorted_rows(df).iterrows():
        entry: dict = {"verdict": VERDICT_CODES[row["verdict"]]}
        if row["verdict"] != "not_run_yet":
            for column in METRIC_COLUMNS:
                value = row[column]
                if not is_na(value) and math.isfinite(float(value)):
                    entry[column] = float(format_number(float(value), 3 if column in P_COLUMNS else 4))
        out[row["claim_id"]] = entry
    return out


def claims_md_text(df: pd.DataFrame) -> str:
    """claims.md as a string: a title, how to read it, and one generated block per claim, in natural order."""
    extras = df.attrs.get("extras", {})
    rows = sorted_rows(df)
    counts = rows["verdict"].value_counts()
    tally = ", ".join(f"{int(counts[v])} {v}" for v in VERDICT_CODES if v in counts)
    intro = ("Generated from claims.csv by `bnflow stats` (verdict rules: bnflow/stats/decide.py, STATS.md). "
             "supported: the adjusted test rejects and the CI lies on the claimed side; contradicted: the CI lies on "
             "the other side, beyond the no-effect band; not_reproduced: the CI lies inside the claim's no-effect "
             "band (any effect is smaller than its smallest effect of interest); inconclusive: none of these; "
             "not_run_yet: an arm's cells, or the claim's seeds, have no runs yet; post_hoc: a claim generated by a "
             "look at the data, shown but never supported. Ratios are arm A / arm B. Each p_adj names the family it "
             "was adjusted over.")
    lines = ["# Claims", "", textwrap.fill(intro, WIDTH), "", f"Verdicts: {tally}.", ""]
    for _, row in rows.iterrows():
        lines += claim_lines(row, extras.get(row["claim_id"], {}))
    return "\n".join(lines).rstrip("\n") + "\n"


def write_claims_csv(df: pd.DataFrame, path: str | Path) -> None:
    """Write claims.csv atomically (see claims_csv_text)."""
    _write(path, claims_csv_text(df))


def write_claims_json(df: pd.DataFrame, path: str | Path) -> None:
    """Write claims.json atomically: indented, keys in column order, claims in natural order, NaN as null."""
    _write(path, json.dumps(claims_json_obj(df), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def write_claims_md(df: pd.DataFrame, path: str | Path) -> None:
    """Write claims.md atomically (see claims_md_text)."""
    _write(path, claims_md_text(df))


def write_claims_metrics(df: pd.DataFrame, path: str | Path) -> None:
    """Write claims_metrics.json atomically (see claims_metrics_obj), the file `dvc metrics` reads."""
    _write(path, json.dumps(claims_metrics_obj(df), indent=2, allow_nan=False) + "\n")
