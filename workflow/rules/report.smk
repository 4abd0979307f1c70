# Snakemake HTML report (snakemake --report report.html): workflow description and captions.
report: "../report/workflow.rst"


BOOTSTRAP = config["bootstrap"]  # schema defaults filled in (common.smk validates)
# One Pareto plot per device that has runs.
PARETO = {d: f"results/report/pareto_{d}.png" for d in report_devices()}
# Sensitivity sweep (config `sweep:`): ΔWER by part, table and heatmap.
SWEEP = (
    {"sweep_md": "results/report/sweep.md", "sweep_png": "results/report/sweep.png"}
    if STUDY.sweep
    else {}
)


rule report:
    input:
        # every selected run plus the fp32 baseline of its model/device/split (ΔWER is
        # against it, even when `only` leaves fp32 out)
        score_files(),
    output:
        csv=report("results/report/runs.csv", caption="../report/runs.rst", category="Tables"),
        md=report("results/report/table1.md", caption="../report/table1.rst", category="Tables"),
        tex=report("results/report/table1.tex", caption="../report/table1.rst", category="Tables"),
        png=report("results/report/fig1.png", caption="../report/fig1.rst", category="Figures"),
        pdf="results/report/fig1.pdf",
        **{
            f"pareto_{d}": report(p, caption="../report/pareto.rst", category="Figures",
                                  subcategory="Pareto", labels={"device": d})
            for d, p in PARETO.items()
        },
        noise=report("results/report/noise.png", caption="../report/noise.rst",
                     category="Robustness"),
        **{
            k: report(p, caption="../report/sweep.rst", category="Sensitivity")
            for k, p in SWEEP.items()
        },
    params:
        unsupported=json.dumps(STUDY.unsupported(), sort_keys=True),
        pareto=" ".join(f"{d}={p}" for d, p in PARETO.items()),
        resamples=BOOTSTRAP["resamples"],
        seed=BOOTSTRAP["seed"],
        sweep=sweep_args,
        order=json.dumps(STUDY.entry_order()),
    log:
        "logs/report.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "python -m whisper_ptq.cli report --scores {input} --unsupported {params.unsupported:q}"
        " --csv {output.csv} --md {output.md} --tex {output.tex} --png {output.png}"
        " --pdf {output.pdf} --pareto {params.pareto} --noise-png {output.noise}"
        " --bootstrap-resamples {params.resamples} --seed {params.seed} {params.sweep}"
        " --order {params.order:q}"
        " > {log} 2>&1"
