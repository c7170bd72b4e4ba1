rule prepare:
    input:
        stamp=lambda w: W.stamp("prepare", w.model),
    output:
        data=update(f"{OUT}/data/{{model}}.npz"),  # update: as in train.smk
        manifest=update(f"{OUT}/data/{{model}}.json"),  # each array's sha256 (bnflow.prepare), kept in git
    log:
        f"{OUT}/logs/prepare-{{model}}.log",
    shell:
        "python -m bnflow prepare {PARAMS_OPT} --model {wildcards.model} --output {output.data:q} --log {log:q}"
