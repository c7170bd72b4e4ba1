rule summarize:
    input:
        stamp=W.stamp("summarize"),
        runs=expand(f"{OUT}/runs/{{cell}}", cell=W.read),
        probes=expand(f"{OUT}/probes/{{cell}}", cell=W.read),
    output:
        update(f"{OUT}/stats/runs.csv"),  # update: as in train.smk
    log:
        f"{OUT}/logs/summarize.log",
    params:
        runs_root=f"{OUT}/runs",
        probes_root=f"{OUT}/probes",
    shell:
        "python -m bnflow summarize {PARAMS_OPT} --runs-root {params.runs_root:q} --probes-root {params.probes_root:q}"
        " --output {output:q} --log {log:q}"


rule stats:
    input:
        stamp=W.stamp("stats"),
        runs=f"{OUT}/stats/runs.csv",
    output:
        csv=update(f"{OUT}/stats/claims.csv"),  # update: as in train.smk
        json=update(f"{OUT}/stats/claims.json"),
        md=update(f"{OUT}/stats/claims.md"),
        metrics=update(f"{OUT}/stats/claims_metrics.json"),  # the compact numbers `dvc metrics diff` reads
    log:
        f"{OUT}/logs/stats.log",
    params:
        out_dir=f"{OUT}/stats",
    shell:
        "python -m bnflow stats {PARAMS_OPT} --runs {input.runs:q} --output {params.out_dir:q} --log {log:q}"
