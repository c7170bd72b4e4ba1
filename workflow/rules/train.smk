rule train:
    input:
        stamp=lambda w: W.stamp("train", w.cell),
        # ancient: re-creating the dataset byte for byte re-trains nothing; a prepare params edit reaches this job
        # through its stamp; declared only when the job runs (bnflow/dag/planning.py, Plan.data_inputs)
        data=lambda w: [ancient(p) for p in W.data_inputs("train", w.cell)],
    output:
        # update: Snakemake keeps the previous outputs until the job succeeds, and restores them if it fails
        # (workflow/rules/hooks.smk); without it Snakemake deletes them before the job starts
        runs=update(directory(f"{OUT}/runs/{{cell}}")),
        checkpoints=update(directory(f"{OUT}/checkpoints/{{cell}}")),
    params:
        data=lambda w: W.data(w.cell),
    log:
        f"{OUT}/logs/train/{{cell}}.log",
    resources:
        gpu=1,
    shell:
        "python -m bnflow train {PARAMS_OPT} --cell {wildcards.cell} --data {params.data:q}"
        " --runs-dir {output.runs:q} --checkpoints-dir {output.checkpoints:q} --log {log:q}"
