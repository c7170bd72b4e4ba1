"""The statistics core of the `stats` step (STATS.md): pre-declared claims, tested across seeds, with verdicts.

    claims = parse_claims(params["claims"])            # ConfigError names the key path (bnflow.config)
    table = evaluate_claims(runs, claims, seed=0)      # one row per claim, STATS.md's columns, natural order
    write_claims_csv(table, "claims.csv"); write_claims_json(table, "claims.json"); write_claims_md(table, "claims.md")
    write_claims_metrics(table, "claims_metrics.json")  # numbers only, for `dvc metrics diff` / `dvc exp show`

Modules by concept: registry (metric kinds, arms of runs), estimators and ranks (tests), multiplicity (Holm, BH),
evaluate (one row per claim), decide (verdict rules and flags), sentences and write (claims.csv/json/md), step.
"""

from bnflow.config import ClaimSpec, parse_claims
from bnflow.stats.decide import decide_verdict
from bnflow.stats.evaluate import COLUMNS, evaluate_claims
from bnflow.stats.registry import METRICS, natural_key
from bnflow.stats.sentences import format_number
from bnflow.stats.write import write_claims_csv, write_claims_json, write_claims_md, write_claims_metrics
from bnflow.vocab import CLAIM_VERDICTS as VERDICTS

__all__ = [
    "COLUMNS",
    "METRICS",
    "VERDICTS",
    "ClaimSpec",
    "decide_verdict",
    "evaluate_claims",
    "format_number",
    "natural_key",
    "parse_claims",
    "write_claims_csv",
    "write_claims_json",
    "write_claims_md",
    "write_claims_metrics",
]
