rule probe:
    input:
        stamp=lambda w: W.stamp("probe", w.cell),
        data=lambda w: [ancient(p) for p in W.data_inputs("probe", w.cell)],
        # the train step's runs folder marks its cell complete; the checkpoints are read, not declared, so a clone
        # whose checkpoints sit in the DVC remote never re-trains to probe (the probe step names `dvc pull`)
        runs=f"{OUT}/runs/{{cell}}",
    output:
        probes=update(directory(f"{OUT}/probes/{{cell}}")),  # update: as in train.smk
        full=update(directory(f"{OUT}/probes_full/{{cell}}")),
    log:
        f"{OUT}/logs/probe/{{cell}}.log",
    params:
        data=lambda w: W.data(w.cell),
        checkpoints=f"{OUT}/checkpoints/{{cell}}",
    resources:
        gpu=1,
    shell:
        "python -m bnflow probe {PARAMS_OPT} --cell {wildcards.cell} --data {params.data:q}"
        " --checkpoints-dir {params.checkpoints:q} --output {output.probes:q} --full-output {output.full:q}"
        " --log {log:q}"
