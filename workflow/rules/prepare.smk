rule prepare:
    output:
        DATA,
    log:
        f"{OUT}/logs/prepare.log",
    params:
        cfg=section("prepare"),
    shell:
        "python -m bnflow prepare {PARAMS_OPT} --output {output} --log {log}"
