# bnflow: re-run "How Does Batch Normalization Help Optimization?" (Santurkar et al., NeurIPS 2018).
#   snakemake --cores all --resources gpu=1                              # the paper grid (params.yaml)
#   snakemake --cores all --config overlay=workflow/quick.yaml           # the CPU quick run (results/quick/)
# params.yaml is the only configuration. bnflow validates it (and the optional overlay) before any job starts;
# rules only template paths and call `python -m bnflow <step>`, with the same commands as dvc.yaml's stages.

from bnflow.config import load_params, to_plain


configfile: "params.yaml"


PARAMS_FILES = ["params.yaml"] + ([config["overlay"]] if "overlay" in config else [])
P = load_params(*PARAMS_FILES)
PARAMS_OPT = " ".join(f"--params {f}" for f in PARAMS_FILES)
OUT = P.out_dir
CELLS = list(P.train.grid)
DATA = f"{OUT}/data/dataset.npz"


def section(*keys):
    """A params subsection as plain data: given to a rule's `params:` so that Snakemake re-runs it when it changes."""
    node = to_plain(P)
    for k in keys:
        node = node[k]
    return node


wildcard_constraints:
    cell=r"[a-z0-9]+-[a-z0-9_]+-lr[0-9.e+-]+",


include: "workflow/rules/prepare.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/probe.smk"
include: "workflow/rules/stats.smk"
include: "workflow/rules/lrscan.smk"
include: "workflow/rules/figures.smk"


rule all:
    default_target: True
    input:
        f"{OUT}/figures",
        f"{OUT}/REPORT.md",
        f"{OUT}/stats/claims.csv",
        f"{OUT}/lrscan/thresholds.csv",
        expand(f"{OUT}/probes/{{cell}}", cell=CELLS),
