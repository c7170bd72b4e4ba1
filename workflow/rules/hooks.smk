# What a run says before its first job and after its last one, and what `snakemake --report` says about it
# (the Snakefile's W, P and OUT).
import logging
import os
import sys
from pathlib import Path

from bnflow.dag import stamp_dir
from bnflow.describe import run_description


class _OneMetadataNote(logging.Filter):
    """`snakemake --report` warns once per output that Snakemake has no record of (88 lines on a fresh clone, where
    dvc.lock, not .snakemake/, records the committed results; outputs `dvc repro` made have none either). One line
    says it instead."""

    seen = 0

    def filter(self, record):
        if not str(record.msg).startswith("Missing metadata for file"):
            return True
        self.seen += 1
        record.msg, record.args = ("bnflow: outputs that Snakemake has no record of (those of a fresh clone or of "
                                   "`dvc repro`: dvc.lock records them) are in the report without their job's run "
                                   "times"), ()
        return self.seen == 1


logging.getLogger("snakemake.logging").addFilter(_OneMetadataNote())

# The report's front page: the run's params files, data, seeds and budgets (bnflow/describe.py), written for the
# run this Snakefile plans; a quick report says "synthetic", a paper report CIFAR-10.
_DESCRIPTION = stamp_dir(OUT) / "report.rst"
_DESCRIPTION.parent.mkdir(parents=True, exist_ok=True)
if not _DESCRIPTION.exists() or _DESCRIPTION.read_text() != run_description(P, W.params_files):
    _DESCRIPTION.write_text(run_description(P, W.params_files))


report: str(_DESCRIPTION.resolve())


onstart:
    # Paper-scale GPU work on a machine without CUDA is refused here, after the DAG is known and before any job
    # starts (never in a dry run: -n shows the plan), in one line that says what it would cost and what to run instead
    # (bnflow/cpu_guard.py; BNFLOW_ALLOW_CPU=1 runs it anyway). Each step checks again when it starts (dvc repro, CLI).
    if not workflow.touch:
        from bnflow.cpu_guard import refusal

        jobs = [(j.rule.name, getattr(j.wildcards, "cell", None) or getattr(j.wildcards, "model", ""))
                for j in workflow.dag.needrun_jobs()]
        line = refusal(P, jobs)
        if line is not None:
            sys.stderr.write(f"bnflow: no job started: {line}\n")
            sys.exit(1)
    # Every output is update()-flagged (the rules): Snakemake copies it to .snakemake/backups/ before its job and
    # restores it if the job fails, instead of deleting it first. A Snakemake run killed during a job leaves that copy
    # behind, and the next run's copy then fails ("File exists"). The workspace's output is intact (a step publishes
    # only complete outputs), so the stale copies of the outputs this run will write are dropped; this run holds
    # their Snakemake locks, so no other run is using them.
    for _job in workflow.dag.needrun_jobs():
        for _out in _job.output:
            workflow.persistence.cleanup_backup(Path(_out))


onsuccess:
    # where to look: the last line of a run that wrote the report
    if os.path.exists(f"{OUT}/REPORT.md"):
        overlay = f" --config overlay={','.join(W.params_files[1:])}" if len(W.params_files) > 1 else ""
        sys.stderr.write(f"bnflow: the report is {OUT}/REPORT.md (every figure and claim); as one HTML page: "
                         f"snakemake --report {OUT}/report.html{overlay}\n")
