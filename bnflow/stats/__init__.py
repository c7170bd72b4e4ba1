"""The statistics core of the `stats` step (STATS.md): pre-declared claims, tested across seeds, with verdicts.

    claims = parse_claims(params["claims"])            # ConfigError names the key path
    table = evaluate_claims(runs, claims, seed=0)      # one row per claim, STATS.md's columns
    write_claims_csv(table, "claims.csv"); write_claims_json(table, "claims.json"); write_claims_md(table, "claims.md")
"""

from bnflow.config import ClaimSpec, parse_claims
from bnflow.stats.claims import COLUMNS, METRICS, decide_verdict, evaluate_claims
from bnflow.stats.report import format_number, write_claims_csv, write_claims_json, write_claims_md

__all__ = [
    "COLUMNS",
    "METRICS",
    "ClaimSpec",
    "decide_verdict",
    "evaluate_claims",
    "format_number",
    "parse_claims",
    "write_claims_csv",
    "write_claims_json",
    "write_claims_md",
]
