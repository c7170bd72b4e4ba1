rule probe:
    input:
        data=DATA,
        checkpoints=f"{OUT}/checkpoints/{{cell}}",
    output:
        directory(f"{OUT}/probes/{{cell}}"),
    log:
        f"{OUT}/logs/probe/{{cell}}.log",
    params:
        cfg=lambda w: {"probe": section("probe"), "seeds": section("train", "seeds")},
    resources:
        gpu=1,
    shell:
        "python -m bnflow probe {PARAMS_OPT} --cell {wildcards.cell} --data {input.data}"
        " --checkpoints-dir {input.checkpoints} --output {output} --log {log}"
