# What a run says before its first job and after its last one (the Snakefile's W, P and OUT).
import os
import sys


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


onsuccess:
    # where to look: the last line of a run that wrote the report
    if os.path.exists(f"{OUT}/REPORT.md"):
        overlay = f" --config overlay={','.join(W.params_files[1:])}" if len(W.params_files) > 1 else ""
        sys.stderr.write(f"bnflow: the report is {OUT}/REPORT.md (every figure and claim); as one HTML page: "
                         f"snakemake --report {OUT}/report.html{overlay}\n")
