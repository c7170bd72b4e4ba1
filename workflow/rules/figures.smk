rule figures:
    input:
        expand(f"{OUT}/runs/{{cell}}", cell=CELLS),
    output:
        directory(f"{OUT}/figures"),
    log:
        f"{OUT}/logs/figures.log",
    params:
        runs_root=f"{OUT}/runs",
        cfg=lambda w: {"figures": section("figures"), "seeds": section("train", "seeds")},
    shell:
        "python -m bnflow figures {PARAMS_OPT} --runs-root {params.runs_root} --output {output} --log {log}"
