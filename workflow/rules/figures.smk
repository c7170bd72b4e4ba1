rule figures:
    input:
        runs=expand(f"{OUT}/runs/{{cell}}", cell=CELLS),
        probes=expand(f"{OUT}/probes/{{cell}}", cell=CELLS),
        claims=f"{OUT}/stats/claims.md",
    output:
        # In `snakemake --report`: every figure PNG, captioned from workflow/report/figures.rst (generated from
        # bnflow.figures.render.FIGURES); the SVGs sit beside them. REPORT.md (figures + claims) renders on a code host.
        figures=report(
            directory(f"{OUT}/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
            labels={"figure": "{name}"},
        ),
        report=f"{OUT}/REPORT.md",
    log:
        f"{OUT}/logs/figures.log",
    params:
        runs_root=f"{OUT}/runs",
        probes_root=f"{OUT}/probes",
        cfg=lambda w: {"figures": section("figures"), "seeds": section("train", "seeds")},
    shell:
        "python -m bnflow figures {PARAMS_OPT} --runs-root {params.runs_root} --probes-root {params.probes_root}"
        " --claims {input.claims} --output {output.figures} --report {output.report} --log {log}"
