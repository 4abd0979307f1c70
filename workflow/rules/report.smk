# Snakemake HTML report (snakemake --report report.html): workflow description and captions.
report: "../report/workflow.rst"


REPORT_DIR = "results/report"
# Only the figures whose axes the config has: Fig. 1 needs test-clean and test-other, the
# noise figure noisy splits, the sweep figure a `sweep:`.
HAS_FIG1 = {"test-clean", "test-other"} <= set(STUDY.splits)
HAS_NOISE = any(noise.parse_split(s).kind for s in STUDY.splits)


# The report's outputs, each written once here (REPORT_FILES below lists them for `all`).
# The HTML report lists categories alphabetically: "1 …" opens it.
REPORT_OUTPUTS = {
    "dwer": report(
        f"{REPORT_DIR}/dwer.png",
        caption="../report/dwer.rst",
        category="1 Main results",
    ),
    "dwer_pdf": f"{REPORT_DIR}/dwer.pdf",
    "dwer_svg": f"{REPORT_DIR}/dwer.svg",  # inlined at the top of the HTML report
    "md": report(
        f"{REPORT_DIR}/table1.md",
        caption="../report/table1.rst",
        category="1 Main results",
    ),
    "tex": f"{REPORT_DIR}/table1.tex",
    "csv": report(
        f"{REPORT_DIR}/runs.csv", caption="../report/runs.rst", category="2 Tables"
    ),
    "cost": report(
        f"{REPORT_DIR}/cost.md", caption="../report/cost.rst", category="2 Tables"
    ),
    "summary": f"{REPORT_DIR}/summary.txt",
    # the run's config: `snakemake --report report.html --configfile <this>`
    "config": f"{REPORT_DIR}/config.yaml",
}
# figures: (name, caption, category, report() options); each a PNG with its PDF twin
FIGURES = (
    [("fig1", "fig1", "3 Figures", {})] * HAS_FIG1
    + [
        (
            f"pareto_{d}",
            "pareto",
            "3 Figures",
            {"subcategory": "Pareto", "labels": {"device": d}},
        )
        for d in report_devices()  # one per device that has runs
    ]
    + [("noise", "noise", "4 Robustness", {})] * HAS_NOISE
    + [("sweep", "sweep", "5 Sensitivity", {})] * bool(STUDY.sweep)
)
for name, caption, category, kw in FIGURES:
    REPORT_OUTPUTS[name] = report(
        f"{REPORT_DIR}/{name}.png",
        caption=f"../report/{caption}.rst",
        category=category,
        **kw,
    )
    REPORT_OUTPUTS[f"{name}_pdf"] = f"{REPORT_DIR}/{name}.pdf"
if STUDY.sweep:
    REPORT_OUTPUTS["sweep_md"] = report(
        f"{REPORT_DIR}/sweep.md",
        caption="../report/sweep.rst",
        category="5 Sensitivity",
    )


rule report:
    """Runs table, Table 1 (md/tex), cost table, terminal summary, main figure, Fig. 1, Pareto,
    noise and sweep figures, from every selected run's score file and its fp32 baseline.
    """
    input:
        # every selected run plus the fp32 baseline of its model/device/split (ΔWER is
        # against it, even when `only` leaves fp32 out)
        scores=score_files(),
    output:
        **REPORT_OUTPUTS,
    log:
        "logs/report.log",
    conda:
        "../../envs/report.yaml"
    params:
        # which figures it draws is which outputs the rule names (whisper_ptq.steps.report)
        **step("report"),
    shell:
        STEP


REPORT_FILES = [str(f) for f in rules.report.output]
