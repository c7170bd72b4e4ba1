rule train:
    input:
        data=DATA,
    output:
        runs=directory(f"{OUT}/runs/{{cell}}"),
        checkpoints=directory(f"{OUT}/checkpoints/{{cell}}"),
    log:
        f"{OUT}/logs/train/{{cell}}.log",
    params:
        # what decides the cell's numbers (execution settings do not): a change re-runs the cell
        cfg=lambda w: {
            "cell": section("train", "grid", w.cell),
            "model": section("train", P.cell(w.cell).model),
            **{k: section("train", k) for k in ("seeds", "norm", "noise", "probes")},
        },
    resources:
        gpu=1,
    shell:
        "python -m bnflow train {PARAMS_OPT} --cell {wildcards.cell} --data {input.data}"
        " --runs-dir {output.runs} --checkpoints-dir {output.checkpoints} --log {log}"
