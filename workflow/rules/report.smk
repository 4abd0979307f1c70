rule report:
    input:
        score_files(),
    output:
        csv="results/report/runs.csv",
        md="results/report/table1.md",
        tex="results/report/table1.tex",
        png="results/report/fig1.png",
        pdf="results/report/fig1.pdf",
    params:
        unsupported=json.dumps(STUDY.unsupported(), sort_keys=True),
    log:
        "logs/report.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "{CLI} report --scores {input} --unsupported {params.unsupported:q}"
        " --csv {output.csv} --md {output.md} --tex {output.tex} --png {output.png}"
        " --pdf {output.pdf} > {log} 2>&1"
