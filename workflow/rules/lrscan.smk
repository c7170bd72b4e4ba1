rule lrscan:
    input:
        data=DATA,
    output:
        scan=f"{OUT}/lrscan/scan.csv",
        thresholds=f"{OUT}/lrscan/thresholds.csv",
        provenance=f"{OUT}/lrscan/provenance.json",
        summary=f"{OUT}/lrscan/summary.json",
    log:
        f"{OUT}/logs/lrscan.log",
    params:
        out_dir=f"{OUT}/lrscan",
        cfg=lambda w: {k: section(k) for k in ("lrscan",)} | {"train": {k: section("train", k) for k in (
            "vgg", "dln", "norm", "noise", "seeds")}},
    resources:
        gpu=1,
    shell:
        "python -m bnflow lrscan {PARAMS_OPT} --data {input.data} --output {params.out_dir} --log {log}"
