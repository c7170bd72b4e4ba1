rule summarize:
    input:
        runs=expand(f"{OUT}/runs/{{cell}}", cell=CELLS),
        probes=expand(f"{OUT}/probes/{{cell}}", cell=CELLS),
    output:
        f"{OUT}/stats/runs.csv",
    log:
        f"{OUT}/logs/summarize.log",
    params:
        runs_root=f"{OUT}/runs",
        probes_root=f"{OUT}/probes",
        cfg=lambda w: {"summarize": section("summarize"), "seeds": section("train", "seeds")},
    shell:
        "python -m bnflow summarize {PARAMS_OPT} --runs-root {params.runs_root} --probes-root {params.probes_root}"
        " --output {output} --log {log}"


rule stats:
    input:
        runs=f"{OUT}/stats/runs.csv",
    output:
        csv=f"{OUT}/stats/claims.csv",
        json=f"{OUT}/stats/claims.json",
        md=f"{OUT}/stats/claims.md",
    log:
        f"{OUT}/logs/stats.log",
    params:
        out_dir=f"{OUT}/stats",
        cfg=lambda w: {"stats": section("stats"), "claims": section("claims")},
    shell:
        "python -m bnflow stats {PARAMS_OPT} --runs {input.runs} --output {params.out_dir} --log {log}"
