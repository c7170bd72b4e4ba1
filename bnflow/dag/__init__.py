"""The pipeline's jobs as both tools see them: the params each job reads, and Snakemake's record of them.

DVC records the params every stage ran with in dvc.lock. Snakemake records them in `.snakemake/metadata`, which a
fresh clone does not have: there it cannot tell whether committed results match params.yaml, and a params edit is
silently ignored. So the Snakefile gives every job one more input, a *params stamp*: a small JSON file with the
exact params values the job reads (the same keys as the job's DVC stage), rewritten only when they change. A changed
stamp is newer than the job's outputs, so Snakemake re-runs the job, and file times carry the change downstream.

On a fresh clone (no stamps yet) a job whose outputs exist is *adopted* when dvc.lock says they were made with the
current params: its stamp is dated 1970 and the adopted outputs' file times are set in DAG order (checkout leaves
them in arbitrary order), so nothing is re-run. Outputs that no record vouches for are re-run, and said so.

Where `dvc repro` left an output older than an input it rewrote with the same content (it skipped the stage),
Snakemake would re-run that job and those after it: DVC's own status decides, and outputs it finds current are
dated after their inputs (redate_dvc_checked).

Data inputs (the prepared datasets) are `ancient` for Snakemake: re-creating a dataset byte for byte (a fresh
clone's `dvc pull`, a re-run of prepare) re-trains nothing; a change of the prepare params reaches training through
the stamps, which include the params of the job's prepare step.

One module per concept, all re-exported here (import from `bnflow.dag`):

    jobs      the params keys each step reads (param_keys, the same as its DVC stage's) and the Job of each DAG node
    artefacts the large artefacts: DVC records them with .dvc files, not as stage outputs; the data's manifest
    stamps    params stamps, adoption from dvc.lock, re-dating what DVC found current
    planning  the Snakefile's plan: --config checks, cell selection, the jobs of one run, the messages before it runs
"""

from bnflow.dag.jobs import LRSCAN_FILES, RANK, Job, data_path, lookup, manifest_path, param_keys
from bnflow.dag.planning import CONFIG_KEYS, Plan, check_config, messages, plan, select_cells
from bnflow.dag.stamps import (ADOPTED_AGE_S, STAMP_ROOT, StampReport, dvc_altered_outputs, read_ledger,
                               redate_dvc_checked, stamp_dir, stamp_path, sync_stamps, vouched)

__all__ = [
    "ADOPTED_AGE_S", "CONFIG_KEYS", "LRSCAN_FILES", "RANK", "STAMP_ROOT", "Job", "Plan", "StampReport",
    "check_config", "data_path", "dvc_altered_outputs", "lookup", "manifest_path", "messages", "param_keys", "plan",
    "read_ledger", "redate_dvc_checked", "select_cells", "stamp_dir", "stamp_path", "sync_stamps", "vouched",
]
