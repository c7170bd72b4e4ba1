rule figures:
    input:
        runs=expand(f"{OUT}/runs/{{cell}}", cell=CELLS),
        probes=expand(f"{OUT}/probes/{{cell}}", cell=CELLS),
        claims=f"{OUT}/stats/claims.md",
    output:
        # In `snakemake --report`: every figure PNG, captioned from workflow/report/figures.rst (generated from
        # bnflow.figures.render.FIGURES); REPORT.md and the SVGs sit beside them in the same folder.
        report(
            directory(f"{OUT}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
            labels={"figure": "{name}"},
        ),
    log:
        f"{OUT}/logs/figures.log",
    params:
        runs_root=f"{OUT}/runs",
        probes_root=f"{OUT}/probes",
        cfg=lambda w: {"figures": section("figures"), "seeds": section("train", "seeds")},
    shell:
        "python -m bnflow figures {PARAMS_OPT} --runs-root {params.runs_root} --probes-root {params.probes_root}"
        " --claims {input.claims} --output {output} --log {log}"
