rule figures:
    input:
        stamp=W.stamp("figures"),
        runs=expand(f"{OUT}/runs/{{cell}}", cell=W.read),
        probes=expand(f"{OUT}/probes/{{cell}}", cell=W.read),
        lrscan=expand(f"{OUT}/lrscan/{{model}}/thresholds.csv", model=W.models),
        claims=f"{OUT}/stats/claims.md",
    output:
        # In `snakemake --report`: every figure PNG, captioned from workflow/report/figures.rst (generated from
        # bnflow.figures.render.FIGURES); the SVGs sit beside them. REPORT.md (figures + claims) renders on a code host.
        figures=report(  # update: as in train.smk
            update(directory(f"{OUT}/figures")),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
            labels={"figure": "{name}"},
        ),
        report=update(f"{OUT}/REPORT.md"),
        plots=update(directory(f"{OUT}/plots")),
    log:
        f"{OUT}/logs/figures.log",
    params:
        runs_root=f"{OUT}/runs",
        probes_root=f"{OUT}/probes",
        lrscan_root=f"{OUT}/lrscan",
    shell:
        "python -m bnflow figures {PARAMS_OPT} --runs-root {params.runs_root:q} --probes-root {params.probes_root:q}"
        " --lrscan-root {params.lrscan_root:q} --claims {input.claims:q} --output {output.figures:q}"
        " --report {output.report:q} --plots-output {output.plots:q} --log {log:q}"
