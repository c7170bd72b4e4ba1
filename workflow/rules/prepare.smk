rule prepare:
    input:
        stamp=lambda w: W.stamp("prepare", w.model),
    output:
        update(f"{OUT}/data/{{model}}.npz"),  # update: as in train.smk
    log:
        f"{OUT}/logs/prepare-{{model}}.log",
    shell:
        "python -m bnflow prepare {PARAMS_OPT} --model {wildcards.model} --output {output:q} --log {log:q}"
