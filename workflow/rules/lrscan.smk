rule lrscan:
    input:
        stamp=lambda w: W.stamp("lrscan", w.model),
        data=lambda w: [ancient(p) for p in W.data_inputs("lrscan", w.model)],
    output:
        scan=f"{OUT}/lrscan/{{model}}/scan.csv",
        thresholds=f"{OUT}/lrscan/{{model}}/thresholds.csv",
        provenance=f"{OUT}/lrscan/{{model}}/provenance.json",
        summary=f"{OUT}/lrscan/{{model}}/summary.json",
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
