# bnflow: re-run "How Does Batch Normalization Help Optimization?" (Santurkar et al., NeurIPS 2018).
#   snakemake --cores all --resources gpu=1                              # the paper grid (params.yaml)
#   snakemake --cores all --config overlay=workflow/quick.yaml           # the CPU quick run (results/quick/)
#   snakemake --cores all --resources gpu=1 --config cells='dln-*'       # a subset of the grid's cells
#   --config overlay=a.yaml,b.yaml stacks overlays (later files win)
# params.yaml is the only configuration. bnflow validates it (and the optional overlay) before any job starts;
# rules only template (quoted) paths and call `python -m bnflow <step>`, with the same commands as dvc.yaml's stages.
# Each job also reads a params stamp (bnflow/dag/): Snakemake re-runs a job when the params it reads change, also
# on a fresh clone, where dvc.lock vouches for the committed results.

import os
import shlex
import sys

from bnflow.dag import messages, plan
from bnflow.errors import BnflowError
from bnflow.vocab import CELL_WILDCARD


def forced_steps():
    """Steps --forceall or --forcerun RULE runs whatever their outputs: their jobs declare the data they read."""
    dag = workflow.dag_settings  # set once Snakemake builds the DAG, after it reads this file
    if dag is None:
        return set()
    return {"prepare", "train", "probe", "lrscan"} if dag.forceall else set(dag.forcerun or ())


try:
    W = plan(config, forced=forced_steps)
except BnflowError as e:  # a config mistake is the user's to fix: the message, not a traceback
    sys.stderr.write(f"bnflow: error: {e}\n")
    sys.exit(1)
for line in messages(W):
    sys.stderr.write(line + "\n")
# A job's step replaces the outputs it finds on success instead of refusing them: Snakemake decided the job must
# run, and keeps its previous outputs (update() in workflow/rules) until it succeeds, restoring them if it fails
# (bnflow.cli.RUNNER_ENV; the jobs inherit this environment). A step run by hand still refuses existing outputs.
os.environ["BNFLOW_RUNNER"] = "snakemake"

P, OUT = W.params, W.out
PARAMS_OPT = " ".join(f"--params {shlex.quote(f)}" for f in W.params_files)
MODELS = "|".join(sorted({P.cell(c).model for c in P.train.grid} | set(W.models)))


wildcard_constraints:
    cell=CELL_WILDCARD,
    model=MODELS,


include: "workflow/rules/prepare.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/probe.smk"
include: "workflow/rules/stats.smk"
include: "workflow/rules/lrscan.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/hooks.smk"


rule all:
    default_target: True
    input:
        f"{OUT}/figures",
        f"{OUT}/REPORT.md",
        f"{OUT}/stats/claims.csv",
        expand(f"{OUT}/lrscan/{{model}}/thresholds.csv", model=W.models),
        expand(f"{OUT}/probes/{{cell}}", cell=W.active),
