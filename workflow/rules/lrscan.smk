rule lrscan:
    input:
        stamp=lambda w: W.stamp("lrscan", w.model),
        data=lambda w: [ancient(p) for p in W.data_inputs("lrscan", w.model)],
    output:
        scan=update(f"{OUT}/lrscan/{{model}}/scan.csv"),  # update: as in train.smk
        thresholds=update(f"{OUT}/lrscan/{{model}}/thresholds.csv"),
        provenance=update(f"{OUT}/lrscan/{{model}}/provenance.json"),
        summary=update(f"{OUT}/lrscan/{{model}}/summary.json"),
    log:
        f"{OUT}/logs/lrscan-{{model}}.log",
    params:
        data=lambda w: f"{OUT}/data/{w.model}.npz",
        out_dir=f"{OUT}/lrscan/{{model}}",
    resources:
        gpu=1,
    shell:
        "python -m bnflow lrscan {PARAMS_OPT} --model {wildcards.model} --data {params.data:q}"
        " --output {params.out_dir:q} --log {log:q}"
